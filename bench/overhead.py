"""Orchestration overhead: one tiny fine-tune, run bare on Ray and through ttrain, A/B interleaved on one stack.

  bare          the Ray job ttrain itself submits (`python -m ray_jobs.text_job --spec FILE`: TorchTrainer.fit on
                ray_jobs.text_job.build_trainer(spec)), sent straight to the Ray Jobs API and polled until it ends;
  orchestrated  start_training -> CheckpointedTrainingWorkflow -> snapshot and train activities -> the same Ray job.

Both variants use one Ray head, one dataset snapshot (built once up front with orchestration.activities.snapshot.build;
the workflow's own snapshot activity finds and reuses it) and the same config, for each size in --steps.

Per run:
  wall        end to end: spec written + job submitted -> terminal state seen (bare), or
              start_training -> workflow result returned (orchestrated);
  throughput  steady state, from the checkpoints' train_state.json: (step_last - step_first) / (t_last - t_first) over
              their created_at stamps. The final checkpoint is left out: it also holds the held-out evaluation;
  fixed       wall - steps / throughput: start-up, snapshot, submission, polling, evaluation, shutdown.
Summary per size: mean fixed cost of each variant, and throughput ratio orchestrated / bare (goal >= 0.98).
Each run checkpoints --checkpoints times (every steps // N steps), so there are N - 1 intermediate stamps.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/overhead.py            # steps 20,80; 2 repeats; 1 warm-up pair
    HF_HUB_OFFLINE=1 .venv/bin/python bench/overhead.py --quick    # steps 10; 1 repeat; no warm-up

Prints a table per run and a summary; writes bench/out/overhead.json.
"""

from __future__ import annotations

import argparse
import statistics
from dataclasses import asdict, dataclass

import _stack  # sets the bench environment (ports, RAY_AUTH_MODE) before anything below imports ray

# isort: split


from orchestration.activities.snapshot import build as build_snapshot
from orchestration.ray_submission import RaySubmission
from orchestration.settings import Settings
from orchestration.types import DatasetSnapshot, SnapshotRequest
from ray_jobs import storage
from ray_jobs.specs import FineTuneConfig

POLL_S = 0.25  # how often the bare variant asks Ray whether its job has ended
GOAL_RATIO = 0.98


@dataclass
class Run:
    steps: int
    repeat: int
    variant: str  # "bare" | "orchestrated"
    run_id: str
    wall_s: float
    throughput: float  # steps/s between the first and last intermediate checkpoint
    fixed_s: float
    checkpoints_used: int


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", default="20,80", help="comma-separated run sizes in optimizer steps (default 20,80)")
    p.add_argument("--repeats", type=int, default=2, help="A/B pairs per size (default 2)")
    p.add_argument("--checkpoints", type=int, default=5, help="checkpoints per run (default 5; at least 3)")
    p.add_argument("--warmup", type=int, default=1, help="unreported A/B pairs first, at the smallest size")
    p.add_argument("--quick", action="store_true", help="steps 10, 1 repeat, no warm-up: proves the bench works")
    p.add_argument("--keep-home", action="store_true", help="keep the temp TTRAIN_HOME (logs, storage)")
    args = p.parse_args()
    if args.quick:
        args.steps, args.repeats, args.warmup = "10", 1, 0
    if args.checkpoints < 3:
        p.error("--checkpoints must be at least 3 (two intermediate stamps give one interval)")
    return args


