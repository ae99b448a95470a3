"""Crash tests against the real stack: real processes are killed (SIGKILL) or stopped, and we assert what survived.

- the training worker dies mid-run: the retry reattaches to the running Ray job (or resumes from the ledger);
- the Ray job is stopped mid-run: the retry resumes from the newest checkpoint, and ends bit-for-bit where an
  uninterrupted run ends (exact resume: model, optimizer, scheduler, RNG and data position all restored);
- the Ray train worker hangs (SIGSTOP): the progress watchdog stops the job and the retry resumes;
- the Temporal server is killed and restarted over its SQLite file: the workflow carries on.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess

import pytest
from ray.job_submission import JobSubmissionClient
from safetensors.torch import load_file

from cluster import local_stack
from orchestration.cli import start_training
from orchestration.client import connect
from orchestration.types import RunStatus, TrainingResult
from orchestration.workflows.training import CheckpointedTrainingWorkflow
from tests.helpers import run, tiny_config, wait_until

pytestmark = pytest.mark.integration

EVERY = 10
STEPS = 60


def crash_config():
    """Long enough (60 steps, a checkpoint every 10) that there is a mid-run to crash in, still tiny."""
    return tiny_config(
        dataset={"max_rows": 900}, max_steps=STEPS, checkpoint_every_steps=EVERY, max_seq_length=64, num_hidden_layers=2
    )


async def status_of(handle) -> RunStatus:
    return await handle.query(CheckpointedTrainingWorkflow.status)


async def first_checkpoint(handle) -> RunStatus:
    async def has_one():
        s = await status_of(handle)
        return s if s.checkpoints and s.ray_job_id else None

    return await wait_until(has_one, 240, "the first committed checkpoint")


def assert_continuous_ledger(status: RunStatus) -> None:
    assert [c.step for c in status.checkpoints] == list(range(EVERY, STEPS + 1, EVERY))


def test_training_worker_sigkill_reattaches_and_completes(stack):
    async def go() -> tuple[TrainingResult, RunStatus]:
        client = await connect(stack)
        handle = await start_training(client, stack, "it-worker-kill", crash_config(), heartbeat_timeout_s=5)
        await first_checkpoint(handle)
        pid = local_stack.read_pid(stack, "worker-training")
        os.kill(pid, signal.SIGKILL)
        await wait_until(lambda: not local_stack.pid_alive(pid), 10, "the worker to die")
        local_stack.start_worker(stack, "training")
        result = await handle.result()
        return result, await status_of(handle)

    result, status = run(go())
    assert result.steps == STEPS
    assert result.resumes >= 1
    assert_continuous_ledger(status)
    first, second = status.attempts[0], status.attempts[1]
    if second.reattached:  # the Ray job kept training while no worker watched it: nothing lost
        assert second.ray_job_id == first.ray_job_id
        assert second.steps_recomputed == 0
    else:  # it had already finished or died: resumed from the ledger, at most one interval recomputed
        assert second.resumed_from_step >= EVERY
        assert second.steps_recomputed <= EVERY


def test_ray_job_stopped_resumes_from_checkpoint_and_matches_uninterrupted_run(stack):
    jobs = JobSubmissionClient(stack.ray_dashboard_url)

    async def interrupted() -> tuple[TrainingResult, RunStatus]:
        client = await connect(stack)
        handle = await start_training(client, stack, "it-exact-interrupted", crash_config())
        status = await first_checkpoint(handle)
        jobs.stop_job(status.ray_job_id)
        result = await handle.result()
        return result, await status_of(handle)

    async def uninterrupted() -> TrainingResult:
        client = await connect(stack)
        return await (await start_training(client, stack, "it-exact-reference", crash_config())).result()

    async def both():
        return await asyncio.gather(interrupted(), uninterrupted())

    (resumed, status), reference = run(both())
    assert resumed.resumes >= 1
    retry = status.attempts[1]
    assert not retry.reattached
    assert retry.resumed_from_step >= EVERY, "resumed from step 0 although a checkpoint was committed"
    assert_continuous_ledger(status)
    assert resumed.snapshot_id == reference.snapshot_id

    ref_loss, got_loss = reference.metrics["loss"], resumed.metrics["loss"]
    assert abs(got_loss - ref_loss) <= 1e-6 * abs(ref_loss), (got_loss, ref_loss)
    a = load_file(os.path.join(reference.final_checkpoint.uri, "model.safetensors"))
    b = load_file(os.path.join(resumed.final_checkpoint.uri, "model.safetensors"))
    assert a.keys() == b.keys()
    worst = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert worst <= 1e-6, f"weights differ by {worst}"


def test_hung_ray_worker_is_caught_by_the_progress_watchdog(stack):
    async def go() -> tuple[TrainingResult, RunStatus]:
        client = await connect(stack)
        handle = await start_training(client, stack, "it-hung", crash_config(), stall_timeout_s=20)
        await first_checkpoint(handle)
        pids = [
            int(p)
            for p in subprocess.run(["pgrep", "-f", "RayTrainWorker"], capture_output=True, text=True).stdout.split()
        ]
        assert pids, "no Ray Train worker process found"
        for pid in pids:
            os.kill(pid, signal.SIGSTOP)  # alive to every health check, but no step ever advances
        try:
            result = await handle.result()
        finally:
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        return result, await status_of(handle)

    result, status = run(go())
    assert result.steps == STEPS
    assert result.resumes >= 1
    assert status.attempts[1].resumed_from_step >= EVERY
    assert_continuous_ledger(status)


def test_temporal_server_restart_mid_run(stack):
    async def go() -> tuple[TrainingResult, RunStatus]:
        client = await connect(stack)
        handle = await start_training(client, stack, "it-temporal-restart", crash_config())
        await first_checkpoint(handle)
        pid = local_stack.read_pid(stack, "temporal")
        os.kill(pid, signal.SIGKILL)
        await wait_until(lambda: not local_stack.pid_alive(pid), 10, "the Temporal server to die")
        await asyncio.sleep(2)
        local_stack.start_temporal(stack)
        client = await connect(stack)
        handle = client.get_workflow_handle(handle.id, result_type=TrainingResult)
        result = await handle.result()
        return result, await status_of(handle)

    result, status = run(go())
    assert result.steps == STEPS
    assert status.state == "completed"
    assert_continuous_ledger(status)
