"""Parallel experiments: K tiny fine-tunes through the CoordinatorWorkflow, against the same K one after another.

Both modes run on one stack (Ray head with num_cpus = K + 1, so K single-worker trainings fit at once) and train on
one dataset snapshot, built once up front. The K configs differ only in lr (so they share that snapshot, and the
run cache could not dedupe them; it is off anyway):
  parallel    one CoordinatorWorkflow, max_concurrency=K, run_cache=False: per experiment a child
              CheckpointedTrainingWorkflow, then a child EvaluationWorkflow;
  sequential  per config, start_training + handle.result(), then the same EvaluationWorkflow, before the next starts
              (the evaluation is there so that both modes do the same work).
The parallel mode runs first, so it bears any cold-start cost (file cache, imports): the ratio errs low, not high.

Per experiment: train s = TrainingResult.wall_time_s (the training workflow's start to its result, as
ExperimentRow.train_time_s), eval s = the EvaluationWorkflow's close time - start time (from Temporal).
Per mode:
  wall               parallel: start_workflow -> coordinator result; sequential: first start_training -> last
                     evaluation result;
  overhead/exp       (wall - critical path) / K, where the critical path is max(train + eval) over experiments in
                     parallel mode and sum(train + eval) in sequential mode: time the orchestration adds beyond the
                     experiments' own workflows (coordinator snapshot activities, child starts, waits, polling);
  ratio              sequential wall / parallel wall.
On a machine with fewer cores than K trainings need, the parallel trainings contend for cores (each train s grows),
so the ratio measures orchestration concurrency, not hardware scaling.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/parallel.py            # K=3, 20 steps
    HF_HUB_OFFLINE=1 .venv/bin/python bench/parallel.py --quick    # K=2, 10 steps

Prints a table per experiment and a summary; writes bench/out/parallel.json.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
from dataclasses import asdict, dataclass

import _stack  # sets the bench environment (ports, RAY_AUTH_MODE) before anything below imports ray

# isort: split

from temporalio.client import Client

from orchestration.activities.snapshot import build as build_snapshot
from orchestration.api import start_training
from orchestration.client import connect
from orchestration.settings import Settings
from orchestration.types import (
    CoordinatorRequest,
    CoordinatorResult,
    EvaluationRequest,
    EvaluationResult,
    Experiment,
    RunOptions,
    SnapshotRequest,
    TrainingResult,
)
from orchestration.workflows.coordinator import CoordinatorWorkflow
from orchestration.workflows.inference import EvaluationWorkflow
from ray_jobs import storage
from ray_jobs.specs import FineTuneConfig

CORES_NOTE = (
    "note: {cpus} CPU cores here; the {k} parallel CPU trainings contend for them, so the ratio measures "
    "orchestration concurrency, not hardware scaling."
)


@dataclass
class ExpRun:
    mode: str  # "parallel" | "sequential"
    experiment: str
    run_id: str
    lr: float
    train_s: float
    eval_s: float
    accuracy: float | None


@dataclass
class ModeSummary:
    mode: str
    experiments: int
    wall_s: float
    mean_train_s: float
    mean_eval_s: float
    critical_path_s: float
    overhead_per_exp_s: float


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--experiments", type=int, default=3, help="K experiments (default 3)")
    p.add_argument("--steps", type=int, default=20, help="optimizer steps per experiment (default 20)")
    p.add_argument("--quick", action="store_true", help="K=2, 10 steps: proves the bench works")
    p.add_argument("--keep-home", action="store_true", help="keep the temp TTRAIN_HOME (logs, storage)")
    args = p.parse_args()
    if args.quick:
        args.experiments, args.steps = 2, 10
    if args.experiments < 1 or args.steps < 1:
        p.error("--experiments and --steps must be at least 1")
    return args


def configs(k: int, steps: int) -> list[FineTuneConfig]:
    # distinct lrs, same seed and dataset: one shared snapshot, K distinct run-cache keys
    every = max(1, steps // 2)
    return [_stack.bench_config(lr=1e-4 * 2**i, max_steps=steps, checkpoint_every_steps=every) for i in range(k)]


async def workflow_seconds(client: Client, workflow_id: str) -> float:
    desc = await client.get_workflow_handle(workflow_id).describe()
    if desc.start_time is None or desc.close_time is None:
        raise RuntimeError(f"workflow {workflow_id} has not closed")
    return (desc.close_time - desc.start_time).total_seconds()


async def run_parallel(settings: Settings, cfgs: list[FineTuneConfig]) -> tuple[float, list[ExpRun]]:
    client = await connect(settings)
    req = CoordinatorRequest(
        experiment_id="bench-par",
        experiments=[Experiment(id=f"e{i}", config=c) for i, c in enumerate(cfgs)],
        max_concurrency=len(cfgs),
        run_cache=False,
        options=RunOptions(storage_uri=settings.storage_uri, training_queue=settings.training_queue),
    )
    t0 = time.monotonic()
    handle = await client.start_workflow(
        CoordinatorWorkflow.run, req, id=req.experiment_id, task_queue=settings.orchestration_queue
    )
    result: CoordinatorResult = await handle.result()
    wall = time.monotonic() - t0
    lrs = {e.id: e.config.lr for e in req.experiments}
    runs = []
    for row in sorted(result.rows, key=lambda r: r.experiment):
        if row.state != "completed" or row.train_time_s is None:
            raise RuntimeError(f"experiment {row.experiment} ended {row.state}: {row.error}")
        eval_s = await workflow_seconds(client, f"{row.run_id}-eval")
        acc = row.metrics.get("accuracy")
        runs.append(ExpRun("parallel", row.experiment, row.run_id, lrs[row.experiment], row.train_time_s, eval_s, acc))
    return wall, runs


async def run_sequential(settings: Settings, cfgs: list[FineTuneConfig]) -> tuple[float, list[ExpRun]]:
    client = await connect(settings)
    runs = []
    t0 = time.monotonic()
    for i, cfg in enumerate(cfgs):
        run_id = f"bench-seq-e{i}"
        handle = await start_training(client, settings, run_id, cfg)
        result: TrainingResult = await handle.result()
        evaluation: EvaluationResult = await client.execute_workflow(
            EvaluationWorkflow.run,
            EvaluationRequest(run_id=run_id),
            id=f"{run_id}-eval",
            task_queue=settings.orchestration_queue,
        )
        acc = evaluation.report.get("accuracy")
        runs.append(ExpRun("sequential", f"e{i}", run_id, cfg.lr, result.wall_time_s, 0.0, acc))
    wall = time.monotonic() - t0
    for run in runs:  # after the clock stopped: describe() calls are not part of the sequential wall
        run.eval_s = await workflow_seconds(client, f"{run.run_id}-eval")
    return wall, runs


def summarize(mode: str, wall: float, runs: list[ExpRun]) -> ModeSummary:
    spans = [r.train_s + r.eval_s for r in runs]
    critical = max(spans) if mode == "parallel" else sum(spans)
    return ModeSummary(
        mode=mode,
        experiments=len(runs),
        wall_s=wall,
        mean_train_s=statistics.mean(r.train_s for r in runs),
        mean_eval_s=statistics.mean(r.eval_s for r in runs),
        critical_path_s=critical,
        overhead_per_exp_s=(wall - critical) / len(runs),
    )


def main() -> None:
    args = parse_args()
    k = args.experiments
    cfgs = configs(k, args.steps)
    # the training worker must accept K concurrent activities (it inherits this from our environment)
    os.environ["TTRAIN_MAX_CONCURRENT_TRAININGS"] = str(max(4, k))
    summaries: list[ModeSummary] = []
    runs: list[ExpRun] = []
    with _stack.running_stack(num_cpus=k + 1, keep_home=args.keep_home) as settings:
        snap = build_snapshot(
            SnapshotRequest(run_id="bench-snapshot", config=cfgs[0], storage_uri=settings.storage_uri)
        )
        _stack.log(f"snapshot {snap.snapshot_id}: {snap.manifest.num_train} train rows")
        for mode, fn in (("parallel", run_parallel), ("sequential", run_sequential)):
            _stack.log(f"{mode}: {k} experiments x {args.steps} steps")
            wall, mode_runs = asyncio.run(fn(settings, cfgs))
            for r in mode_runs:  # ~200 MB a checkpoint: keep the disk clear
                storage.delete_dir(str(_stack.run_dir(settings, r.run_id)))
            summaries.append(summarize(mode, wall, mode_runs))
            runs.extend(mode_runs)
            _stack.log(f"{mode}: wall {wall:.1f}s")

    par, seq = summaries
    ratio = seq.wall_s / par.wall_s
    _stack.print_table(
        "parallel: experiments",
        ["mode", "experiment", "run id", "lr", "train s", "eval s", "accuracy"],
        [(r.mode, r.experiment, r.run_id, f"{r.lr:.0e}", r.train_s, r.eval_s, r.accuracy) for r in runs],
    )
    _stack.print_table(
        f"parallel: summary (K={k}, {args.steps} steps; overhead/exp = (wall - critical path) / K)",
        ["mode", "K", "wall s", "mean train s", "mean eval s", "critical path s", "overhead/exp s"],
        [
            (s.mode, s.experiments, s.wall_s, s.mean_train_s, s.mean_eval_s, s.critical_path_s, s.overhead_per_exp_s)
            for s in summaries
        ],
    )
    print(f"wall-time ratio sequential / parallel: {ratio:.2f}  (ideal with free cores: {k})")
    note = CORES_NOTE.format(cpus=os.cpu_count(), k=k)
    print(note)
    path = _stack.write_results(
        "parallel",
        {
            "environment": _stack.environment(args),
            "runs": [asdict(r) for r in runs],
            "summary": [asdict(s) for s in summaries],
            "ratio_sequential_over_parallel": ratio,
            "note": note,
        },
    )
    print(f"results: {path}")


if __name__ == "__main__":
    main()
