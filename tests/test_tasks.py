"""Every text task the README promises, trained, evaluated and inferred on the real stack through the CLI:
regression (float labels: MSE, MAE, Pearson, Spearman) and text pairs (two columns, one label). Classification is
`test_training_integration.py`; image runs are `test_image_training.py`."""

from __future__ import annotations

import asyncio
import json
import random

import pytest

from tests.helpers import run, ttrain

pytestmark = pytest.mark.integration

WORDS = {"superb": 0.95, "great": 0.8, "fine": 0.55, "dull": 0.3, "awful": 0.05}
TINY = ["--set", "num_hidden_layers=1", "--set", "max_seq_length=32", "--set", "batch_size=8"]
TINY += ["--set", "max_steps=20", "--set", "checkpoint_every_steps=10", "--set", "lr=0.0005"]


def regression_csv(path) -> str:
    rnd = random.Random(0)
    lines = ["text,score"]
    for i in range(160):
        word = rnd.choice(list(WORDS))
        lines.append(f"the film number {i} was {word},{WORDS[word] + rnd.uniform(-0.05, 0.05):.3f}")
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def pairs_csv(path) -> str:
    rnd = random.Random(1)
    lines = ["sentence1,sentence2,label"]
    for _ in range(160):
        a, b = rnd.choice(list(WORDS)), rnd.choice(list(WORDS))
        lines.append(f"the plot was {a},the acting was {b},{int((WORDS[a] > 0.5) == (WORDS[b] > 0.5))}")
    path.write_text("\n".join(lines) + "\n")
    return str(path)


async def train_eval_infer(run_id: str, data: str, *infer_args: str) -> tuple:
    trained = await asyncio.to_thread(ttrain, "train", "--run-id", run_id, "--set", f"dataset.path={data}", *TINY)
    evaluated = await asyncio.to_thread(ttrain, "eval", run_id, "--json")
    inferred = await asyncio.to_thread(ttrain, "infer", run_id, *infer_args, "--json")
    return trained, evaluated, inferred


@pytest.fixture(scope="module")
def tasks(stack, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("tasks")

    async def both():
        return await asyncio.gather(
            train_eval_infer("it-regression", regression_csv(tmp / "scores.csv"), "a superb film", "an awful film"),
            train_eval_infer(
                "it-pairs", pairs_csv(tmp / "pairs.csv"), "the plot was great", "--pair", "the acting was superb"
            ),
        )

    return run(both())


def test_regression_trains_evaluates_and_infers(tasks):
    trained, evaluated, inferred = tasks[0]
    for out in (trained, evaluated, inferred):
        assert out.returncode == 0, out.stderr
    report = json.loads(evaluated.stdout)["report"]
    assert report["task"] == "regression" and report["examples"] == 16
    assert {"mse", "mae", "pearson", "spearman"} <= set(report) and report["mse"] >= 0
    assert report["baseline"]["name"] and "improvement_over_baseline" in report
    predictions = json.loads(inferred.stdout)["predictions"]
    assert [p["text"] for p in predictions] == ["a superb film", "an awful film"]
    assert all(isinstance(p["scores"]["value"], float) for p in predictions)


def test_text_pairs_train_evaluate_and_infer(tasks):
    trained, evaluated, inferred = tasks[1]
    for out in (trained, evaluated, inferred):
        assert out.returncode == 0, out.stderr
    report = json.loads(evaluated.stdout)["report"]
    assert report["task"] == "classification" and report["examples"] == 16
    assert set(report["per_class"]) == {"0", "1"}
    (prediction,) = json.loads(inferred.stdout)["predictions"]
    assert prediction["label"] in {"0", "1"} and 0.5 <= prediction["confidence"] <= 1.0
