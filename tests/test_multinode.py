"""Multi-node Ray on one machine: the training job's workers live on a second node, and that node dies mid-run.

The head has one CPU and no `trainer_node` resource; a second node (`ray start --address`, its own process and ports,
the head's token) offers `trainer_node`, and the run asks for `resources_per_worker={"trainer_node": 1}`, so its Ray
Train workers can only be placed there. Once a checkpoint is committed the second node's raylet is SIGKILLed: the job
fails, nothing trains while the capacity is gone, and when a node with `trainer_node` joins again the activity resumes
the run from the ledger's newest checkpoint and finishes it on the new node.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time

import pytest
from ray.job_submission import JobStatus, JobSubmissionClient
from ray.util.state import list_actors, list_nodes

from cluster import local_stack
from orchestration.api import start_training
from orchestration.client import connect, patient_query, wait_for_result
from orchestration.types import RunStatus, TrainingResult
from orchestration.workflows.training import CheckpointedTrainingWorkflow
from ray_jobs import storage
from ray_jobs.outcome import read_progress
from tests.helpers import run, tiny_config, wait_until
from tests.stack_util import group_members, own_env, teardown

pytestmark = pytest.mark.integration

TEMPORAL_PORT, RAY_PORT, GCS_PORT = 24233, 24265, 24379  # head's other ports: 24380-24384 (local_stack)
NODE_PORTS = 24390  # the trainer node's node-manager, object-manager and agent ports: 24390-24395
EVERY, STEPS = 10, 60
# the GCS declares a node dead after 5 failed health checks, 1 s apart (defaults: 3 s apart, after 5 s)
FAST_NODE_DEATH = {
    "RAY_health_check_initial_delay_ms": "1000",
    "RAY_health_check_period_ms": "1000",
    "RAY_health_check_timeout_ms": "2000",
    "RAY_health_check_failure_threshold": "5",
}


def config():
    return tiny_config(
        dataset={"max_rows": 900},
        max_steps=STEPS,
        checkpoint_every_steps=EVERY,
        max_seq_length=64,
        num_hidden_layers=2,
        scaling={"resources_per_worker": {"trainer_node": 1}},
    )


def nodes(settings) -> dict[str, object]:
    return {n.node_id: n for n in list_nodes(address=settings.ray_dashboard_url)}


def train_workers(settings, state: str | None = None) -> list:
    """Ray Train's worker actors in the cluster (dead ones too, unless `state`), with the node each ran on."""
    actors = list_actors(address=settings.ray_dashboard_url, limit=10_000)
    return [a for a in actors if a.class_name == "RayTrainWorker" and state in (None, a.state)]


