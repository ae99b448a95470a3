"""Scale-up logic the workflow and the CLI share: the config at each worker count, whether it fits the cluster,
scaling efficiency, and the plot. Pure functions of data: the workflow runs them in Temporal's sandbox."""

from __future__ import annotations

from orchestration.types import ClusterCapacity, ScaleUpRequest, ScaleUpResult, ScaleUpRow
from ray_jobs.specs import CustomTrainConfig, ImageTrainConfig, ScalableConfig


def one_worker_batch(cfg: ScalableConfig) -> int | None:
    """A custom loop's batch is its own business: `train_loop_config.batch_size`, if it has one, is taken as the
    global batch (as the examples use it). None: ttrain does not know it, and a weak scale-up is refused."""
    if isinstance(cfg, ImageTrainConfig):
        return cfg.batch_size
    batch = cfg.train_loop_config.get("batch_size")
    return batch if isinstance(batch, int) and not isinstance(batch, bool) else None


def global_batch(req: ScaleUpRequest, workers: int) -> int | None:
    """Strong: the same global batch split over more workers. Weak: each worker keeps the one-worker batch.
    None: a custom loop whose batch ttrain does not know."""
    batch = one_worker_batch(req.config)
    return None if batch is None else batch * (workers if req.scaling == "weak" else 1)


def config_for(req: ScaleUpRequest, workers: int) -> ScalableConfig:
    base = req.config.model_dump()
    base["scaling"]["num_workers"] = workers
    if isinstance(req.config, ImageTrainConfig):
        return ImageTrainConfig.model_validate({**base, "batch_size": global_batch(req, workers)})
    if one_worker_batch(req.config) is not None:
        base["train_loop_config"]["batch_size"] = global_batch(req, workers)
    return CustomTrainConfig.model_validate(base)


def throughput(req: ScaleUpRequest, metrics: dict[str, float]) -> float | None:
    """Image runs measure images/s themselves; a custom loop reports `samples_per_s` with its checkpoints."""
    return metrics.get("images_per_s" if isinstance(req.config, ImageTrainConfig) else "samples_per_s")


def worker_needs(cfg: ScalableConfig) -> dict[str, float]:
    """What Ray Train reserves per worker: 1 CPU, 1 GPU with use_gpu, or what resources_per_worker says."""
    needs = {"CPU": 1.0, **({"GPU": 1.0} if cfg.scaling.use_gpu else {})}
    return {**needs, **cfg.scaling.resources_per_worker}


def does_not_fit(req: ScaleUpRequest, workers: int, capacity: ClusterCapacity) -> str | None:
    """Why this worker count cannot run on the cluster as it is (a reason to report instead of a job that hangs)."""
    batch = one_worker_batch(req.config)
    if req.scaling == "strong" and batch is not None and batch % workers:
        return f"global batch {batch} does not split over {workers} workers"
    for name, per_worker in worker_needs(config_for(req, workers)).items():
        have = capacity.resources.get(name, 0.0)
        if per_worker * workers > have:
            return f"needs {per_worker * workers:g} {name}, the cluster has {have:g}"
    return None


def with_efficiency(rows: list[ScaleUpRow]) -> tuple[list[ScaleUpRow], int | None]:
    """Efficiency = (throughput per worker) / (baseline throughput per worker); the baseline is the smallest count
    that completed, normally 1 worker."""
    done = [r for r in rows if r.state == "completed" and r.images_per_s]
    if not done:
        return rows, None
    base = min(done, key=lambda r: r.workers)
    per_worker = base.images_per_s / base.workers
    out = [
        r.model_copy(update={"efficiency": r.images_per_s / r.workers / per_worker}) if r in done else r for r in rows
    ]
    return out, base.workers


def plot_png(result: ScaleUpResult) -> bytes:
    """Throughput (with the ideal linear line) and efficiency against workers, side by side."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = [r for r in result.rows if r.state == "completed" and r.images_per_s]
    workers = [r.workers for r in done]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    left.plot(workers, [r.images_per_s for r in done], marker="o", label="measured")
    if done and result.baseline_workers:
        base = next(r for r in done if r.workers == result.baseline_workers)
        left.plot(
            workers, [base.images_per_s * w / base.workers for w in workers], ls="--", color="grey", label="linear"
        )
    right.plot(workers, [r.efficiency for r in done], marker="o")
    right.axhline(1.0, ls="--", color="grey")
    right.set_ylim(0, 1.2)
    left.set_ylim(bottom=0)
    left.legend()
    for ax, label in ((left, result.throughput), (right, "scaling efficiency")):
        if done:  # nothing completed (no count fitted the cluster): no log scale over no data
            ax.set_xscale("log", base=2)
        ax.set_xticks(workers or [1], [str(w) for w in workers] or ["1"])
        ax.set_xlabel("workers")
        ax.set_ylabel(label)
    data = f"{result.dataset}{' (SYNTHETIC: throughput only)' if result.synthetic else ''}"
    unfit = [str(r.workers) for r in result.rows if r.state == "does-not-fit"]
    note = f"; {', '.join(unfit)} workers do not fit the cluster" if unfit else ""
    fig.suptitle(f"scale-up {result.scaleup_id}: {result.scaling} scaling, {data}{note}")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()
