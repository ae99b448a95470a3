"""What a Ray job tells the training activity that watches it: where it is, and why it ended.

Each Ray job owns one directory, `<runs root>/<run id>/<ray job id>/`: Ray Train commits the job's checkpoints there
(the Ray Train run is named after the job, so a new job never inherits an older job's checkpoints), and the job
writes `progress.json` (its step between checkpoints), `parked.json` (it waits at a ladder rung for a promotion)
and, when it ends, `outcome.json`. The one file the activity writes there is a `Promotion`. All are pydantic models,
so neither side guesses at the other's keys.

Failures a rerun would only repeat are raised on purpose as `DeterministicJobError` subclasses; the activity fails
the run at once on those, by type, and retries everything else.
"""

from __future__ import annotations

from typing import Literal, TypeVar

from pydantic import BaseModel, ConfigDict

from ray_jobs import storage

PROGRESS_FILE = "progress.json"
OUTCOME_FILE = "outcome.json"
PARKED_FILE = "parked.json"
PROMOTIONS_DIR = "promotions"
WORKER_ERRORS_DIR = "worker_errors"  # what each Train worker's loop raised, written before Ray hears of it
COMMITS_DIR = "commits"  # one record per checkpoint the job committed, written once its upload has finished


M = TypeVar("M", bound="_Wire")


class DeterministicJobError(Exception):
    """A failure the same input would meet again: never worth another attempt."""


class InvalidJobInput(DeterministicJobError):
    """The config, snapshot or checkpoint the job was given cannot be trained as given."""


class Diverged(DeterministicJobError):
    """The loss became NaN or infinite: a normal outcome for too high a learning rate, not a crash."""


class _Wire(BaseModel):
    model_config = ConfigDict(extra="ignore", ser_json_inf_nan="constants")


class JobProgress(_Wire):
    """Rank 0's step between checkpoints (throttled): the activity heartbeats it, so `status` is live."""

    ray_job_id: str
    step: int
    total_steps: int
    loss: float
    time: float


class CommittedCheckpoint(_Wire):
    """Written by rank 0 once `ray.train.report` has returned, i.e. once the checkpoint's upload has finished: the
    activity learns of every checkpoint from these (never from Ray's own snapshot, which Ray rewrites and prunes)."""

    step: int
    epoch: float
    uri: str
    metrics: dict[str, float]
    content_hash: str
    created_at: float
    ray_job_id: str


class JobOutcome(_Wire):
    """Why a job ended. `from_training_code`: the error was raised inside the training loop (as opposed to a lost
    worker or node), so the same error from the same checkpoint twice in a row means it will not go away."""

    ray_job_id: str
    status: Literal["succeeded", "failed"]
    error_type: str | None = None
    message: str | None = None
    deterministic: bool = False
    from_training_code: bool = False


class Parked(_Wire):
    """The job committed its rung checkpoint at `step` and waits there until `until` (epoch seconds) for a
    promotion; rewritten when it goes on (`promoted`) or leaves (`left`). A promoted segment's activity hands a
    `waiting` job its next stop instead of starting a new job."""

    step: int
    until: float
    state: Literal["waiting", "promoted", "left"] = "waiting"


class Promotion(_Wire):
    """Train on from the parked step to `stop_at_step` (None: the whole run), then wait `park_s` there again."""

    stop_at_step: int | None = None
    park_s: float = 0.0


def job_dir(run_uri: str, ray_job_id: str) -> str:
    return storage.join(run_uri, ray_job_id)


def _read(model: type[M], run_uri: str, ray_job_id: str, name: str) -> M | None:
    try:
        return model.model_validate(storage.read_json(storage.join(job_dir(run_uri, ray_job_id), name)))
    except (OSError, ValueError):
        return None


def read_progress(run_uri: str, ray_job_id: str) -> JobProgress | None:
    """None until the job has written one (or while a write is in flight on a store without atomic renames)."""
    return _read(JobProgress, run_uri, ray_job_id, PROGRESS_FILE)


def read_outcome(run_uri: str, ray_job_id: str) -> JobOutcome | None:
    """None when the job's driver never got to write one (it was killed, or its node was lost)."""
    return _read(JobOutcome, run_uri, ray_job_id, OUTCOME_FILE)


def read_parked(run_uri: str, ray_job_id: str) -> Parked | None:
    """None when the job never waited at a rung (or was of a release before warm promotions)."""
    return _read(Parked, run_uri, ray_job_id, PARKED_FILE)


def promotion_uri(run_uri: str, ray_job_id: str, step: int) -> str:
    """One file per parked step: a promotion meant for an earlier rung is never read as the next one's."""
    return storage.join(job_dir(run_uri, ray_job_id), PROMOTIONS_DIR, f"step_{step:08d}.json")


def _step_files(directory: str) -> list[tuple[int, str]]:
    """(step, name) of the `step_<N>.json` files in a job's folder of records, in step order."""
    names = storage.list_names(directory)
    return [(int(n[5:13]), n) for n in names if n.startswith("step_") and n.endswith(".json")]


def promoted_steps(run_uri: str, ray_job_id: str) -> list[int]:
    """The rungs at which this job was offered a promotion (and so trained on, unless it had just left)."""
    return [step for step, _ in _step_files(storage.join(job_dir(run_uri, ray_job_id), PROMOTIONS_DIR))]


def commit_record_uri(run_uri: str, ray_job_id: str, step: int) -> str:
    return storage.join(job_dir(run_uri, ray_job_id), COMMITS_DIR, f"step_{step:08d}.json")


def read_commits(run_uri: str, ray_job_id: str, after_step: int) -> list[CommittedCheckpoint]:
    """The job's commit records newer than `after_step`, in step order (a record half-written is read next time)."""
    directory = storage.join(job_dir(run_uri, ray_job_id), COMMITS_DIR)
    found = []
    for step, name in _step_files(directory):
        if step <= after_step:
            continue
        try:
            found.append(CommittedCheckpoint.model_validate(storage.read_json(storage.join(directory, name))))
        except FileNotFoundError:
            continue  # its checkpoint was pruned and the record with it, since the listing
        except (OSError, ValueError):
            break  # keep the order: what follows waits for the next poll
    return found
