"""Crash tests against the real stack: real processes are killed (SIGKILL), stopped (SIGTERM) or frozen (SIGSTOP),
and we assert what survived.

- the training worker is stopped (a deploy: SIGTERM) and later killed (SIGKILL) under one run: each time the Ray
  job trains on and the next attempt reattaches to it, nothing recomputed; a second run cancelled while no training
  worker is alive still has its Ray job stopped, once a worker is back;
- the Ray job is stopped mid-run: the retry resumes from the newest checkpoint, and ends bit-for-bit where an
  uninterrupted run ends (exact resume: model, optimizer, scheduler, RNG and data position all restored);
- a job's Train worker hangs (SIGSTOP): the progress watchdog stops the job and the retry resumes (these two and
  the uninterrupted twin run side by side: each fault touches its own job only);
- the machine "reboots": the Temporal server and the Ray head's whole process group are SIGKILLed, then started
  again (`ttrain up` does the same): the workflow carries on from its database, the run from its ledger.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from pathlib import Path

import pytest
from ray.job_submission import JobStatus, JobSubmissionClient
from ray.util.state import list_actors
from safetensors.torch import load_file
from temporalio.client import WorkflowExecutionStatus

from cluster import local_stack
from orchestration.api import start_training
from orchestration.client import connect, patient_query, wait_for_result
from orchestration.types import RunStatus, TrainingResult
from orchestration.workflows.training import CheckpointedTrainingWorkflow
from ray_jobs.history import read_history
from tests.helpers import run, tiny_config, wait_until

pytestmark = pytest.mark.integration

EVERY = 10
STEPS = 60


def crash_config(steps: int = STEPS):
    """A mid-run to crash in (a checkpoint every 10 steps, ~0.15 s a step on 2 CPU cores), still tiny."""
    return tiny_config(dataset={"max_rows": 900}, max_steps=steps, checkpoint_every_steps=EVERY)


async def status_of(handle) -> RunStatus:
    return await patient_query(handle, CheckpointedTrainingWorkflow.status)


async def first_checkpoint(handle) -> RunStatus:
    async def has_one():
        s = await status_of(handle)
        return s if s.checkpoints and s.ray_job_id else None

    # a job's start-up on a saturated 2-core machine: seen at 240 s, in a faults scenario whose own worker took a
    # minute to start polling before the snapshot and the job's start (four scenarios at once)
    return await wait_until(has_one, 420, "the first committed checkpoint")


def assert_continuous_ledger(status: RunStatus, steps: int = STEPS) -> None:
    assert [c.step for c in status.checkpoints] == list(range(EVERY, steps + 1, EVERY))


async def attempts_at_least(handle, n: int) -> RunStatus:
    async def reached():
        s = await status_of(handle)
        return s if len(s.attempts) >= n else None

    return await wait_until(reached, 120, f"attempt {n}")


def test_training_worker_stopped_then_killed_reattaches_and_a_cancel_meanwhile_stops_its_job(stack):
    """SIGTERM (a deploy, `ttrain down`) and SIGKILL (a lost node) of the training worker under one long run; a
    second run is cancelled while no worker is alive, so nobody can stop its job until one comes back."""
    jobs = JobSubmissionClient(stack.ray_dashboard_url)

    async def go():
        client = await connect(stack)
        long = await start_training(client, stack, "it-worker-loss", crash_config(150), heartbeat_timeout_s=5)
        # long enough that only the cancel can end its job (it trains on, unattended, until a worker is back)
        doomed = await start_training(client, stack, "it-cancel-orphan", crash_config(1000), heartbeat_timeout_s=5)
        first = await first_checkpoint(long)
        doomed_job = (await first_checkpoint(doomed)).ray_job_id

        local_stack.stop(stack, "worker-training")  # SIGTERM: the attempts let go of their jobs, and stop none
        after_sigterm = jobs.get_job_status(first.ray_job_id)
        local_stack.start_worker(stack, "training")
        await attempts_at_least(long, 2)
        await attempts_at_least(doomed, 2)

        pid = local_stack.read_pid(stack, "worker-training")
        os.kill(pid, signal.SIGKILL)
        await wait_until(lambda: not local_stack.pid_alive(pid), 10, "the worker to die")
        await doomed.cancel()
        await asyncio.sleep(8)  # past the heartbeat timeout: the attempt is gone, nobody can stop the job yet
        orphan_window = jobs.get_job_status(doomed_job)
        local_stack.start_worker(stack, "training")
        result = await wait_for_result(long)

        async def closed():
            desc = await doomed.describe()
            return desc.status if desc.status != WorkflowExecutionStatus.RUNNING else None

        doomed_closed = await wait_until(closed, 120, "the cancelled run to close")
        return (
            result,
            await status_of(long),
            after_sigterm,
            orphan_window,
            doomed_closed,
            jobs.get_job_status(doomed_job),
        )

    result, status, after_sigterm, orphan_window, doomed_closed, doomed_job = run(go())
    assert after_sigterm == JobStatus.RUNNING, "the graceful shutdown stopped the Ray job"
    assert result.steps == 150 and len(status.attempts) == 3
    assert all(a.reattached and a.ray_job_id == status.attempts[0].ray_job_id for a in status.attempts[1:])
    assert sum(a.steps_recomputed for a in status.attempts) == 0
    assert_continuous_ledger(status, 150)
    assert orphan_window == JobStatus.RUNNING  # the cancel waited for a worker instead of leaving the job behind
    assert doomed_closed == WorkflowExecutionStatus.CANCELED and doomed_job == JobStatus.STOPPED


def train_worker_pids(stack, ray_job_id: str) -> list[int]:
    """The processes of one Ray job's Train workers (so a fault hits that job and no other on the cluster)."""
    job = JobSubmissionClient(stack.ray_dashboard_url).get_job_info(ray_job_id).job_id
    actors = list_actors(
        address=stack.ray_dashboard_url, filters=[("class_name", "=", "RayTrainWorker"), ("state", "=", "ALIVE")]
    )
    return [a.pid for a in actors if a.job_id == job]


