"""What every ttrain Ray job shares: the spec, resuming, progress, checkpoint reports, and the driver's `main`.

A job module (`text_job`, `image_job`) only supplies its per-worker training loop; starting, resuming and failing
work the same way for all of them, so the training activity treats every run alike.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable

import ray
import ray.train
import ray.train.torch

from ray_jobs import checkpointing, storage
from ray_jobs.specs import NONRETRYABLE_MARKER, PROGRESS_FILE, JobSpec

PROGRESS_EVERY_S = 2.0


def run_dir(spec: JobSpec) -> str:
    return storage.join(spec.storage_path, spec.run_id)


def resume_checkpoint(spec: JobSpec) -> tuple[ray.train.Checkpoint | None, int]:
    """The spec's checkpoint, unless Ray Train restarted this job's workers after committing a newer one."""
    given = ray.train.Checkpoint(spec.resume_from_uri) if spec.resume_from_uri else None
    latest = ray.train.get_checkpoint()
    if latest is not None and (latest_step := checkpoint_step(latest)) > spec.resume_from_step:
        return latest, latest_step
    if given is not None and checkpoint_step(given) != spec.resume_from_step:
        raise ValueError(f"checkpoint {spec.resume_from_uri} does not hold step {spec.resume_from_step}")
    return given, spec.resume_from_step


def checkpoint_step(checkpoint: ray.train.Checkpoint) -> int:
    with checkpoint.filesystem.open_input_stream(f"{checkpoint.path}/{checkpointing.STATE_FILE}") as f:
        return int(json.loads(f.read())["step"])


class ProgressWriter:
    """Rank 0's step between checkpoints, throttled: the activity heartbeats it, so `status` is live."""

    def __init__(self, spec: JobSpec) -> None:
        self.spec = spec
        self.last = 0.0

    def due(self, final: bool) -> bool:
        return final or time.monotonic() - self.last > PROGRESS_EVERY_S

    def write(self, step: int, steps: int, loss: float) -> None:
        self.last = time.monotonic()
        payload = {
            "ray_job_id": self.spec.ray_job_id,
            "step": step,
            "total_steps": steps,
            "loss": loss,
            "time": time.time(),
        }
        storage.write_json(storage.join(run_dir(self.spec), PROGRESS_FILE), payload)


def report(
    metrics: dict, rank: int, ray_job_id: str, save_weights: Callable[[str], None], optimizer, scheduler
) -> None:
    """Every worker calls report (it is a barrier); only rank 0 writes the files, which Ray commits as one dir."""
    name = checkpointing.checkpoint_dir_name(int(metrics["step"]))
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = None
        if rank == 0:
            save_weights(tmp)
            state = {**metrics, "ray_job_id": ray_job_id, "created_at": time.time()}
            checkpointing.save_training_state(tmp, optimizer, scheduler, state)
            checkpoint = ray.train.Checkpoint.from_directory(tmp)
        ray.train.report(metrics, checkpoint=checkpoint, checkpoint_dir_name=name)


def build_trainer(spec: JobSpec, train_loop: Callable[[dict], None]) -> ray.train.torch.TorchTrainer:
    scaling = spec.config.scaling
    return ray.train.torch.TorchTrainer(
        train_loop,
        train_loop_config=spec.model_dump(mode="json"),
        scaling_config=ray.train.ScalingConfig(
            num_workers=scaling.num_workers,
            use_gpu=scaling.use_gpu,
            resources_per_worker=scaling.resources_per_worker or None,
        ),
        run_config=ray.train.RunConfig(
            name=spec.run_id,
            storage_path=spec.storage_path,
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=spec.config.keep_last),
            failure_config=ray.train.FailureConfig(max_failures=int(os.environ.get("TTRAIN_RAY_MAX_FAILURES", "2"))),
        ),
    )


def is_nonretryable(exc: BaseException) -> bool:
    """Errors that a rerun would only repeat: bad data or config, missing files, out of memory."""
    text = f"{type(exc).__name__}: {exc}"
    return any(s in text for s in ("OutOfMemoryError", "ValueError", "FileNotFoundError", "KeyError"))


def main(train_loop: Callable[[dict], None], description: str, argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--spec", required=True, help="path or URI of a JobSpec JSON file")
    args = parser.parse_args(argv)
    spec = JobSpec.model_validate(storage.read_json(args.spec))
    ray.init(address=os.environ.get("RAY_ADDRESS", "auto"), log_to_driver=True)
    try:
        result = build_trainer(spec, train_loop).fit()
    except Exception as exc:
        if is_nonretryable(exc):
            print(f"{NONRETRYABLE_MARKER}: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
            return 3
        raise
    print(f"ttrain job {spec.run_id} finished: {result.metrics}", flush=True)
    return 0