def config_for(steps: int, checkpoints: int) -> FineTuneConfig:
    return _stack.bench_config(max_steps=steps, checkpoint_every_steps=max(1, steps // checkpoints), keep_last=1000)


# -----------------------------------------------------------------------------------------------------------------
# the two variants


def throughput(settings: Settings, run_id: str, total_steps: int) -> tuple[float, int]:
    """Steady-state steps/s from the intermediate checkpoints' created_at stamps; (nan, n) if fewer than two."""
    mid = [s for s in _stack.checkpoint_states(settings, run_id) if s["step"] < total_steps]
    if len(mid) < 2:
        return float("nan"), len(mid)
    first, last = mid[0], mid[-1]
    return (last["step"] - first["step"]) / (last["created_at"] - first["created_at"]), len(mid)


# -----------------------------------------------------------------------------------------------------------------
# the benchmark


def measure(
    settings: Settings,
    ray: RaySubmission,
    snap: DatasetSnapshot,
    steps: int,
    repeat: int,
    variant: str,
    args: argparse.Namespace,
) -> Run:
    run_id = f"ovh-{steps}s-r{repeat}-{variant}"
    config = config_for(steps, args.checkpoints)
    if variant == "bare":
        wall = _stack.bare_run(settings, ray, run_id, config, snap)
    else:
        wall = _stack.orchestrated_run(settings, run_id, config, snap)[0]
    thr, used = throughput(settings, run_id, steps)
    storage.delete_dir(str(_stack.run_dir(settings, run_id)))  # ~200 MB a checkpoint: keep the disk clear
    run = Run(steps, repeat, variant, run_id, wall, thr, wall - steps / thr, used)
    _stack.log(f"{run_id}: wall {wall:.1f}s  {thr:.2f} steps/s  fixed {run.fixed_s:.1f}s")
    return run


def summarize(runs: list[Run]) -> list[dict]:
    summary = []
    for steps in sorted({r.steps for r in runs}):
        bare = [r for r in runs if r.steps == steps and r.variant == "bare"]
        orch = [r for r in runs if r.steps == steps and r.variant == "orchestrated"]
        thr_bare = statistics.mean(r.throughput for r in bare)
        thr_orch = statistics.mean(r.throughput for r in orch)
        summary.append(
            {
                "steps": steps,
                "repeats": len(bare),
                "fixed_bare_s": statistics.mean(r.fixed_s for r in bare),
                "fixed_orchestrated_s": statistics.mean(r.fixed_s for r in orch),
                "wall_bare_s": statistics.mean(r.wall_s for r in bare),
                "wall_orchestrated_s": statistics.mean(r.wall_s for r in orch),
                "throughput_bare": thr_bare,
                "throughput_orchestrated": thr_orch,
                "throughput_ratio": thr_orch / thr_bare,
                "meets_goal": thr_orch / thr_bare >= GOAL_RATIO,
            }
        )
    return summary


def main() -> None:
    args = parse_args()
    sizes = [int(s) for s in args.steps.split(",")]
    runs: list[Run] = []
    with _stack.running_stack(keep_home=args.keep_home) as settings:
        ray = RaySubmission(settings.ray_address)
        # one snapshot for every run: the dataset part of the config is the same for all sizes
        req = SnapshotRequest(run_id="bench-snapshot", config=config_for(10, 5), storage_uri=settings.storage_uri)
        snap = build_snapshot(req)
        _stack.log(f"snapshot {snap.snapshot_id}: {snap.manifest.num_train} train rows")
        for i in range(args.warmup):
            for variant in ("bare", "orchestrated"):
                measure(settings, ray, snap, min(sizes), -1 - i, variant, args)
        for steps in sizes:
            for repeat in range(args.repeats):
                for variant in ("bare", "orchestrated"):  # A/B/A/B: drift in the machine hits both alike
                    runs.append(measure(settings, ray, snap, steps, repeat, variant, args))

    summary = summarize(runs)
    _stack.print_table(
        "overhead: runs",
        ["steps", "repeat", "variant", "wall s", "steps/s", "fixed s", "ckpts used"],
        [(r.steps, r.repeat, r.variant, r.wall_s, r.throughput, r.fixed_s, r.checkpoints_used) for r in runs],
    )
    _stack.print_table(
        f"overhead: summary (means; goal throughput ratio >= {GOAL_RATIO})",
        [
            "steps",
            "repeats",
            "fixed bare s",
            "fixed orch s",
            "added s",
            "bare steps/s",
            "orch steps/s",
            "ratio",
            "goal",
        ],
        [
            (
                s["steps"],
                s["repeats"],
                s["fixed_bare_s"],
                s["fixed_orchestrated_s"],
                s["fixed_orchestrated_s"] - s["fixed_bare_s"],
                s["throughput_bare"],
                s["throughput_orchestrated"],
                f"{s['throughput_ratio']:.3f}",
                "ok" if s["meets_goal"] else "MISSED",
            )
            for s in summary
        ],
    )
    path = _stack.write_results(
        "overhead",
        {"environment": _stack.environment(args), "runs": [asdict(r) for r in runs], "summary": summary},
    )
    print(f"results: {path}")


if __name__ == "__main__":
    main()