async def stopped_job(stack) -> tuple[TrainingResult, RunStatus]:
    client = await connect(stack)
    handle = await start_training(client, stack, "it-exact-interrupted", crash_config())
    status = await first_checkpoint(handle)
    JobSubmissionClient(stack.ray_dashboard_url).stop_job(status.ray_job_id)
    result = await wait_for_result(handle)
    return result, await status_of(handle)


async def uninterrupted(stack) -> TrainingResult:
    client = await connect(stack)
    return await wait_for_result(await start_training(client, stack, "it-exact-reference", crash_config()))


async def hung_worker(stack) -> tuple[TrainingResult, RunStatus]:
    client = await connect(stack)
    handle = await start_training(client, stack, "it-hung", crash_config(), stall_timeout_s=20)
    status = await first_checkpoint(handle)
    pids = await wait_until(lambda: train_worker_pids(stack, status.ray_job_id), 30, "the job's Train worker")
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)  # alive to every health check, but no step ever advances
    try:
        result = await wait_for_result(handle)
    finally:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    return result, await status_of(handle)


@pytest.fixture(scope="module")
def side_by_side(stack) -> dict:
    """A stopped job, its uninterrupted twin and a hung job, at once: each fault touches its own job only."""

    async def all_three():
        stopped, reference, hung = await asyncio.gather(stopped_job(stack), uninterrupted(stack), hung_worker(stack))
        return {"stopped": stopped, "reference": reference, "hung": hung}

    return run(all_three())


def test_ray_job_stopped_resumes_from_checkpoint_and_matches_uninterrupted_run(side_by_side):
    (resumed, status), reference = side_by_side["stopped"], side_by_side["reference"]
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
    # the metric history has each step once: at every checkpoint the values of the uninterrupted run
    runs = str(Path(resumed.final_checkpoint.uri).parents[2])  # <runs>/<run>/<job>/<checkpoint>
    history = {r.step: r.values for r in read_history(os.path.join(runs, "it-exact-interrupted"))}
    twin = {r.step: r.values for r in read_history(os.path.join(runs, "it-exact-reference"))}
    for step in range(EVERY, STEPS + 1, EVERY):
        assert history[step].keys() >= {"loss", "lr", "epoch"}
        assert all(abs(history[step][k] - twin[step][k]) <= 1e-6 * max(1.0, abs(twin[step][k])) for k in ("loss", "lr"))


def test_hung_ray_worker_is_caught_by_the_progress_watchdog(side_by_side):
    result, status = side_by_side["hung"]
    assert result.steps == STEPS
    assert result.resumes >= 1
    assert status.attempts[-1].resumed_from_step >= EVERY
    assert "no progress past step" in (status.last_failure or "")
    assert_continuous_ledger(status)


def test_a_machine_reboot_temporal_and_the_ray_head_killed_and_started_again(stack):
    async def go() -> tuple[TrainingResult, RunStatus]:
        client = await connect(stack)
        handle = await start_training(client, stack, "it-reboot", crash_config())
        await first_checkpoint(handle)
        # a user waiting on the result (`ttrain train` follows its run) through the outage, on the client it had
        waiting = asyncio.ensure_future(wait_for_result(handle))
        temporal, ray_head = local_stack.read_pid(stack, "temporal"), local_stack.read_pid(stack, "ray")
        os.kill(temporal, signal.SIGKILL)
        os.killpg(ray_head, signal.SIGKILL)  # the head and everything it started: GCS, dashboard, the job, its workers
        await wait_until(lambda: not (local_stack.pid_alive(temporal) or local_stack.pid_alive(ray_head)), 10, "both")
        await asyncio.sleep(2)
        local_stack.start_ray(stack, num_cpus=4)  # ~30 s: Temporal stays down longer than the SDK's own retries
        local_stack.start_temporal(stack)
        client = await connect(stack)
        handle = client.get_workflow_handle(handle.id, result_type=TrainingResult)
        result = await wait_for_result(handle)
        assert (await waiting) == result
        return result, await status_of(handle)

    result, status = run(go())
    assert result.steps == STEPS and status.state == "completed"
    retry = status.attempts[-1]
    assert not retry.reattached and retry.resumed_from_step >= EVERY and retry.steps_recomputed <= EVERY
    assert_continuous_ledger(status)