def test_trainer_node_lost_mid_run_resumes_from_ledger_when_capacity_returns(tmp_path, monkeypatch):
    monkeypatch.setenv("TTRAIN_RAY_NODE_IP", "127.0.0.1")  # a head that other nodes may join (Ray resolves the address)
    settings = own_env(monkeypatch, tmp_path / "home", TEMPORAL_PORT, RAY_PORT, GCS_PORT)
    replaced: list[int] = []
    timings: dict[str, float] = {}

    async def go() -> tuple[TrainingResult, RunStatus, dict]:
        t0 = time.monotonic()
        local_stack.start_temporal(settings)
        head = local_stack.start_ray(settings, num_cpus=1, env=FAST_NODE_DEATH)
        trainer = local_stack.start_ray_node(
            settings, "ray-node-1", f"127.0.0.1:{GCS_PORT}", NODE_PORTS, num_cpus=2, resources={"trainer_node": 4}
        )
        for queue in local_stack.WORKER_QUEUES:
            local_stack.start_worker(settings, queue)
        jobs = JobSubmissionClient(settings.ray_dashboard_url)
        timings["stack_up_s"] = time.monotonic() - t0
        head_raylet, head_id = local_stack.raylet_of(head)
        raylet, trainer_id = local_stack.raylet_of(trainer)
        cluster = nodes(settings)
        assert {i for i, n in cluster.items() if n.state == "ALIVE"} == {head_id, trainer_id}
        assert cluster[head_id].is_head_node and "trainer_node" not in cluster[head_id].resources_total
        assert cluster[trainer_id].resources_total.get("trainer_node") == 4

        client = await connect(settings)
        handle = await start_training(
            client, settings, "mn-node-loss", config(), heartbeat_timeout_s=10, stall_timeout_s=120, poll_interval_s=1
        )

        async def checkpointed():
            s = await patient_query(handle, CheckpointedTrainingWorkflow.status)
            return s if s.checkpoints and s.ray_job_id else None

        before = await wait_until(checkpointed, 180, "the first committed checkpoint")
        timings["first_checkpoint_s"] = time.monotonic() - t0
        first_job = before.ray_job_id
        running = train_workers(settings, "ALIVE")
        assert running and {a.node_id for a in running} == {trainer_id}, "Ray Train workers not on the trainer node"

        # kill the trainer node's raylet: that node's, never the head's
        assert raylet != head_raylet and trainer_id != head_id
        assert local_stack.raylet_of(trainer) == (raylet, trainer_id)
        os.kill(raylet, signal.SIGKILL)
        killed_at, t_kill = time.time(), time.monotonic()
        await wait_until(lambda: nodes(settings)[trainer_id].state == "DEAD", 60, "Ray to declare the node dead")
        timings["node_dead_after_s"] = time.monotonic() - t_kill
        await wait_until(lambda: not local_stack.pid_alive(trainer), 30, "`ray start --block` to stop the node")
        replaced.append(trainer)  # its process group, in case a worker of the dead node lingers
        timings["lost_node_processes_left"] = len(group_members(trainer))
        await wait_until(lambda: jobs.get_job_status(first_job).is_terminal(), 120, "the Ray job to end")
        timings["job_failed_after_s"] = time.monotonic() - t_kill
        assert jobs.get_job_status(first_job) == JobStatus.FAILED

        # no capacity: the activity's next attempt is up, but nothing trains
        async def retried():
            s = await patient_query(handle, CheckpointedTrainingWorkflow.status)
            return s if len(s.attempts) >= 2 else None

        waiting = (await wait_until(retried, 60, "the activity's next attempt")).attempts[-1].ray_job_id
        await asyncio.sleep(5)
        stalled = await patient_query(handle, CheckpointedTrainingWorkflow.status)
        assert stalled.state == "training" and not train_workers(settings, "ALIVE")
        assert all(c.ray_job_id != waiting for c in stalled.checkpoints)
        run_uri = storage.join(settings.storage_uri, "runs", "mn-node-loss")
        assert read_progress(run_uri, waiting) is None, "the new job trained without a trainer node"

        # capacity returns: a new node with the same command
        trainer = local_stack.start_ray_node(
            settings, "ray-node-1", f"127.0.0.1:{GCS_PORT}", NODE_PORTS, num_cpus=2, resources={"trainer_node": 4}
        )
        _, new_trainer_id = local_stack.raylet_of(trainer)
        t_back = time.monotonic()
        result = await wait_for_result(handle)
        timings["finish_after_capacity_s"] = time.monotonic() - t_back
        status = await patient_query(handle, CheckpointedTrainingWorkflow.status)
        placed = {a.node_id for a in train_workers(settings)}
        ids = {"head": head_id, "lost": trainer_id, "new": new_trainer_id, "first_job": first_job}
        return result, status, {**ids, "before": before, "killed_at": killed_at, "placed": placed}

    with teardown(settings, groups=replaced):
        result, status, seen = run(go())
    print(f"multinode: {timings}, attempts {status.attempts}")

    assert result.steps == STEPS and status.state == "completed"
    assert [c.step for c in status.checkpoints] == list(range(EVERY, STEPS + 1, EVERY))
    before_step = seen["before"].latest_checkpoint.step
    # ledger entries the first job wrote before the kill
    assert any(
        c.created_at.timestamp() < seen["killed_at"] and c.ray_job_id == seen["first_job"] for c in status.checkpoints
    )
    # and entries from a later job, all past the first job's: a worker of the lost node may still commit one
    # checkpoint in the moment after its raylet dies (seen once), never after the new job has started
    first = [c.step for c in status.checkpoints if c.ray_job_id == seen["first_job"]]
    later = [c.step for c in status.checkpoints if c.ray_job_id != seen["first_job"]]
    assert later and min(later) > max(first)
    # every later attempt submitted a new job resuming from the ledger, never from step 0
    assert len(status.attempts) >= 2
    for attempt in status.attempts[1:]:
        assert not attempt.reattached and attempt.ray_job_id != seen["first_job"]
        assert attempt.resumed_from_step >= before_step > 0
    assert status.attempts[-1].ray_job_id == result.final_checkpoint.ray_job_id
    # the training ran on trainer nodes only: the lost one, then the new one; never on the head
    assert seen["placed"] == {seen["lost"], seen["new"]}, seen["placed"]
