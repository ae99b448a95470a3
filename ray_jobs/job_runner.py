"""What every ttrain Ray job shares: the spec, resuming, progress, divergence, checkpoint reports, and `main`.

A job module (`text_job`, `image_job`) only supplies its per-worker training loop; starting, resuming and failing
work the same way for all of them, so the training activity treats every run alike.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import math
import os
import sys
import tempfile
import time
from collections.abc import Callable

import ray
import ray.train
import ray.train.torch
import torch
import torch.distributed as dist
from ray.exceptions import RayError

from ray_jobs import checkpointing, retention, storage, tracking
from ray_jobs.history import HistoryWriter
from ray_jobs.outcome import (
    OUTCOME_FILE,
    PARKED_FILE,
    PROGRESS_FILE,
    WORKER_ERRORS_DIR,
    CommittedCheckpoint,
    DeterministicJobError,
    Diverged,
    InvalidJobInput,
    JobOutcome,
    JobProgress,
    Parked,
    Promotion,
    commit_record_uri,
    job_dir,
    promoted_steps,
    promotion_uri,
    read_commits,
)
from ray_jobs.specs import JobSpec

PROGRESS_EVERY_S = 2.0
PROMOTION_POLL_S = 0.2
log = logging.getLogger("ttrain.job")


def run_dir(spec: JobSpec) -> str:
    return storage.join(spec.storage_path, spec.run_id)


def resume_checkpoint(spec: JobSpec) -> tuple[ray.train.Checkpoint | None, int]:
    """The spec's checkpoint, unless Ray Train restarted this job's workers after committing a newer one (the Ray
    Train run is named after this job, so `get_checkpoint` never returns another job's checkpoint)."""
    given = ray.train.Checkpoint(spec.resume_from_uri) if spec.resume_from_uri else None
    latest = ray.train.get_checkpoint()
    if latest is not None and (latest_step := checkpoint_step(latest)) > spec.resume_from_step:
        return latest, latest_step
    if given is not None and checkpoint_step(given) != spec.resume_from_step:
        raise InvalidJobInput(f"checkpoint {spec.resume_from_uri} does not hold step {spec.resume_from_step}")
    return given, spec.resume_from_step


def checkpoint_step(checkpoint: ray.train.Checkpoint) -> int:
    with checkpoint.filesystem.open_input_stream(f"{checkpoint.path}/{checkpointing.STATE_FILE}") as f:
        return int(json.loads(f.read())["step"])


class Segment:
    """Where the job stops training: at the spec's stop (a ladder rung), or further when a promotion reaches the job
    while it waits there (`JobSpec.park_s`). Going on in place keeps the process, the worker group, the model and the
    optimizer in memory: a promotion costs a poll instead of a new Ray job (~20 s to the first step here), and the
    weights are the ones a cold resume would load from the rung checkpoint, so the run trains the same either way."""

    def __init__(self, spec: JobSpec, total: int) -> None:
        self.spec, self.total = spec, total
        self.stop = min(total, spec.stop_at_step or total)
        self.park_s = spec.park_s

    def await_promotion(self, rank: int, device: torch.device) -> bool:
        """Every rank calls this once the checkpoint at `stop` is committed; True: `stop` moved, train on to it.
        Rank 0 waits for the promotion and tells the others (a collective), so all ranks go on or leave together."""
        if self.park_s <= 0 or self.stop >= self.total:
            return False
        decision = torch.tensor([self.stop, 0], dtype=torch.int64, device=device)  # the next stop, its park in ms
        if rank == 0 and (promotion := self._wait_for_promotion()) is not None:
            decision[0] = min(self.total, promotion.stop_at_step or self.total)
            decision[1] = round(promotion.park_s * 1000)
        if dist.is_initialized():
            dist.broadcast(decision, src=0)
        stop, park_ms = decision.tolist()
        if stop <= self.stop:
            return False
        self.stop, self.park_s = stop, park_ms / 1000
        return True

    def _wait_for_promotion(self) -> Promotion | None:
        job_uri = job_dir(run_dir(self.spec), self.spec.ray_job_id)
        parked_uri = storage.join(job_uri, PARKED_FILE)
        offer_uri = promotion_uri(run_dir(self.spec), self.spec.ray_job_id, self.stop)
        until = time.time() + self.park_s
        promotion = None
        try:
            storage.write_json(parked_uri, Parked(step=self.stop, until=until).model_dump(mode="json"))
            while promotion is None and time.time() < until:
                time.sleep(PROMOTION_POLL_S)
                if storage.exists(offer_uri):
                    promotion = Promotion.model_validate(storage.read_json(offer_uri))
            state = "promoted" if promotion is not None else "left"
            storage.write_json(parked_uri, Parked(step=self.stop, until=until, state=state).model_dump(mode="json"))
        except (OSError, ValueError) as exc:  # storage failing: leave; a promotion then resumes from the checkpoint
            log.warning("waiting for a promotion failed (%s): the job ends here", exc)
            return None
        return promotion


@functools.cache
def _history(run_id: str, ray_job_id: str, storage_path: str, resume_step: int) -> HistoryWriter:
    return HistoryWriter(job_dir(storage.join(storage_path, run_id), ray_job_id), resume_step)


def job_history(spec: JobSpec) -> HistoryWriter:
    """This job's metric history (`ray_jobs.history`), one writer per job process: rank 0 adds the loss at every
    progress write and everything a checkpoint reports, and flushes at each checkpoint."""
    return _history(spec.run_id, spec.ray_job_id, spec.storage_path, spec.resume_from_step)


class ProgressWriter:
    """Rank 0's step between checkpoints, throttled. Best effort: a failed write never fails the training."""

    def __init__(self, spec: JobSpec) -> None:
        self.spec = spec
        self.last = 0.0

    def due(self, final: bool) -> bool:
        return final or time.monotonic() - self.last > PROGRESS_EVERY_S

    def write(self, step: int, steps: int, loss: float) -> None:
        self.last = time.monotonic()
        progress = JobProgress(
            ray_job_id=self.spec.ray_job_id, step=step, total_steps=steps, loss=loss, time=time.time()
        )
        uri = storage.join(job_dir(run_dir(self.spec), self.spec.ray_job_id), PROGRESS_FILE)
        if math.isfinite(loss):
            job_history(self.spec).add(step, {"loss": loss})
        try:
            storage.write_json(uri, progress.model_dump(mode="json"))
        except OSError as exc:
            log.warning("progress not written (%s); training goes on", exc)


class DivergenceGuard:
    """A non-finite loss ends the job with `loss became NaN at step N` instead of training on and committing NaN
    checkpoints. Observing costs no host sync; `check` is a collective that every rank calls at the same steps
    (`due`), so all ranks stop together, and always before a checkpoint is reported."""

    CHECK_EVERY = 10
    _NONE = 2**62

    def __init__(self, device: torch.device) -> None:
        self._first = torch.full((2,), self._NONE, dtype=torch.int64, device=device)  # first NaN step, first inf step

    def observe(self, loss: torch.Tensor, step: int) -> None:
        value = loss.detach()
        at = torch.full_like(self._first, step)
        bad = torch.stack([torch.isnan(value), torch.isinf(value)]).reshape(2)
        self._first = torch.where(bad & (self._first == self._NONE), at, self._first)

    def due(self, step: int, checkpoint_due: bool) -> bool:
        return checkpoint_due or step % self.CHECK_EVERY == 0

    def check(self) -> None:
        first = self._first.clone()
        if dist.is_initialized():
            dist.all_reduce(first, op=dist.ReduceOp.MIN)
        nan_step, inf_step = first.tolist()
        if min(nan_step, inf_step) < self._NONE:
            kind, step = ("NaN", nan_step) if nan_step <= inf_step else ("inf", inf_step)
            raise Diverged(f"loss became {kind} at step {step}")


def report(spec: JobSpec, metrics: dict, rank: int, save_weights: Callable[[str], None], optimizer, scheduler) -> None:
    """Every worker calls report (it is a barrier); only rank 0 writes the files, which Ray commits as one dir, and
    then, the upload done, the commit record the training activity reads (`ray_jobs.outcome.CommittedCheckpoint`)."""
    step = int(metrics["step"])
    name = checkpointing.checkpoint_dir_name(step)
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint, state = None, {}
        if rank == 0:
            save_weights(tmp)
            state = {**metrics, "ray_job_id": spec.ray_job_id, "created_at": time.time()}
            state = checkpointing.save_training_state(tmp, optimizer, scheduler, state)
            checkpoint = ray.train.Checkpoint.from_directory(tmp)
        ray.train.report(metrics, checkpoint=checkpoint, checkpoint_dir_name=name)
    if rank == 0:
        job_uri = job_dir(run_dir(spec), spec.ray_job_id)
        record = CommittedCheckpoint(
            step=step,
            epoch=float(state["epoch"]),
            uri=storage.join(job_uri, name),
            metrics={k: float(v) for k, v in state.items() if isinstance(v, int | float) and k != "created_at"},
            content_hash=state["content_hash"],
            created_at=state["created_at"],
            ray_job_id=spec.ray_job_id,
        )
        storage.write_json(commit_record_uri(run_dir(spec), spec.ray_job_id, step), record.model_dump(mode="json"))
        prune(spec)
        writer = job_history(spec)
        writer.add(step, {**metrics, "lr": optimizer.param_groups[0]["lr"]})
        writer.flush()


def prune(spec: JobSpec) -> None:
    """Delete this job's checkpoints that `ray_jobs.retention` no longer keeps. Their commit records stay: the
    training activity mirrors each into the ledger (as deleted) and removes the record then. Best effort: storage
    failing now leaves more on disk, never less, and the next commit tries again."""
    cfg = spec.config
    try:
        # A job that took a warm promotion trains on for the next segment's run, whose ledger starts at the rung
        # checkpoint it was promoted from: judge only what that ledger holds too, or the two bests could differ.
        since = max(promoted_steps(run_dir(spec), spec.ray_job_id), default=0)
        commits = [c for c in read_commits(run_dir(spec), spec.ray_job_id, -1) if c.step >= since]
        keep = retention.kept_steps(commits, cfg.keep_last, cfg.best_metric, cfg.best_mode)
        for c in commits:
            if c.step not in keep:
                storage.delete_dir(c.uri)
    except OSError as exc:
        log.warning("checkpoints not pruned now (%s): the next commit tries again", exc)


def build_trainer(
    spec: JobSpec, train_loop: Callable[[dict], None], callbacks: list[ray.train.UserCallback] | None = None
) -> ray.train.torch.TorchTrainer:
    """The Ray Train run is named after the Ray job: its checkpoints land in the job's own directory. Ray deletes
    none of them (its `num_to_keep` keeps the newest or the best, never both): the job applies `keep_last` plus the
    best (`ray_jobs.retention`) as it commits, and the training activity across the run's jobs, telling the ledger.
    Ray Train restarts nothing by default (`TTRAIN_RAY_MAX_FAILURES`): the activity is the one retry authority,
    and it knows which failures are worth retrying."""
    scaling = spec.config.scaling
    return ray.train.torch.TorchTrainer(
        recording_errors(train_loop),
        train_loop_config=spec.model_dump(mode="json"),
        scaling_config=ray.train.ScalingConfig(
            num_workers=scaling.num_workers,
            use_gpu=scaling.use_gpu,
            resources_per_worker=scaling.resources_per_worker or None,
        ),
        run_config=ray.train.RunConfig(
            name=spec.ray_job_id,
            storage_path=run_dir(spec),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=None),
            failure_config=ray.train.FailureConfig(max_failures=int(os.environ.get("TTRAIN_RAY_MAX_FAILURES", "0"))),
            callbacks=callbacks,
        ),
    )


