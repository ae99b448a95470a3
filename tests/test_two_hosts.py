"""Two training workers on different "hosts": separate state directories, only the storage URI in common.

Both poll the training queue. Once one of them holds the run's activity and a checkpoint is committed, that worker is
SIGKILLed, the Ray job it followed is stopped (so nothing is left to reattach to) and its whole state directory is
deleted. The other worker must pick the activity up and resume from the checkpoint URI in the workflow's ledger:
a `file://` URI under the shared storage, never a path it would have to find on its own disk.
"""

from __future__ import annotations

import os
import shutil
import signal
import time

import pytest
from ray.job_submission import JobStatus, JobSubmissionClient
from temporalio.api.enums.v1 import TaskQueueType
from temporalio.api.taskqueue.v1 import TaskQueue
from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest

from cluster import local_stack
from orchestration.api import start_training
from orchestration.client import connect, patient_query, wait_for_result
from orchestration.types import RunStatus, TrainingResult
from orchestration.workflows.training import CheckpointedTrainingWorkflow
from ray_jobs import storage
from tests.helpers import run, tiny_config, wait_until
from tests.stack_util import on_host, own_env, teardown

pytestmark = pytest.mark.integration

TEMPORAL_PORT, RAY_PORT, GCS_PORT = 22233, 22265, 22379  # head's other ports: 22380-22384 (local_stack)
EVERY, STEPS = 10, 60


def config():
    return tiny_config(
        dataset={"max_rows": 900}, max_steps=STEPS, checkpoint_every_steps=EVERY, max_seq_length=64, num_hidden_layers=2
    )


def identity_pid(identity: str) -> int:
    """A worker's default Temporal identity is `<pid>@<hostname>`."""
    return int(identity.split("@", 1)[0])


async def training_pollers(client, settings) -> set[int]:
    resp = await client.workflow_service.describe_task_queue(
        DescribeTaskQueueRequest(
            namespace=client.namespace,
            task_queue=TaskQueue(name=settings.training_queue),
            task_queue_type=TaskQueueType.TASK_QUEUE_TYPE_ACTIVITY,
        )
    )
    return {identity_pid(p.identity) for p in resp.pollers}


