"""The happy path against the real stack: train, ledger, status, inference, and a replay of the recorded history."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.worker import Replayer

from orchestration.api import start_training
from orchestration.client import connect, patient_query, wait_for_result
from orchestration.types import InferenceRequest, InferenceResult, RunStatus, TrainingResult
from orchestration.workflows.inference import InferenceWorkflow
from orchestration.workflows.training import CheckpointedTrainingWorkflow
from ray_jobs.history import read_history
from tests.helpers import assert_one_line_error, run, tiny_config, ttrain

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def trained(stack):
    """One tiny run shared by the tests below: (run_id, result)."""

    async def go() -> TrainingResult:
        client = await connect(stack)
        handle = await start_training(client, stack, "it-happy", tiny_config(eval_every_steps=4))
        return await wait_for_result(handle)

    return "it-happy", run(go())


def run_status_of(stack, run_id: str) -> RunStatus:
    async def go() -> RunStatus:
        return await patient_query(
            (await connect(stack)).get_workflow_handle(run_id), CheckpointedTrainingWorkflow.status
        )

    return run(go())


def test_training_fills_the_ledger_and_reports_heldout_metrics(stack, trained):
    run_id, result = trained
    assert result.steps == 12
    assert result.final_checkpoint.step == 12
    assert result.resumes == 0
    assert 0.0 <= result.metrics["eval_accuracy"] <= 1.0
    assert result.metrics["eval_examples"] == 12  # 10% of 120 rows held out

    out = subprocess.run(
        [sys.executable, "-m", "orchestration.cli", "status", run_id, "--json"], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    status = json.loads(out.stdout)
    assert {
        "state",
        "step",
        "total_steps",
        "latest_checkpoint",
        "checkpoints",
        "resumes",
        "ray_job_id",
        "snapshot_id",
    } <= set(status)
    assert status["state"] == "completed"
    assert [c["step"] for c in status["checkpoints"]] == [4, 5, 8, 10, 12]  # every 5, every evaluation, the end
    evaluated = [c["step"] for c in status["checkpoints"] if "eval_loss" in c["metrics"]]
    assert evaluated == [4, 8, 12]
    assert status["latest_checkpoint"]["step"] == 12
    assert status["snapshot_id"] == result.snapshot_id
    assert status["ray_job_id"].startswith(run_id)
    assert all(c["content_hash"].startswith("sha256:") for c in status["checkpoints"])


def test_inference_returns_labels_and_confidences(stack, trained):
    run_id, _ = trained

    async def go() -> InferenceResult:
        client = await connect(stack)
        req = InferenceRequest(run_id=run_id, texts=["a wonderful film", "a dreadful film"])
        handle = await client.start_workflow(
            InferenceWorkflow.run, req, id=f"{run_id}-infer", task_queue=stack.orchestration_queue
        )
        return await wait_for_result(handle)

    result = run(go())
    assert result.checkpoint_step == 12
    assert [p.text for p in result.predictions] == ["a wonderful film", "a dreadful film"]
    for p in result.predictions:
        assert p.label in {"0", "1"}
        assert 0.5 <= p.confidence <= 1.0
        assert abs(sum(p.scores.values()) - 1.0) < 1e-4

    out = subprocess.run(
        [sys.executable, "-m", "orchestration.cli", "infer", run_id, "great", "--checkpoint", "5", "--json"],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["checkpoint_step"] == 5


def test_evaluation_reports_metrics_on_the_snapshot_heldout_split(stack, trained):
    run_id, _ = trained
    out = subprocess.run(
        [sys.executable, "-m", "orchestration.cli", "eval", run_id, "--split", "test", "--json"],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    report = result["report"]
    assert result["checkpoint_step"] == 12
    assert report["examples"] == 12
    assert sum(map(sum, report["confusion_matrix"])) == 12
    assert set(report["per_class"]) == {"0", "1"}
    assert 0.0 <= report["accuracy"] <= 1.0
    assert report["improvement_over_baseline"] == pytest.approx(report["accuracy"] - report["baseline"]["accuracy"])


def test_the_best_checkpoint_is_evaluated_and_exported_as_a_plain_hugging_face_folder(stack, trained, tmp_path):
    from transformers import AutoModelForSequenceClassification

    run_id, result = trained
    ledger = {c.step: c for c in run_status_of(stack, run_id).checkpoints}
    curve = {s: c.metrics["eval_loss"] for s, c in ledger.items() if "eval_loss" in c.metrics}
    lowest = min(curve.values())
    best_step = min(s for s, loss in curve.items() if loss == lowest)
    assert result.best_checkpoint is not None and result.best_checkpoint.step == best_step
    history = {row.step: row.values for row in read_history(str(Path(stack.storage_uri) / "runs" / run_id))}
    assert {s: v["eval_loss"] for s, v in history.items() if "eval_loss" in v} == curve  # the validation curve

    out = ttrain("eval", run_id, "--checkpoint", "best", "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["checkpoint_step"] == best_step

    target = tmp_path / "exported"
    out = ttrain("export", run_id, str(target), "--json")
    assert out.returncode == 0, out.stderr
    exported = json.loads(out.stdout)
    assert (exported["step"], exported["is_best"], exported["best_metric"]) == (best_step, True, "eval_loss")
    assert not {"optimizer.pt", "scheduler.pt", "train_state.json"} & set(exported["files"])
    weights = hashlib.sha256((target / "model.safetensors").read_bytes()).hexdigest()
    assert f"sha256:{weights}" == ledger[best_step].content_hash
    model = AutoModelForSequenceClassification.from_pretrained(target)
    assert model.config.num_hidden_layers == 1 and model.config.num_labels == 2
    assert_one_line_error(ttrain("export", run_id, str(target)), 1, "is not an empty folder")


def test_recorded_history_replays_without_nondeterminism(stack, trained):
    run_id, _ = trained

    async def go() -> None:
        client: Client = await connect(stack)
        history = await client.get_workflow_handle(run_id).fetch_history()
        replayer = Replayer(workflows=[CheckpointedTrainingWorkflow], data_converter=pydantic_data_converter)
        await replayer.replay_workflow(history)  # raises on any non-determinism

    run(go())