def recording_errors(train_loop: Callable[[dict], None]) -> Callable[[dict], None]:
    """Ray 2.60 can lose a worker's error: its status poll reads the error before it checks whether the training
    thread is alive, so a loop that raises between the two reads as one that returned, and `fit()` succeeds (seen in
    CI: a loop that could not be imported ended SUCCEEDED with no checkpoint). Each worker writes what its loop
    raised to the job's folder first, and `main` reads it back. A worker group that Ray Train restarts in the job
    (a preemption, `TTRAIN_RAY_MAX_FAILURES`) first clears what its rank's predecessor wrote."""

    @functools.wraps(train_loop)
    def run(config: dict) -> None:
        spec = JobSpec.model_validate(config)
        rank = ray.train.get_context().get_world_rank()
        uri = storage.join(_worker_errors(spec), f"rank_{rank:05d}.json")
        storage.delete_file(uri)
        try:
            train_loop(config)
        except BaseException as exc:
            try:
                storage.write_json(uri, _failed(spec.ray_job_id, exc).model_dump(mode="json"))
            except Exception as write_error:  # never in place of the loop's own error
                log.warning("rank %d's error not recorded (%s): %s", rank, write_error, exc)
            raise

    return run


def lost_worker_error(spec: JobSpec) -> JobOutcome | None:
    """What a worker of the job's last worker group raised though `fit()` succeeded."""
    directory = _worker_errors(spec)
    try:
        names = [n for n in storage.list_names(directory) if n.startswith("rank_") and n.endswith(".json")]
        recorded = [JobOutcome.model_validate(storage.read_json(storage.join(directory, n))) for n in names]
    except (OSError, ValueError) as exc:
        log.warning("the workers' error records are not readable (%s)", exc)
        return None
    return _to_blame(recorded) if recorded else None


