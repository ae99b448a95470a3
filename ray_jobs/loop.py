"""The one helper a custom Ray Train loop needs from ttrain: where to resume, where to stop, the budget, the seed.

Everything else stays plain Ray Train: `prepare_model`, `prepare_data_loader`, and
`ray.train.report(metrics, checkpoint=...)` with a `step` metric on every checkpoint. ttrain records each checkpoint
Ray commits (`custom_job.ReportRecorder`), so the run's ledger, reattach, resume and sweeps work as for its own jobs:

    def train_func(config: dict) -> None:
        run = loop.current()
        model = ray.train.torch.prepare_model(build(config))
        if run.checkpoint is not None:                 # the ledger's newest: load weights and optimizer from it
            with run.checkpoint.as_directory() as d:
                ...
        for step in run.steps():                       # run.start_step + 1, ..., the segment's stop
            ...                                        # one optimizer step; a batch chosen by (run.seed, step)
            if run.checkpoint_due(step):               # every checkpoint_every_steps, and always at the stop
                ray.train.report({"step": step, "loss": loss}, checkpoint=...)

`steps()` ends at the segment's stop (the run's `max_steps`, or a ladder rung). At a rung it waits for a promotion
once the rung's checkpoint is reported, and goes on in the same job if one comes. A loop that picks its batches
and randomness from (seed, step) resumes exactly: an interrupted run ends with the weights of one that never stopped.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import ray.train
import ray.train.torch

from ray_jobs import job_runner
from ray_jobs.outcome import InvalidJobInput, read_commits
from ray_jobs.specs import CustomTrainConfig, JobSpec

COMMIT_WAIT_S = 120.0  # Ray Train's controller records a report after its next poll of the workers (seconds)
_current: TrainLoop | None = None


def current() -> TrainLoop:
    """This worker's run. Only inside a loop that ttrain started (`kind: custom`)."""
    if _current is None:
        raise RuntimeError("ray_jobs.loop.current() is only set inside a loop that ttrain runs (kind: custom)")
    return _current


@dataclass
class TrainLoop:
    spec: JobSpec
    start_step: int  # the step the checkpoint holds; 0 when the run starts fresh
    checkpoint: ray.train.Checkpoint | None  # what to resume from
    segment: job_runner.Segment
    last_step: int = field(init=False)  # the last step `steps()` handed out

    def __post_init__(self) -> None:
        self.last_step = self.start_step

    @property
    def config(self) -> CustomTrainConfig:
        assert isinstance(self.spec.config, CustomTrainConfig)
        return self.spec.config

    @property
    def total_steps(self) -> int:
        """The run's whole budget (`max_steps`): what an LR schedule spans, whatever rung stops this job."""
        return self.config.max_steps

    @property
    def stop_step(self) -> int:
        """Where this job stops unless promoted on: a ladder rung, or the whole budget."""
        return self.segment.stop

    @property
    def seed(self) -> int:
        return self.config.seed

    @property
    def run_id(self) -> str:
        return self.spec.run_id

    def checkpoint_due(self, step: int) -> bool:
        return step % self.config.checkpoint_every_steps == 0 or step == self.segment.stop

    def steps(self) -> Iterator[int]:
        rank = ray.train.get_context().get_world_rank()
        progress = job_runner.ProgressWriter(self.spec)
        step = self.last_step  # a loop that leaves `steps()` (for an evaluation, say) and comes back goes on
        while True:
            while step < self.segment.stop:
                step = self.last_step = step + 1
                yield step
                if rank == 0 and progress.due(step == self.segment.stop):
                    progress.write(step, self.total_steps, float("nan"))
            if step == self.start_step:  # a retry that resumed at the rung itself: nothing trained, nothing to offer
                return
            if self.segment.park_s > 0 and rank == 0:
                _check_rung_checkpoint(self.spec, step)
            if not self.segment.await_promotion(rank, ray.train.torch.get_device()):
                return


def _check_rung_checkpoint(spec: JobSpec, step: int) -> None:
    """A promotion resumes from the rung's checkpoint: a loop that reported none there cannot be promoted."""
    run_uri = job_runner.run_dir(spec)
    deadline = time.monotonic() + COMMIT_WAIT_S
    while time.monotonic() < deadline:
        if any(c.step == step for c in read_commits(run_uri, spec.ray_job_id, step - 1)):
            return
        time.sleep(0.1)
    raise InvalidJobInput(f"no checkpoint reported at step {step}: report one wherever run.checkpoint_due(step)")


def bind(spec: JobSpec) -> TrainLoop:
    """Set this worker's run (the custom job's wrapper calls it before the user's function)."""
    global _current
    checkpoint, start = _resume(spec)
    _current = TrainLoop(spec, start, checkpoint, job_runner.Segment(spec, spec.config.max_steps))
    return _current


def _resume(spec: JobSpec) -> tuple[ray.train.Checkpoint | None, int]:
    """The spec's checkpoint (the ledger's newest), unless Ray Train restarted this job's workers after it committed
    a newer one; that one's step comes from its commit record (a custom checkpoint holds whatever the user wrote)."""
    latest = ray.train.get_checkpoint()
    if latest is not None:
        name = os.path.basename(latest.path.rstrip("/"))
        commits = read_commits(job_runner.run_dir(spec), spec.ray_job_id, spec.resume_from_step)
        newer = [c for c in commits if os.path.basename(c.uri.rstrip("/")) == name]
        if newer:
            return latest, newer[-1].step
    given = ray.train.Checkpoint(spec.resume_from_uri) if spec.resume_from_uri else None
    return given, spec.resume_from_step
