"""The fault matrix: every kind of work under every fault, on the real stack, and what survived.

Work (tiny, on CPU; heartbeat timeout 5 s):
  run          one text fine-tune: 60 steps, a checkpoint every 10
  experiments  a coordinator of 2 such runs (different learning rates), each trained then evaluated
  sweep        a ladder sweep with the real trainer: 3 trials, rungs at 10 and 30 steps, eta 3
  image        a Fashion-MNIST run with 2 Ray Train workers (gloo): 60 steps, a checkpoint every 10
Faults, each delivered once the work's first checkpoint is committed:
  worker-sigkill         SIGKILL of the training worker, restarted at once
  worker-sigterm         SIGTERM of the training worker (a deploy, `ttrain down`), restarted at once
  orchestration-sigkill  SIGKILL of the orchestration worker (workflows), restarted at once
  ray-head-sigkill       SIGKILL of the Ray head's whole process group (jobs included), then the head again
  temporal-sigkill       SIGKILL of the Temporal dev server, then the server again over its SQLite file
  jobs-api-down          the Ray Jobs API hung (dashboard SIGSTOPped) for --outage-s seconds (default 120)
  write-fails-once       the next checkpoint's upload fails once (a file where its directory must go)
  diverged               the work carries a configuration whose loss becomes NaN (no injection)
Per cell: the outcome (completed; for `diverged`, failed with the right one-line reason where the work is one
run, else the diverged part failed alone and the rest completed), steps recomputed (summed over the work's
trainings), duplicate trainings (a training workflow id with more than one execution that did not continue as
new), Ray jobs still live at the end (orphans), and wall time lost against the same work without a fault.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/faults.py                      # the whole matrix (about an hour)
    HF_HUB_OFFLINE=1 .venv/bin/python bench/faults.py --work run --faults worker-sigterm,jobs-api-down

Prints the table; writes bench/out/faults.json.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

import _stack  # sets the bench environment (ports, RAY_AUTH_MODE) before anything below imports ray

# isort: split

from temporalio.client import Client, WorkflowExecutionStatus, WorkflowFailureError, WorkflowHandle

from cluster import local_stack
from orchestration.client import connect
from orchestration.errors import root_message
from orchestration.ray_submission import RaySubmission
from orchestration.settings import Settings
from orchestration.sweeps.models import SweepSpec, SweepState
from orchestration.types import (
    CoordinatorRequest,
    CoordinatorResult,
    Experiment,
    RunOptions,
    RunStatus,
    TrainingRequest,
    TrainingResult,
)
from orchestration.workflows.coordinator import CoordinatorWorkflow
from orchestration.workflows.sweep import SweepWorkflow
from orchestration.workflows.training import CheckpointedTrainingWorkflow
from ray_jobs.outcome import job_dir
from ray_jobs.specs import FineTuneConfig, ImageTrainConfig

FAULTS = [
    "worker-sigkill",
    "worker-sigterm",
    "orchestration-sigkill",
    "ray-head-sigkill",
    "temporal-sigkill",
    "jobs-api-down",
    "write-fails-once",
    "diverged",
]
RESULT_TYPES = {"run": TrainingResult, "image": TrainingResult, "experiments": CoordinatorResult, "sweep": SweepState}
DIVERGE = {"lr": 1.0, "weight_decay": 100.0, "warmup_ratio": 0.0}  # AdamW's decay outgrows the weights: NaN by ~step 5
# batch norm keeps the image net finite at lr 10 alone; decay of lr x wd = 1,000 per step blows the head up by ~step 5
DIVERGE_IMAGE = {"lr": 10.0, "weight_decay": 100.0, "warmup_ratio": 0.0}


@dataclass
class Cell:
    work: str
    fault: str
    outcome: str
    ok: bool
    steps_recomputed: int
    duplicates: int
    orphans: int
    wall_s: float
    wall_lost_s: float | None = None


# -----------------------------------------------------------------------------------------------------------------
# the work


def text(**kw) -> FineTuneConfig:
    base = {
        "num_hidden_layers": 1,
        "dataset": {"max_rows": 900},
        "max_seq_length": 64,
        "batch_size": 8,
        "max_steps": 60,
        "checkpoint_every_steps": 10,
        "keep_last": 50,
    }
    return FineTuneConfig.model_validate({**base, **kw})


def image(**kw) -> ImageTrainConfig:
    base = {
        "dataset": "fashion-mnist",
        "max_train_rows": 4096,
        "width": 8,
        "batch_size": 64,
        "max_steps": 60,
        "checkpoint_every_steps": 10,
        "lr": 0.05,
        "scaling": {"num_workers": 2},
    }
    return ImageTrainConfig.model_validate({**base, **kw})


async def start(client: Client, s: Settings, work: str, wid: str, diverged: bool) -> WorkflowHandle:
    opts = RunOptions(storage_uri=s.storage_uri, training_queue=s.training_queue, heartbeat_timeout_s=5)
    q = s.orchestration_queue
    if work in ("run", "image"):
        cfg = (
            (image(**DIVERGE_IMAGE) if diverged else image())
            if work == "image"
            else text(**(DIVERGE if diverged else {}))
        )
        req = TrainingRequest(run_id=wid, config=cfg, options=opts)
        return await client.start_workflow(CheckpointedTrainingWorkflow.run, req, id=wid, task_queue=q)
    if work == "experiments":
        exps = [
            Experiment(id="a", config=text(lr=1e-4)),
            Experiment(id="b", config=text(**DIVERGE) if diverged else text(lr=3e-4)),
        ]
        req = CoordinatorRequest(experiment_id=wid, experiments=exps, options=opts, run_cache=False)
        return await client.start_workflow(CoordinatorWorkflow.run, req, id=wid, task_queue=q)
    space = {"weight_decay": {"type": "choice", "values": [100.0, 0.01]}} if diverged else {
        "lr": {"type": "loguniform", "low": 1e-5, "high": 1e-3}}  # fmt: skip
    spec = SweepSpec(
        id=wid,
        strategy="ladder",
        ladder={"min_steps": 10, "max_steps": 30, "eta": 3},
        space={"params": space},
        base=text(max_steps=None, checkpoint_every_steps=5, **({"lr": 1.0, "warmup_ratio": 0.0} if diverged else {})),
        trials=3,
        max_concurrency=2,
        seed=0,
    )
    return await client.start_workflow(SweepWorkflow.run, SweepState(spec=spec, options=opts), id=wid, task_queue=q)


def judge(work: str, diverged: bool, result: object, error: str | None) -> tuple[bool, str]:
    """Did the work end as it should have: completed, or (diverged) failed exactly where it diverged."""
    if work in ("run", "image"):
        if diverged:
            return bool(error and error.startswith("loss became")), f"failed: {error}" if error else "completed?!"
        return error is None, "completed" if error is None else f"failed: {error}"
    if error is not None:
        return False, f"failed: {error}"
    rows = result.rows if work == "experiments" else result.trials
    failed = [getattr(r, "error", None) for r in rows if r.state == "failed"]
    if diverged:
        ok = len(failed) >= 1 and all(f and f.startswith("loss became") for f in failed)
        return ok, f"completed; diverged part failed alone ({failed[0] if failed else 'none failed?!'})"
    return not failed, "completed" if not failed else f"completed with failures: {failed}"


# -----------------------------------------------------------------------------------------------------------------
# looking at it


async def trainings(client: Client, wid: str) -> list:
    query = f"WorkflowType = 'CheckpointedTrainingWorkflow' AND WorkflowId STARTS_WITH '{wid}'"
    return [wf async for wf in client.list_workflows(query)]


async def statuses(client: Client, wid: str) -> list[RunStatus]:
    ids = sorted({wf.id for wf in await trainings(client, wid)})
    return [await client.get_workflow_handle(i).query(CheckpointedTrainingWorkflow.status) for i in ids]


async def first_checkpoint(client: Client, wid: str, timeout: float = 300) -> RunStatus:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            for s in await statuses(client, wid):
                if s.checkpoints and s.ray_job_id:
                    return s
        await asyncio.sleep(0.5)
    raise TimeoutError(f"{wid}: no checkpoint within {timeout:.0f}s")


def dashboard_pid(s: Settings) -> int:
    port = s.ray_dashboard_url.rsplit(":", 1)[1].encode()
    for proc in Path("/proc").iterdir():
        with contextlib.suppress(OSError):
            argv = (proc / "cmdline").read_bytes().split(b"\0") if proc.name.isdigit() else []
            if any(a.endswith(b"dashboard/dashboard.py") for a in argv) and b"--port=" + port in argv:
                return int(proc.name)
    raise RuntimeError("no Ray dashboard process")


def kill_and_wait(pid: int | None, sig: signal.Signals = signal.SIGKILL, group: bool = False) -> None:
    if pid is None:
        return
    (os.killpg if group else os.kill)(pid, sig)
    deadline = time.monotonic() + 30
    while local_stack.pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.2)


async def inject(fault: str, s: Settings, first: RunStatus, outage_s: float) -> None:
    if fault == "worker-sigkill":
        kill_and_wait(local_stack.read_pid(s, "worker-training"))
        local_stack.start_worker(s, "training")
    elif fault == "worker-sigterm":
        local_stack.stop(s, "worker-training")
        local_stack.start_worker(s, "training")
    elif fault == "orchestration-sigkill":
        kill_and_wait(local_stack.read_pid(s, "worker-orchestration"))
        local_stack.start_worker(s, "orchestration")
    elif fault == "ray-head-sigkill":
        kill_and_wait(local_stack.read_pid(s, "ray"), group=True)
        await asyncio.sleep(3)
        local_stack.start_ray(s, num_cpus=4)
    elif fault == "temporal-sigkill":
        kill_and_wait(local_stack.read_pid(s, "temporal"))
        await asyncio.sleep(2)
        local_stack.start_temporal(s)
    elif fault == "jobs-api-down":
        pid = dashboard_pid(s)
        os.kill(pid, signal.SIGSTOP)
        try:
            await asyncio.sleep(outage_s)
        finally:
            os.kill(pid, signal.SIGCONT)
    elif fault == "write-fails-once":
        # the next checkpoint (a fresh run's first one is one interval in: 10 steps, or 5 in the sweep, whose rung-0
        # segments end at step 10)
        blocker = Path(job_dir(os.path.join(s.storage_uri, "runs", first.run_id), first.ray_job_id))
        blocker /= f"step_{first.step + first.checkpoints[0].step:08d}"
        blocker.parent.mkdir(parents=True, exist_ok=True)
        if blocker.exists():
            _stack.log(f"{first.run_id}: {blocker.name} was written before the fault could be placed")
        else:
            blocker.write_text("blocks the upload")


async def cell(s: Settings, work: str, fault: str | None, index: int, outage_s: float) -> Cell:
    wid = f"fm-{work}-{fault or 'none'}-{index}"
    diverged = fault == "diverged"
    client = await connect(s)
    t0 = time.monotonic()
    handle = await start(client, s, work, wid, diverged)
    if fault not in (None, "diverged"):
        first = await first_checkpoint(client, wid)
        _stack.log(f"{wid}: injecting {fault} after step {first.step}")
        await inject(fault, s, first, outage_s)
        client = await connect(s)  # a restarted Temporal server drops every earlier connection
    result, error = None, None
    try:
        result = await client.get_workflow_handle(handle.id, result_type=RESULT_TYPES[work]).result()
    except WorkflowFailureError as exc:
        error = root_message(exc)  # what `ttrain` prints after "failed: "
    wall = time.monotonic() - t0
    ok, outcome = judge(work, diverged, result, error)
    runs = await trainings(client, wid)
    per_id = Counter(wf.id for wf in runs if wf.status != WorkflowExecutionStatus.CONTINUED_AS_NEW)
    recomputed = sum(a.steps_recomputed for st in await statuses(client, wid) for a in st.attempts)
    orphans = sum(len(RaySubmission(s.ray_address).run_jobs(wf_id)) for wf_id in {wf.id for wf in runs} | {wid})
    c = Cell(work, fault or "none", outcome, ok, recomputed, sum(n - 1 for n in per_id.values()), orphans, wall)
    _stack.log(f"{wid}: {c}")
    return c


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work", default="run,experiments,sweep,image")
    parser.add_argument("--faults", default=",".join(FAULTS))
    parser.add_argument("--outage-s", type=float, default=120.0)
    args = parser.parse_args()
    works, faults = args.work.split(","), args.faults.split(",")
    cells: list[Cell] = []
    with _stack.running_stack(num_cpus=4) as s:
        for work in works:
            baseline = asyncio.run(cell(s, work, None, 0, args.outage_s))
            cells.append(baseline)
            for i, fault in enumerate(faults, start=1):
                c = asyncio.run(cell(s, work, fault, i, args.outage_s))
                c.wall_lost_s = c.wall_s - baseline.wall_s
                cells.append(c)
    _stack.print_table(
        "fault matrix: tiny CPU work on the real stack (Temporal dev server, Ray head, ttrain workers)",
        ["work", "fault", "ok", "outcome", "steps recomputed", "duplicates", "orphan jobs", "wall s", "wall lost s"],
        [
            [
                c.work,
                c.fault,
                "yes" if c.ok else "NO",
                c.outcome[:70],
                c.steps_recomputed,
                c.duplicates,
                c.orphans,
                c.wall_s,
                c.wall_lost_s,
            ]
            for c in cells
        ],
    )
    path = _stack.write_results(
        "faults", {"environment": _stack.environment(args), "cells": [asdict(c) for c in cells]}
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