def _worker_errors(spec: JobSpec) -> str:
    return storage.join(job_dir(run_dir(spec), spec.ray_job_id), WORKER_ERRORS_DIR)


# What fails around the loop rather than in it, and may pass: a lost worker or node (Ray's errors), storage or the
# network (OSError: a checkpoint read during an outage), the collective backend (a peer rank gone). Never "the same
# error twice is deterministic": the activity's failure budget bounds their retries instead.
NOT_THE_TRAINING_CODE = (RayError, OSError, dist.DistError)


def failure_outcome(ray_job_id: str, exc: ray.train.TrainingFailedError) -> JobOutcome:
    """The workers' errors when the training code raised any (`_to_blame`), else the controller's or a lost
    worker's."""
    failures = [getattr(e, "_base_exc", e) for _, e in sorted((getattr(exc, "worker_failures", None) or {}).items())]
    outcomes = [_failed(ray_job_id, e) for e in failures]
    if any(o.from_training_code for o in outcomes):
        return _to_blame(outcomes)
    # a controller callback may refuse what a loop reported (`custom_job.ReportRecorder`)
    cause = getattr(exc, "controller_failure", None) or (failures[0] if failures else exc)
    return _failed(ray_job_id, cause, in_the_loop=False)


def _failed(ray_job_id: str, exc: BaseException, in_the_loop: bool = True) -> JobOutcome:
    return JobOutcome(
        ray_job_id=ray_job_id,
        status="failed",
        error_type=type(exc).__name__,
        message=_first_line(exc),
        deterministic=isinstance(exc, DeterministicJobError),
        from_training_code=in_the_loop and not isinstance(exc, NOT_THE_TRAINING_CODE),
    )


