"""The happy path against the real stack: train, ledger, status, inference, and a replay of the recorded history."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.worker import Replayer

from orchestration.api import start_training
from orchestration.client import connect
from orchestration.types import InferenceRequest, InferenceResult, TrainingResult
from orchestration.workflows.inference import InferenceWorkflow
from orchestration.workflows.training import CheckpointedTrainingWorkflow
from tests.helpers import run, tiny_config

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def trained(stack):
    """One tiny run shared by the tests below: (run_id, result)."""

    async def go() -> TrainingResult:
        client = await connect(stack)
        handle = await start_training(client, stack, "it-happy", tiny_config())
        return await handle.result()

    return "it-happy", run(go())


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
    assert [c["step"] for c in status["checkpoints"]] == [5, 10, 12]
    assert status["latest_checkpoint"]["step"] == 12
    assert status["snapshot_id"] == result.snapshot_id
    assert status["ray_job_id"].startswith(run_id)
    assert all(c["content_hash"].startswith("sha256:") for c in status["checkpoints"])


def test_inference_returns_labels_and_confidences(stack, trained):
    run_id, _ = trained

    async def go() -> InferenceResult:
        client = await connect(stack)
        req = InferenceRequest(run_id=run_id, texts=["a wonderful film", "a dreadful film"])
        return await client.execute_workflow(
            InferenceWorkflow.run, req, id=f"{run_id}-infer", task_queue=stack.orchestration_queue
        )

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


def test_recorded_history_replays_without_nondeterminism(stack, trained):
    run_id, _ = trained

    async def go() -> None:
        client: Client = await connect(stack)
        history = await client.get_workflow_handle(run_id).fetch_history()
        replayer = Replayer(workflows=[CheckpointedTrainingWorkflow], data_converter=pydantic_data_converter)
        await replayer.replay_workflow(history)  # raises on any non-determinism

    run(go())
