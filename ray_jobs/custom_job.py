"""The user's own Ray Train loop (`kind: custom`), made durable: the job ttrain submits for custom runs.

    python -m ray_jobs.custom_job --spec /path/or/uri/to/spec.json

The driver finds the entrypoint's module before any worker starts (a missing module fails the run at once, not after
a worker group is up); every worker imports it, binds its `ray_jobs.loop` context and calls the user's function with its
`train_loop_config`; and Ray Train's controller records every checkpoint it commits (`ReportRecorder`), which is how
the training activity mirrors them into the run's ledger, exactly as for ttrain's own jobs.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
import sys
import time
from collections.abc import Callable

import pyarrow.fs as pafs
import ray.train

from ray_jobs import job_runner, loop, storage
from ray_jobs.history import numeric
from ray_jobs.outcome import CommittedCheckpoint, InvalidJobInput, commit_record_uri, job_dir
from ray_jobs.specs import CustomTrainConfig, JobSpec

HISTORY_FLUSH_S = 30.0  # reports without a checkpoint reach the history at least this often (and at every checkpoint)


def entrypoint(cfg: CustomTrainConfig) -> Callable[[dict], None]:
    """Imported on each worker. Whatever stops the import (a missing attribute, a syntax error, a dependency the
    workers lack) would stop every attempt the same way: it fails the run at once."""
    module_name, _, attr = cfg.entrypoint.partition(":")
    try:
        function = getattr(importlib.import_module(module_name), attr)
    except Exception as exc:
        raise InvalidJobInput(
            f"entrypoint {cfg.entrypoint!r} cannot be imported: {type(exc).__name__}: {exc}"
        ) from None
    if not callable(function):
        raise InvalidJobInput(f"entrypoint {cfg.entrypoint!r} is not a function")
    return function


def check(spec: JobSpec) -> None:
    """The driver only finds the module, without importing it: its imports may need what only the workers have (a
    GPU library on a CPU-only head node), and importing would run its side effects once more."""
    assert isinstance(spec.config, CustomTrainConfig), "custom_job runs custom configs"
    module_name = spec.config.entrypoint.partition(":")[0]
    try:
        found = importlib.util.find_spec(module_name)
    except ImportError as exc:  # a parent package that does not import
        raise InvalidJobInput(f"entrypoint {spec.config.entrypoint!r}: {exc}") from None
    if found is None:
        raise InvalidJobInput(
            f"entrypoint {spec.config.entrypoint!r} cannot be imported: no module {module_name!r} "
            "(install it on the Ray nodes, or ship it with runtime_env.working_dir)"
        )


def train_loop_per_worker(spec_json: dict) -> None:
    spec = JobSpec.model_validate(spec_json)
    assert isinstance(spec.config, CustomTrainConfig)
    run = loop.bind(spec)
    entrypoint(spec.config)(dict(spec.config.train_loop_config))
    if run.last_step < run.stop_step:
        raise InvalidJobInput(
            f"the loop returned at step {run.last_step}, before step {run.stop_step}: train every step of "
            "ray_jobs.loop.current().steps()"
        )


class ReportRecorder(ray.train.UserCallback):
    """Runs in Ray Train's controller once every worker has reported. Every report's numbers go to the run's metric
    history (rank 0's, with its `step`); a reported checkpoint is persisted by then, so its record (step, metrics,
    content hash) is what the activity turns into a ledger entry."""

    def __init__(self, spec: JobSpec) -> None:
        self.spec = spec
        self.flushed = time.time()

    def after_report(self, run_context, metrics: list[dict], checkpoint: ray.train.Checkpoint | None) -> None:
        reported = metrics[0] if metrics else {}
        step = reported.get("step")
        if isinstance(step, int | float) and not isinstance(step, bool):
            writer = job_runner.job_history(self.spec)
            writer.add(int(step), reported)
            if checkpoint is not None or time.time() - self.flushed > HISTORY_FLUSH_S:
                writer.flush()
                self.flushed = time.time()
        if checkpoint is None:
            return
        if isinstance(step, float) and step.is_integer():
            step = int(step)
        if not isinstance(step, int) or isinstance(step, bool) or step < 1:
            raise InvalidJobInput(f"a checkpoint was reported with step {step!r}: report {{'step': N, ...}} with it")
        total = self.spec.config.max_steps or step
        numbers = numeric(reported)
        run_uri = job_runner.run_dir(self.spec)
        name = os.path.basename(checkpoint.path.rstrip("/"))
        record = CommittedCheckpoint(
            step=step,
            epoch=numbers.get("epoch", step / total),
            uri=storage.join(job_dir(run_uri, self.spec.ray_job_id), name),
            metrics={"total_steps": float(total), **numbers},
            content_hash=content_hash(checkpoint),
            created_at=time.time(),
            ray_job_id=self.spec.ray_job_id,
        )
        uri = commit_record_uri(run_uri, self.spec.ray_job_id, step)
        storage.write_json(uri, record.model_dump(mode="json"))
        job_runner.prune(self.spec)


def content_hash(checkpoint: ray.train.Checkpoint) -> str:
    """Over every file's relative path and size, listed where the checkpoint lives: the controller reads no bytes
    (a checkpoint of many GB must not hold up the next report, nor be downloaded to the controller's node)."""
    fs, root = checkpoint.filesystem, checkpoint.path.rstrip("/")
    infos = fs.get_file_info(pafs.FileSelector(root, recursive=True))
    digest = hashlib.sha256()
    for info in sorted((i for i in infos if i.type == pafs.FileType.File), key=lambda i: i.path):
        digest.update(f"{os.path.relpath(info.path, root)}\0{info.size}\n".encode())
    return "sha256-manifest:" + digest.hexdigest()


if __name__ == "__main__":
    sys.exit(
        job_runner.main(
            train_loop_per_worker, __doc__.split("\n")[0], callbacks=lambda spec: [ReportRecorder(spec)], check=check
        )
    )
