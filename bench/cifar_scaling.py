"""Image training throughput: bare Ray Train vs ttrain-orchestrated, at 1 and N workers, side by side in one run.

  bare          the Ray job ttrain itself submits (`python -m ray_jobs.image_job --spec FILE`: TorchTrainer.fit),
                sent straight to the Ray Jobs API and polled until it ends;
  orchestrated  start_training -> CheckpointedTrainingWorkflow -> snapshot and train activities -> the same job.

Both use one stack, one snapshot and one config per worker count (strong scaling: the global batch is fixed).
Per run:
  images/s      measured inside the job on the training steps alone (the first 3 steps of each job left out);
  e2e images/s  images trained / wall time from submission (or start_training) to the end: start-up included.
Summary: per worker count, the orchestrated/bare ratio of each (goal >= 0.98), and per variant the scaling
efficiency (images/s per worker relative to 1 worker).

    .venv/bin/python bench/cifar_scaling.py                         # synthetic CIFAR-shaped, workers 1,2, 2 repeats
    .venv/bin/python bench/cifar_scaling.py --dataset fashion-mnist --workers 1,2 --repeats 1

On a GPU cluster add --gpu (one GPU per worker, bf16, channels_last) and raise --width/--rows/--epochs.
Prints the tables; writes bench/out/cifar_scaling.json.
"""

from __future__ import annotations

import argparse
import statistics
from dataclasses import asdict, dataclass

import _stack  # sets the bench environment (ports, RAY_AUTH_MODE) before anything below imports ray

# isort: split

from orchestration.activities.snapshot import build as build_snapshot
from orchestration.ray_submission import RaySubmission
from orchestration.types import SnapshotRequest
from ray_jobs.specs import ImageTrainConfig

GOAL_RATIO = 0.98


@dataclass
class Run:
    workers: int
    repeat: int
    variant: str
    run_id: str
    wall_s: float
    images_per_s: float
    e2e_images_per_s: float
    eval_accuracy: float


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--workers", default="1,2", help="comma-separated worker counts (default 1,2)")
    p.add_argument("--dataset", default="synthetic", choices=["synthetic", "fashion-mnist", "cifar10"])
    p.add_argument("--data", help="data_path for cifar10")
    p.add_argument("--rows", type=int, default=8192, help="training images (synthetic rows, or a subset)")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--width", type=int, default=16)
    p.add_argument("--arch", default="airbench", choices=["airbench", "resnet18"])
    p.add_argument("--gpu", action="store_true")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--num-cpus", type=int, default=4, help="CPUs the bench's Ray head advertises")
    p.add_argument("--keep-home", action="store_true")
    return p.parse_args()


def config_for(args: argparse.Namespace, workers: int) -> ImageTrainConfig:
    subset = {"synthetic_rows": args.rows} if args.dataset == "synthetic" else {"max_train_rows": args.rows}
    return ImageTrainConfig.model_validate(
        {
            "dataset": args.dataset,
            "data_path": args.data,
            **subset,
            "arch": args.arch,
            "width": args.width,
            "epochs": args.epochs,
            "batch_size": args.batch_size,
            "checkpoint_every_steps": 10_000,  # only the final checkpoint: the bench times training, not I/O
            "scaling": {"num_workers": workers, "use_gpu": args.gpu},
        }
    )


def measure(settings, ray, snap, args, workers: int, repeat: int, variant: str) -> Run:
    config = config_for(args, workers)
    run_id = f"cifar-{variant}-w{workers}-r{repeat}"
    if variant == "bare":
        wall = _stack.bare_run(settings, ray, run_id, config, snap)
        metrics = _stack.checkpoint_states(settings, run_id)[-1]
    else:
        wall, result = _stack.orchestrated_run(settings, run_id, config, snap)
        metrics = result.metrics
    images = metrics["step"] * config.batch_size
    run = Run(workers, repeat, variant, run_id, wall, metrics["images_per_s"], images / wall, metrics["eval_accuracy"])
    _stack.log(f"{run_id}: {run.images_per_s:.0f} images/s in the job, {run.e2e_images_per_s:.0f} end to end")
    return run


def summarize(runs: list[Run], counts: list[int]) -> list[dict]:
    def mean(workers: int, variant: str, field: str) -> float:
        return statistics.mean(getattr(r, field) for r in runs if r.workers == workers and r.variant == variant)

    base = {v: mean(counts[0], v, "images_per_s") / counts[0] for v in ("bare", "orchestrated")}
    out = []
    for n in counts:
        bare, orch = mean(n, "bare", "images_per_s"), mean(n, "orchestrated", "images_per_s")
        e2e_bare, e2e_orch = mean(n, "bare", "e2e_images_per_s"), mean(n, "orchestrated", "e2e_images_per_s")
        out.append(
            {
                "workers": n,
                "bare_images_per_s": bare,
                "orchestrated_images_per_s": orch,
                "ratio": orch / bare,
                "e2e_ratio": e2e_orch / e2e_bare,
                "efficiency_bare": bare / n / base["bare"],
                "efficiency_orchestrated": orch / n / base["orchestrated"],
                "meets_goal": orch / bare >= GOAL_RATIO,
            }
        )
    return out


def main() -> None:
    args = parse_args()
    counts = sorted(int(x) for x in args.workers.split(","))
    runs: list[Run] = []
    with _stack.running_stack(num_cpus=args.num_cpus, keep_home=args.keep_home) as settings:
        ray = RaySubmission(settings.ray_address)
        req = SnapshotRequest(run_id="bench-snapshot", config=config_for(args, 1), storage_uri=settings.storage_uri)
        snap = build_snapshot(req)
        _stack.log(f"snapshot {snap.snapshot_id}: {snap.manifest.num_train} {args.dataset} training images")
        for repeat in range(args.repeats):
            for n in counts:
                for variant in ("bare", "orchestrated"):  # A/B interleaved: drift hits both alike
                    runs.append(measure(settings, ray, snap, args, n, repeat, variant))
    summary = summarize(runs, counts)
    label = f"{args.dataset}{' (SYNTHETIC: throughput only)' if args.dataset == 'synthetic' else ''}"
    _stack.print_table(
        f"cifar scaling: runs ({label}, {args.arch} width {args.width}, global batch {args.batch_size})",
        ["run", "wall s", "images/s (job)", "images/s (e2e)", "test acc"],
        [(r.run_id, r.wall_s, r.images_per_s, r.e2e_images_per_s, r.eval_accuracy) for r in runs],
    )
    _stack.print_table(
        f"cifar scaling: summary (means; goal orchestrated/bare >= {GOAL_RATIO})",
        ["workers", "bare img/s", "orch img/s", "ratio", "e2e ratio", "eff bare", "eff orch", "goal"],
        [
            (
                s["workers"],
                s["bare_images_per_s"],
                s["orchestrated_images_per_s"],
                f"{s['ratio']:.3f}",
                f"{s['e2e_ratio']:.3f}",
                s["efficiency_bare"],
                s["efficiency_orchestrated"],
                "ok" if s["meets_goal"] else "MISSED",
            )
            for s in summary
        ],
    )
    path = _stack.write_results(
        "cifar_scaling",
        {"environment": _stack.environment(args), "runs": [asdict(r) for r in runs], "summary": summary},
    )
    print(f"results: {path}")


if __name__ == "__main__":
    main()
