"""Custom-loop overhead: the MLP example's training under plain Ray Train and through ttrain, A/B on one stack.

  bare          bench/_bare_mlp.py: the same model, data, batches and checkpoints as a Ray Train user's own
                `TorchTrainer(...).fit()` script, submitted to the Ray Jobs API and polled until it ends;
  ttrain        `kind: custom` with `entrypoint: ray_jobs.examples.mlp:train_func` through start_training:
                workflow, activity, custom_job (ledger, commit records, metric history, heartbeats) and the loop.

Per run: wall (submitted -> ended, seen by the client), the loop's own samples/s (global samples a second of its
training steps alone, by the slowest rank's clock, reported with its last checkpoint), and fixed = wall - training
time: start-up, submission, polling, reports, evaluation, checkpoint saves, shutdown. Both on 2 Ray Train workers;
each size A/B/A/B so drift hits both alike.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/custom_overhead.py            # steps 100,400; 2 repeats
    HF_HUB_OFFLINE=1 .venv/bin/python bench/custom_overhead.py --quick    # steps 100; 1 repeat

Prints a table per run and a summary; writes bench/out/custom_overhead.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import _stack  # sets the bench environment (ports, RAY_AUTH_MODE) before anything below imports ray

# isort: split

from ray.job_submission import JobStatus, JobSubmissionClient

from orchestration.settings import Settings
from ray_jobs.specs import CustomTrainConfig

BATCH, HIDDEN, WORKERS, CHECKPOINTS = 256, 256, 2, 4
BARE_SCRIPT = Path(__file__).resolve().parent / "_bare_mlp.py"


@dataclass
class Run:
    steps: int
    repeat: int
    variant: str  # "bare" | "ttrain"
    wall_s: float
    samples_per_s: float
    fixed_s: float
    eval_accuracy: float


def config_for(steps: int) -> CustomTrainConfig:
    return CustomTrainConfig(
        entrypoint="ray_jobs.examples.mlp:train_func",
        max_steps=steps,
        checkpoint_every_steps=max(1, steps // CHECKPOINTS),
        train_loop_config={"lr": 0.01, "hidden": HIDDEN, "batch_size": BATCH},
        scaling={"num_workers": WORKERS},
    )


def bare(settings: Settings, name: str, steps: int) -> tuple[float, dict]:
    client = JobSubmissionClient(settings.ray_address)
    every = max(1, steps // CHECKPOINTS)
    storage = str(Path(settings.storage_uri) / "bare")
    command = [sys.executable, str(BARE_SCRIPT), "--steps", steps, "--every", every, "--workers", WORKERS]
    command += ["--batch-size", BATCH, "--hidden", HIDDEN, "--storage", storage, "--name", name]
    t0 = time.monotonic()
    job = client.submit_job(entrypoint=" ".join(map(str, command)), submission_id=name)
    while not (status := client.get_job_status(job)).is_terminal():
        time.sleep(0.25)
    wall = time.monotonic() - t0
    logs = client.get_job_logs(job)
    if status != JobStatus.SUCCEEDED:
        raise RuntimeError(f"{name} ended {status.value}:\n{logs[-3000:]}")
    line = next(ln for ln in logs.splitlines() if ln.startswith("BARE_RESULT "))
    return wall, json.loads(line.removeprefix("BARE_RESULT "))


def measure(settings: Settings, steps: int, repeat: int, variant: str) -> Run:
    name = f"cov-{steps}s-r{repeat}-{variant}"
    if variant == "bare":
        wall, metrics = bare(settings, name, steps)
    else:
        wall, result = _stack.orchestrated_run(settings, name, config_for(steps), None)
        metrics = result.metrics
    training_s = BATCH * steps / metrics["samples_per_s"]
    run = Run(steps, repeat, variant, wall, metrics["samples_per_s"], wall - training_s, metrics["eval_accuracy"])
    _stack.log(f"{name}: wall {wall:.1f}s  {run.samples_per_s:.0f} samples/s  fixed {run.fixed_s:.1f}s")
    return run


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", default="100,400", help="comma-separated run sizes in optimizer steps")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--quick", action="store_true", help="steps 100, 1 repeat: proves the bench works")
    args = p.parse_args()
    if args.quick:
        args.steps, args.repeats = "100", 1
    sizes = [int(s) for s in args.steps.split(",")]
    runs: list[Run] = []
    with _stack.running_stack() as settings:
        measure(settings, min(sizes), -1, "bare")  # warm-up: the first job on a fresh head pays Ray's own start
        for steps in sizes:
            for repeat in range(args.repeats):
                for variant in ("bare", "ttrain"):
                    runs.append(measure(settings, steps, repeat, variant))

    _stack.print_table(
        "custom loop overhead: runs (2 Ray Train workers, MLP example)",
        ["steps", "repeat", "variant", "wall s", "samples/s", "fixed s", "accuracy"],
        [(r.steps, r.repeat, r.variant, r.wall_s, r.samples_per_s, r.fixed_s, r.eval_accuracy) for r in runs],
    )
    summary = []
    for steps in sizes:
        by = {v: [r for r in runs if r.steps == steps and r.variant == v] for v in ("bare", "ttrain")}
        mean = {v: {k: statistics.mean(getattr(r, k) for r in rs) for k in ("wall_s", "samples_per_s", "fixed_s")}
                for v, rs in by.items()}  # fmt: skip
        summary.append(
            {"steps": steps, "repeats": args.repeats, **{f"{v}_{k}": x for v in mean for k, x in mean[v].items()}}
        )
    _stack.print_table(
        "custom loop overhead: summary (means)",
        ["steps", "bare wall s", "ttrain wall s", "bare fixed s", "ttrain fixed s", "added s", "samples/s ratio"],
        [
            (
                s["steps"],
                s["bare_wall_s"],
                s["ttrain_wall_s"],
                s["bare_fixed_s"],
                s["ttrain_fixed_s"],
                s["ttrain_fixed_s"] - s["bare_fixed_s"],
                f"{s['ttrain_samples_per_s'] / s['bare_samples_per_s']:.3f}",
            )
            for s in summary
        ],
    )
    path = _stack.write_results(
        "custom_overhead",
        {"environment": _stack.environment(args), "runs": [asdict(r) for r in runs], "summary": summary},
    )
    print(f"results: {path}")


if __name__ == "__main__":
    main()
