"""The training workflow's decisions, alone: retries budgeted on failures without progress, errors that fail at
once, the same error twice, and cancellation that stops the run's Ray jobs even when no attempt is running.

The activities are stand-ins registered under the real names (this is a unit test of the workflow: the real
activities meet real faults in `test_faults.py`); Temporal's time-skipping test server makes the backoffs instant.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from temporalio import activity, workflow
from temporalio.client import Client, WorkflowFailureError
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.exceptions import ApplicationError
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from orchestration.client import patient_query
from orchestration.types import (
    DatasetSnapshot,
    RunOptions,
    RunReport,
    SnapshotRequest,
    TrainAttemptInput,
    TrainAttemptResult,
    TrainingRequest,
    control_queue,
)
from orchestration.workflows.training import CheckpointedTrainingWorkflow
from tests.helpers import run, tiny_config
from tests.test_failure_rules import checkpoint, manifest

TEST_SERVER = str(Path(sys.executable).parent / "temporal-test-server")
# a cancel reaches an activity with its next heartbeat, which the SDK sends at most every 0.8 x the timeout
QUICK_CANCEL = {"heartbeat_timeout_s": 2.0}


class Stubs:
    """Stand-ins for the training queue's activities; `script` says what each `train` attempt does."""

    def __init__(self, script: list[Any]) -> None:
        self.script = script
        self.attempts: list[TrainAttemptInput] = []
        self.stopped: list[str] = []
        self.adopted: list[str] = []

    @activity.defn(name="create_snapshot")
    async def create_snapshot(self, req: SnapshotRequest) -> DatasetSnapshot:
        return DatasetSnapshot(snapshot_id="ds-1", uri="/snap", manifest=manifest(), reused=False)

    @activity.defn(name="train")
    async def train(self, inp: TrainAttemptInput) -> TrainAttemptResult:
        self.attempts.append(inp)
        step = self.script[min(len(self.attempts), len(self.script)) - 1]
        while step == "hang":  # until cancelled, heartbeating as a real attempt does (cancels arrive with them)
            activity.heartbeat()
            await asyncio.sleep(0.2)
        handle = activity.client().get_workflow_handle(activity.info().workflow_id)
        if isinstance(step, int):  # commit a checkpoint at this step, then fail
            await handle.signal("checkpoint_committed", checkpoint(step, total_steps=100.0))
            raise ApplicationError("Ray job ended FAILED: node lost", type="RayJobFailed")
        if isinstance(step, ApplicationError):
            raise step
        final = checkpoint(100, total_steps=100.0)
        await handle.signal("checkpoint_committed", final)
        return TrainAttemptResult(final_checkpoint=final, total_steps=100, ray_job_id="j")

    @activity.defn(name="stop_run_jobs")
    async def stop_run_jobs(
        self, run_id: str, incarnation: str | None = None, adopted: list[str] | None = None
    ) -> list[str]:
        self.stopped.append(run_id)
        self.adopted.extend(adopted or [])
        return [f"{run_id}-job"]


@contextlib.asynccontextmanager
async def stub_stack(stubs: Stubs, *workflows: type) -> AsyncIterator[Client]:
    """A time-skipping server, the workflows and the stand-in activities on queue `q` and its control queue."""
    async with (
        await WorkflowEnvironment.start_time_skipping(
            test_server_existing_path=TEST_SERVER, data_converter=pydantic_data_converter
        ) as env,
        Worker(
            env.client,
            task_queue="q",
            workflows=[CheckpointedTrainingWorkflow, *workflows],
            activities=[stubs.create_snapshot, stubs.train],
        ),
        Worker(env.client, task_queue=control_queue("q"), activities=[stubs.stop_run_jobs]),
    ):
        yield env.client


async def run_workflow(
    stubs: Stubs, limit: int = 3, cancel_after: float | None = None, reports: bool = False, warm: str | None = None
) -> Any:
    """With `reports`, the run reports its end to a `Listener` (as to a sweep); the report lands in `stubs.report`.
    With `warm`, it is a promoted segment whose rung checkpoint that Ray job committed."""
    async with stub_stack(stubs, Listener) as client:
        listener = await client.start_workflow(Listener.run, id="sweep", task_queue="q") if reports else None
        opts = RunOptions(storage_uri="/s", training_queue="q", max_failures_without_progress=limit, **QUICK_CANCEL)
        req = TrainingRequest(
            run_id=f"r-{uuid.uuid4().hex[:6]}",
            config=tiny_config(),
            options=opts,
            report_to=listener.id if listener else None,
            resume_from=checkpoint(10).model_copy(update={"ray_job_id": warm}) if warm else None,
            stop_at_step=30 if warm else None,
        )
        handle = await client.start_workflow(CheckpointedTrainingWorkflow.run, req, id=req.run_id, task_queue="q")
        if cancel_after is not None:
            await asyncio.sleep(cancel_after)
            await handle.cancel()
        try:
            return await handle.result()
        finally:
            stubs.status = await patient_query(handle, CheckpointedTrainingWorkflow.status)
            stubs.report = await listener.result() if listener else None


def failure_of(stubs: Stubs, **kw) -> str:
    with pytest.raises(WorkflowFailureError) as err:
        run(run_workflow(stubs, **kw))
    return err.value.cause.message  # what `ttrain` prints: the run's own one-line reason