def _to_blame(outcomes: list[JobOutcome]) -> JobOutcome:
    """Of the ranks' errors (in rank order), one our code raised on purpose as deterministic (every rank may raise
    it), else the lowest rank's that the training code raised."""
    return min(outcomes, key=lambda o: (not o.deterministic, not o.from_training_code))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def main(
    train_loop: Callable[[dict], None],
    description: str,
    argv: list[str] | None = None,
    callbacks: Callable[[JobSpec], list[ray.train.UserCallback]] | None = None,
    check: Callable[[JobSpec], None] | None = None,
) -> int:
    """`check` refuses a spec before any Ray Train worker starts (with a `DeterministicJobError`); `callbacks` run
    in Ray Train's controller."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--spec", required=True, help="path or URI of a JobSpec JSON file")
    args = parser.parse_args(argv)
    spec = JobSpec.model_validate(storage.read_json(args.spec))
    outcome_uri = storage.join(job_dir(run_dir(spec), spec.ray_job_id), OUTCOME_FILE)
    ray.init(address=os.environ.get("RAY_ADDRESS", "auto"), log_to_driver=True)
    print(f"ttrain job {spec.run_id} ({spec.ray_job_id}): from step {spec.resume_from_step}", flush=True)
    try:
        if check is not None:
            check(spec)
        result = build_trainer(spec, train_loop, callbacks(spec) if callbacks else None).fit()
        outcome = lost_worker_error(spec)
    except DeterministicJobError as exc:  # refused by `check`
        outcome = _failed(spec.ray_job_id, exc, in_the_loop=False)
    except ray.train.TrainingFailedError as exc:
        outcome = failure_outcome(spec.ray_job_id, exc)
    if outcome is not None:
        storage.write_json(outcome_uri, outcome.model_dump(mode="json"))
        print(f"ttrain job {spec.run_id} failed: {outcome.error_type}: {outcome.message}", file=sys.stderr, flush=True)
        return 3 if outcome.deterministic else 1
    tracking.export(spec)
    storage.write_json(outcome_uri, JobOutcome(ray_job_id=spec.ray_job_id, status="succeeded").model_dump(mode="json"))
    print(f"ttrain job {spec.run_id} finished: {result.metrics}", flush=True)
    return 0