def test_training_worker_on_another_host_resumes_from_the_ledger_uri(tmp_path, monkeypatch):
    shared = tmp_path / "shared-storage"
    monkeypatch.setenv("TTRAIN_STORAGE", shared.as_uri())  # file:///...: a URI, as s3:// or gs:// would be
    settings = own_env(monkeypatch, tmp_path / "server", TEMPORAL_PORT, RAY_PORT, GCS_PORT)
    hosts = {"a": on_host(settings, tmp_path / "host-a"), "b": on_host(settings, tmp_path / "host-b")}
    timings: dict[str, float] = {}

    async def go() -> tuple[TrainingResult, RunStatus, dict]:
        t0 = time.monotonic()
        local_stack.start_temporal(settings)
        local_stack.start_ray(settings, num_cpus=2)
        local_stack.start_worker(settings, "orchestration")
        pids = {name: local_stack.start_worker(host, "training") for name, host in hosts.items()}
        client = await connect(settings)
        await wait_until(lambda: _polling(client, settings, set(pids.values())), 120, "both training workers polling")
        timings["stack_up_s"] = time.monotonic() - t0

        handle = await start_training(client, settings, "two-hosts", config(), heartbeat_timeout_s=5, poll_interval_s=1)

        async def checkpointed():
            s = await patient_query(handle, CheckpointedTrainingWorkflow.status)
            return s if s.checkpoints and s.ray_job_id else None

        before = await wait_until(checkpointed, 180, "the first committed checkpoint")
        timings["first_checkpoint_s"] = time.monotonic() - t0
        pending = (await handle.describe()).raw_description.pending_activities
        assert [p.activity_type.name for p in pending] == ["train"]
        holder = next(name for name, pid in pids.items() if pid == identity_pid(pending[0].last_worker_identity))
        survivor = "b" if holder == "a" else "a"

        # the holder's host goes away: its worker, the Ray job it followed, and its whole state directory
        pid, jobs = pids[holder], JobSubmissionClient(settings.ray_dashboard_url)
        os.kill(pid, signal.SIGKILL)
        killed_at = time.time()
        jobs.stop_job(before.ray_job_id)
        await wait_until(lambda: not local_stack.pid_alive(pid), 10, "the worker to die")
        await wait_until(lambda: jobs.get_job_status(before.ray_job_id).is_terminal(), 60, "the Ray job to stop")
        assert jobs.get_job_status(before.ray_job_id) == JobStatus.STOPPED
        shutil.rmtree(hosts[holder].home)
        t_kill = time.monotonic()

        result = await wait_for_result(handle)
        timings["finish_after_kill_s"] = time.monotonic() - t_kill
        status = await patient_query(handle, CheckpointedTrainingWorkflow.status)
        completed_by = [
            identity_pid(e.activity_task_completed_event_attributes.identity)
            async for e in handle.fetch_history_events()
            if e.HasField("activity_task_completed_event_attributes")
        ]
        spec = storage.read_json(storage.join(settings.storage_uri, "jobs", f"{status.attempts[-1].ray_job_id}.json"))
        seen = {"holder": holder, "survivor": survivor, "before": before, "killed_at": killed_at, "final_spec": spec}
        return result, status, {**seen, "pids": pids, "completed_by": completed_by}

    with teardown(settings, *hosts.values(), groups=[]):
        result, status, seen = run(go())
    print(f"two-hosts: {timings}, train held by {seen['holder']}, finished by {seen['survivor']}: {status.attempts}")

    assert result.steps == STEPS and status.state == "completed"
    assert [c.step for c in status.checkpoints] == list(range(EVERY, STEPS + 1, EVERY))
    # the survivor completed the training activity (the last activity the workflow ran)
    assert seen["completed_by"][-1] == seen["pids"][seen["survivor"]] != seen["pids"][seen["holder"]]
    # it resumed from the ledger's checkpoint in a new job. (If its first attempt came before the stop had
    # landed, that attempt reattached to the old job, saw it stopped and failed; the next one resumed.)
    before_step = seen["before"].latest_checkpoint.step
    last = status.attempts[-1]
    assert len(status.attempts) >= 2 and last.ray_job_id == result.final_checkpoint.ray_job_id
    assert not last.reattached and last.ray_job_id != seen["before"].ray_job_id
    assert all(a.resumed_from_step >= before_step > 0 for a in status.attempts[1:])
    assert all(a.ray_job_id == seen["before"].ray_job_id for a in status.attempts[1:] if a.reattached)
    assert any(c.created_at.timestamp() > seen["killed_at"] for c in status.checkpoints)
    # the new job was given the ledger entry's URI to resume from (its spec is in the shared storage too)
    spec = seen["final_spec"]
    resumed = next(c for c in status.checkpoints if c.step == last.resumed_from_step)
    assert (spec["resume_from_step"], spec["resume_from_uri"]) == (resumed.step, resumed.uri)
    # everything the run needed lives under the shared storage URI, nothing under either host's state directory
    storage_uri = (tmp_path / "shared-storage").as_uri()
    uris = [c.uri for c in status.checkpoints] + [result.final_checkpoint.uri, status.snapshot_uri]
    assert all(u.startswith(f"{storage_uri}/") for u in uris), uris
    assert not (tmp_path / f"host-{seen['holder']}").exists()
    survivor_home = tmp_path / f"host-{seen['survivor']}"
    assert {p.name for p in survivor_home.iterdir()} <= {"logs", "run"}  # pid file and log only


async def _polling(client, settings, pids: set[int]) -> bool:
    return pids <= await training_pollers(client, settings)