def test_attempts_that_commit_checkpoints_are_free_and_the_run_completes():
    stubs = Stubs([10, 20, 30, 40, 50, "ok"])  # five failures, each after a new checkpoint: more than the limit
    result = run(run_workflow(stubs, limit=2))
    assert result.steps == 100 and len(stubs.attempts) == 6
    # each attempt starts from the newest checkpoint and is told which job to reattach to
    assert [max((c.step for c in a.checkpoints), default=0) for a in stubs.attempts] == [0, 10, 20, 30, 40, 50]
    assert stubs.stopped == []  # nothing to clean up after a success


def test_failures_without_progress_exhaust_the_budget_then_stop_the_jobs():
    stubs = Stubs([10, ApplicationError("Ray job ended FAILED: no room", type="RayJobFailed")])
    message = failure_of(stubs, limit=3)
    assert len(stubs.attempts) == 4  # one that progressed, then three that did not
    assert message.startswith("3 attempts in a row made no progress past step 10") and "no room" in message
    assert stubs.stopped and stubs.status.state == "failed"


def test_an_error_the_job_raised_on_purpose_fails_at_once():
    diverged = ApplicationError("loss became NaN at step 7", type="Diverged", non_retryable=True)
    message = failure_of(Stubs([diverged]), limit=8)
    assert message == "loss became NaN at step 7"


def test_the_same_training_error_twice_from_one_checkpoint_fails_the_run():
    bug = ApplicationError(
        "RuntimeError: size mismatch", {"ray_job_id": "j"}, {"from_training_code": True}, type="RayJobFailed"
    )
    stubs = Stubs([bug])
    message = failure_of(stubs, limit=8)
    assert len(stubs.attempts) == 2 and message.startswith("RuntimeError: size mismatch (the same error twice")


def test_cancel_stops_the_runs_jobs():
    stubs = Stubs(["hang"])
    with pytest.raises(WorkflowFailureError):
        run(run_workflow(stubs, cancel_after=2.0))
    assert len(stubs.stopped) == 1 and stubs.status.state == "cancelled"


@workflow.defn(sandboxed=False)
class Listener:
    """Stands in for a sweep that a run reports its end to (`report_to`)."""

    def __init__(self) -> None:
        self.report: RunReport | None = None

    @workflow.run
    async def run(self) -> RunReport:
        await workflow.wait_condition(lambda: self.report is not None)
        assert self.report is not None
        return self.report

    @workflow.signal
    def run_finished(self, report: RunReport) -> None:
        self.report = report


def test_a_cancelled_run_stops_the_job_it_took_over_at_a_warm_promotion():
    """That job was submitted by the segment before (another incarnation): only the run knows it may have taken it
    over, also when the cancel comes before its attempt has said so (the attempt here never does)."""
    stubs = Stubs(["hang"])
    with pytest.raises(WorkflowFailureError):
        run(run_workflow(stubs, cancel_after=3, warm="rung-0-job"))
    assert stubs.attempts[0].warm_job_id == "rung-0-job" and stubs.attempts[0].stop_at_step == 30
    assert stubs.status.state == "cancelled" and stubs.adopted == ["rung-0-job"]


class StopFails(Stubs):
    @activity.defn(name="stop_run_jobs")
    async def stop_run_jobs(self, run_id: str, incarnation: str | None = None) -> list[str]:
        raise ApplicationError("the Ray Jobs API is unreachable", non_retryable=True)


def test_a_run_whose_jobs_cannot_be_stopped_still_reports_its_end():
    """Otherwise a sweep that adopted it at continue-as-new waits for its report forever."""
    diverged = ApplicationError("loss became NaN at step 7", type="Diverged", non_retryable=True)
    stubs = StopFails([diverged])

    message = failure_of(stubs, reports=True)
    assert message == "loss became NaN at step 7"  # the run fails with its own reason, not the failed stop's
    report = stubs.report
    assert report.workflow_id == stubs.status.run_id and report.result is None and report.error == message


class SlowStop(Stubs):
    @activity.defn(name="stop_run_jobs")
    async def stop_run_jobs(self, run_id: str, incarnation: str | None = None) -> list[str]:
        await asyncio.sleep(3)  # Ray takes its time to stop a job
        self.stopped.append(run_id)
        return [f"{run_id}-job"]


def test_a_cancelled_sweep_closes_after_its_trainings_so_replace_can_reuse_their_ids():
    """`ttrain sweep --replace` starts trials under the ids the cancelled sweep's children still hold, at once."""
    from temporalio.client import WorkflowExecutionStatus

    from orchestration.sweeps.models import SweepSpec, SweepState
    from orchestration.workflows.sweep import SweepWorkflow

    stubs = SlowStop(["hang"])
    spec = SweepSpec(
        id=f"sw-{uuid.uuid4().hex[:6]}",
        strategy="random",
        trainer="real",
        trials=2,
        max_concurrency=2,
        base=tiny_config().model_dump(mode="json"),
        space={"params": {"lr": {"type": "loguniform", "low": 1e-5, "high": 1e-3}}},
    )

    async def go() -> list[WorkflowExecutionStatus]:
        async with stub_stack(stubs, SweepWorkflow) as client:
            state = SweepState(
                spec=spec,
                options=RunOptions(storage_uri="/s", training_queue="q", **QUICK_CANCEL),
                search_attributes=False,
            )
            handle = await client.start_workflow(SweepWorkflow.run, state, id=spec.id, task_queue="q")
            while len(stubs.attempts) < 2:
                await asyncio.sleep(0.2)
            await handle.cancel()
            with pytest.raises(WorkflowFailureError):
                await handle.result()
            children = [f"{spec.id}-t{i:04d}-r0" for i in range(2)]
            return [(await client.get_workflow_handle(c).describe()).status for c in children]

    assert run(go()) == [WorkflowExecutionStatus.CANCELED] * 2
    assert len(stubs.stopped) == 2
