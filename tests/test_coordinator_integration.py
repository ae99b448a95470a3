"""Parallel experiments against the real stack: a killed training worker, a failing experiment, the run cache,
and cancellation that leaves no Ray job behind."""

from __future__ import annotations

import csv
import io
import json
import os
import signal
import subprocess
import sys

import pytest
from ray.job_submission import JobStatus, JobSubmissionClient
from temporalio.client import WorkflowFailureError

from cluster import local_stack
from orchestration.client import connect, patient_query, wait_for_result
from orchestration.ray_submission import RUN_ID_KEY
from orchestration.types import CoordinatorRequest, CoordinatorResult, Experiment, RunOptions, RunStatus
from orchestration.workflows.coordinator import CoordinatorWorkflow
from orchestration.workflows.training import CheckpointedTrainingWorkflow
from tests.helpers import run, tiny_config, wait_until

pytestmark = pytest.mark.integration


def longer(**overrides):
    return tiny_config(**{"dataset": {"max_rows": 600}, "max_steps": 60, "checkpoint_every_steps": 10, **overrides})


def request(stack, experiment_id: str, experiments: list[Experiment], **kw) -> CoordinatorRequest:
    options = RunOptions(storage_uri=stack.storage_uri, training_queue=stack.training_queue, heartbeat_timeout_s=5)
    return CoordinatorRequest(experiment_id=experiment_id, experiments=experiments, options=options, **kw)


async def training_status(client, run_id: str) -> RunStatus | None:
    try:
        return await patient_query(client.get_workflow_handle(run_id), CheckpointedTrainingWorkflow.status)
    except Exception:
        return None


def test_experiments_survive_a_killed_training_worker_and_reuse_identical_runs(stack):
    experiments = [
        Experiment(id="lr-a", config=longer(lr=1e-4)),
        Experiment(id="lr-b", config=longer(lr=3e-4)),
        Experiment(id="lr-a-again", config=longer(lr=1e-4)),  # identical to lr-a: must not train twice
        Experiment(id="broken", config=tiny_config(dataset={"path": "/nonexistent/data.csv"})),
    ]
    req = request(stack, "it-exp", experiments, max_concurrency=2)

    async def go() -> CoordinatorResult:
        client = await connect(stack)
        handle = await client.start_workflow(
            CoordinatorWorkflow.run, req, id=req.experiment_id, task_queue=stack.orchestration_queue
        )

        async def both_checkpointed():
            statuses = [await training_status(client, f"it-exp-{e}") for e in ("lr-a", "lr-b")]
            return all(s is not None and s.checkpoints for s in statuses)

        await wait_until(both_checkpointed, 300, "both trainings to commit a checkpoint")
        pid = local_stack.read_pid(stack, "worker-training")
        os.kill(pid, signal.SIGKILL)
        await wait_until(lambda: not local_stack.pid_alive(pid), 10, "the worker to die")
        local_stack.start_worker(stack, "training")
        return await wait_for_result(handle)

    result = run(go())
    rows = {r.experiment: r for r in result.rows}
    assert set(rows) == {"lr-a", "lr-b", "lr-a-again", "broken"}
    for name in ("lr-a", "lr-b"):
        assert rows[name].state == "completed", rows[name]
        assert rows[name].checkpoints == 6
        assert 0.0 <= rows[name].metrics["accuracy"] <= 1.0
        assert "macro_f1" in rows[name].metrics
    assert rows["lr-a-again"].state == "cached"
    assert rows["lr-a-again"].cached_from == "it-exp-lr-a"
    assert rows["lr-a-again"].metrics["accuracy"] == rows["lr-a"].metrics["accuracy"]
    assert rows["broken"].state == "failed"
    assert "does not exist" in rows["broken"].error
    assert rows["lr-a"].config_diff["lr"] == 1e-4
    # the killed worker held both trainings: each resumed from its own ledger and kept it continuous
    client_statuses = run(_statuses(stack, ["it-exp-lr-a", "it-exp-lr-b"]))
    assert sum(s.resumes for s in client_statuses) >= 1
    for s in client_statuses:
        assert [c.step for c in s.checkpoints] == [10, 20, 30, 40, 50, 60]
    # only two Ray trainings ran for three identical-or-distinct configs
    jobs = JobSubmissionClient(stack.ray_dashboard_url).list_jobs()
    assert not [j for j in jobs if (j.metadata or {}).get(RUN_ID_KEY) == "it-exp-lr-a-again"]
    # sorted by the metric, best first; failures last
    assert result.rows[-1].experiment == "broken"

    out = subprocess.run(
        [sys.executable, "-m", "orchestration.cli", "results", "it-exp", "--csv"], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    table = list(csv.DictReader(io.StringIO(out.stdout)))
    assert [r["experiment"] for r in table] == [r.experiment for r in result.rows]
    out = subprocess.run(
        [sys.executable, "-m", "orchestration.cli", "results", "it-exp", "--json"], capture_output=True, text=True
    )
    assert json.loads(out.stdout)["rows"][0]["state"] in {"completed", "cached"}


async def _statuses(stack, run_ids: list[str]) -> list[RunStatus]:
    client = await connect(stack)
    return [await training_status(client, r) for r in run_ids]


def test_cancelling_the_coordinator_stops_every_ray_job(stack):
    experiments = [Experiment(id=f"c{i}", config=longer(seed=i, max_steps=400)) for i in range(2)]
    req = request(stack, "it-cancel", experiments, max_concurrency=2)
    jobs = JobSubmissionClient(stack.ray_dashboard_url)

    def live_jobs() -> list:
        run_ids = {f"it-cancel-c{i}" for i in range(2)}
        return [
            j
            for j in jobs.list_jobs()
            if (j.metadata or {}).get(RUN_ID_KEY) in run_ids and j.status in {JobStatus.PENDING, JobStatus.RUNNING}
        ]

    async def go() -> None:
        client = await connect(stack)
        handle = await client.start_workflow(
            CoordinatorWorkflow.run, req, id=req.experiment_id, task_queue=stack.orchestration_queue
        )
        await wait_until(lambda: len(live_jobs()) == 2, 240, "both Ray jobs to run")
        await handle.cancel()
        with pytest.raises(WorkflowFailureError):
            await wait_for_result(handle)
        for i in range(2):
            desc = await client.get_workflow_handle(f"it-cancel-c{i}").describe()
            assert desc.status is not None and desc.status.name == "CANCELED", desc.status

    run(go())
    assert live_jobs() == []  # the children waited for their activities to stop the jobs before closing
