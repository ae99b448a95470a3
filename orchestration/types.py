"""The pydantic models that cross Temporal boundaries: workflow and activity inputs, results, signals, queries.

One input and one result model per workflow and activity. Imports neither torch nor ray: workflows use them
inside Temporal's sandbox, and the pydantic data converter serializes them on both client and worker.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from ray_jobs.specs import ChosenId, Identifier, Manifest, ScalableConfig, TrainConfig


class Model(BaseModel):
    """Wire models tolerate fields they do not know (a newer worker may send them during a rolling upgrade), and
    carry NaN and infinity as JSON constants: a diverged metric must never make a payload undecodable."""

    model_config = ConfigDict(extra="ignore", ser_json_inf_nan="constants")


class CheckpointInfo(Model):
    """A committed Ray Train checkpoint, as the workflow's ledger knows it: enough to resume from anywhere."""

    run_id: str
    step: int
    epoch: float
    uri: str
    metrics: dict[str, float] = Field(default_factory=dict)
    content_hash: str
    created_at: datetime
    ray_job_id: str
    deleted: bool = Field(default=False, description="removed from storage by keep_last retention")


class DatasetSnapshot(Model):
    snapshot_id: str
    uri: str
    manifest: Manifest
    reused: bool


def control_queue(training_queue: str) -> str:
    """Where training workers serve quick calls (stopping a run's jobs) on slots that no training can take."""
    return f"{training_queue}-control"


class RunOptions(Model):
    """How the run is driven, not what it trains: timeouts, retries, where checkpoints live, which queue trains."""

    storage_uri: str
    training_queue: str = "ttrain-training"
    heartbeat_timeout_s: float = Field(default=30.0, ge=1.0)
    stall_timeout_s: float = Field(default=600.0, ge=1.0, description="fail the attempt if the step stops advancing")
    startup_timeout_s: float = Field(
        default=1800.0, ge=1.0, description="how long a job may take to train its first step (nodes, data, compile)"
    )
    poll_interval_s: float = Field(default=2.0, gt=0.0)
    max_failures_without_progress: int = Field(
        default=8, ge=1, description="consecutive failed attempts with no new checkpoint before the run fails"
    )
    cluster_wait_s: float = Field(
        default=3600.0, ge=0.0, description="how long an attempt waits out an unreachable Ray Jobs API or Temporal"
    )
    history_limit: int = Field(default=10_000, ge=20, description="events before the run continues as new")


class TrainingRequest(Model):
    run_id: Identifier
    config: TrainConfig
    options: RunOptions
    resume_from: CheckpointInfo | None = Field(default=None, description="continue a run (a promoted sweep trial)")
    ledger: list[CheckpointInfo] = Field(
        default_factory=list,
        description="what the run's earlier execution kept, when a failed or cancelled run is started again: its "
        "ledger goes on from there, so its best checkpoint stays the best and keep_last still prunes the old ones",
    )
    stop_at_step: int | None = Field(default=None, ge=1, description="train only up to here (a ladder rung)")
    park_s: float = Field(default=0.0, ge=0.0, description="at stop_at_step, the job waits this long for a promotion")
    carried: RunCarry | None = Field(default=None, description="the run so far, handed over by continue-as-new")
    report_to: Identifier | None = Field(
        default=None, description="a workflow (a sweep) told how the run ended, by a `run_finished` signal"
    )

    @property
    def warm_job_id(self) -> str | None:
        """The Ray job that committed `resume_from`: if it still waits there, the run trains on in it."""
        return self.resume_from.ray_job_id if self.resume_from else None


class SnapshotRequest(Model):
    run_id: Identifier
    config: TrainConfig
    storage_uri: str


class TrainAttemptInput(Model):
    """What one training attempt starts from: the run's checkpoints that still exist (the newest is where a new job
    resumes; the rest are what keep_last may delete), and the previous attempt's job and progress, to reattach."""

    run_id: Identifier
    config: TrainConfig
    snapshot: DatasetSnapshot
    options: RunOptions
    checkpoints: list[CheckpointInfo] = Field(default_factory=list)
    stop_at_step: int | None = None
    park_s: float = 0.0
    reattach_job_id: str | None = None
    warm_job_id: str | None = None  # first attempt of a promoted segment: the job parked at its rung checkpoint
    previous: Progress | None = None
    attempt: int = 1
    # the first execution's run id: the same across continue-as-new, new when the id is run again or replaced
    incarnation: str | None = None
    # what a workflow of the release before the ledger rode along sent (Temporal retried that attempt itself)
    resume_from: CheckpointInfo | None = None
    sweep_id: str | None = None  # the sweep the run reports to: its trials nest under it in MLflow


class AttemptStarted(Model):
    """Signalled when an attempt submits or reattaches to a Ray job: the workflow counts resumes from these."""

    ray_job_id: str
    attempt: int
    reattached: bool
    resumed_from_step: int
    steps_recomputed: int = 0
    time_lost_s: float = 0.0


class TrainAttemptResult(Model):
    final_checkpoint: CheckpointInfo
    total_steps: int
    ray_job_id: str


class RunReport(Model):
    """How a run ended, signalled to `TrainingRequest.report_to`: a sweep learns it even after continuing as new."""

    workflow_id: str
    result: TrainingResult | None = None
    error: str | None = None


class TrainingResult(Model):
    run_id: str
    snapshot_id: str
    steps: int
    final_checkpoint: CheckpointInfo
    metrics: dict[str, float]
    checkpoints: int
    resumes: int
    steps_recomputed: int
    time_lost_s: float
    wall_time_s: float
    best_checkpoint: CheckpointInfo | None = Field(default=None, description="by the config's best_metric")


RunState = Literal["snapshotting", "training", "retrying", "completed", "failed", "cancelled"]


class RunStatus(Model):
    run_id: str
    state: RunState
    step: int
    total_steps: int | None
    latest_checkpoint: CheckpointInfo | None
    best_checkpoint: CheckpointInfo | None = None
    best_metric: str | None = None
    best_mode: Literal["min", "max"] = "min"
    kind: str = "text"
    checkpoints: list[CheckpointInfo]
    resumes: int
    ray_job_id: str | None
    ray_job_status: str | None = None
    snapshot_id: str | None
    snapshot_uri: str | None = None
    attempts: list[AttemptStarted]
    last_failure: str | None = None
    failures_without_progress: int = 0
    retry_at: datetime | None = None
    waiting: str | None = Field(default=None, description="what the live attempt is waiting out (from its heartbeat)")
    earlier_deleted_checkpoints: int = 0
    generation: int = 0


class AttemptFailure(Model):
    """A failed attempt as the retry rule sees it. `from_training_code`: raised inside the training loop, so the same
    error from the same checkpoint twice in a row is deterministic."""

    kind: str
    message: str
    checkpoint_step: int
    from_training_code: bool = False


class RetryState(Model):
    failures_without_progress: int = 0
    step_at_last_failure: int | None = None
    last: AttemptFailure | None = None


class RunCarry(Model):
    """Everything a run knows that continue-as-new must not lose. Deleted checkpoints are dropped (counted only),
    so what is carried stays small however long the run."""

    snapshot: DatasetSnapshot | None
    checkpoints: list[CheckpointInfo]
    attempts: list[AttemptStarted]
    retry: RetryState
    started_at: datetime
    earlier_deleted_checkpoints: int = 0
    generation: int = 0


class Progress(Model):
    """Heartbeat details (and a failed attempt's error details): the next attempt reads them to reattach to the
    job and to know where it had got to; `ttrain status` shows them live."""

    ray_job_id: str
    step: int = 0
    total_steps: int | None = None
    loss: float | None = None
    job_status: str | None = None
    latest_checkpoint: CheckpointInfo | None = None
    updated_at: float = 0.0
    waiting: str | None = Field(default=None, description="an outage being waited out, and since when")


class InferenceRequest(Model):
    run_id: Identifier
    texts: list[str] = Field(min_length=1)
    text_pairs: list[str] | None = None
    checkpoint_step: int | None = None


class Prediction(Model):
    text: str
    label: str
    confidence: float
    scores: dict[str, float]


class PredictInput(Model):
    checkpoint: CheckpointInfo
    texts: list[str]
    text_pairs: list[str] | None = None


class InferenceResult(Model):
    run_id: str
    checkpoint_step: int
    predictions: list[Prediction]


class EvaluationRequest(Model):
    run_id: Identifier
    checkpoint_step: int | None = None
    split: Literal["heldout"] = "heldout"
    batch_size: int = Field(default=64, ge=1)


class RunArtifacts(Model):
    """What evaluation and inference need from a run: its chosen checkpoint and the snapshot it trained on."""

    checkpoint: CheckpointInfo
    snapshot_uri: str
    kind: str = "text"


class EvaluateInput(Model):
    artifacts: RunArtifacts
    split: str
    batch_size: int


class EvaluationResult(Model):
    run_id: str
    checkpoint_step: int
    split: str
    report: dict


class Experiment(Model):
    id: ChosenId
    config: TrainConfig


class CoordinatorRequest(Model):
    experiment_id: ChosenId
    experiments: list[Experiment] = Field(min_length=1)
    max_concurrency: int = Field(default=2, ge=1)
    metric: str = "accuracy"
    mode: Literal["max", "min"] = "max"
    run_cache: bool = True
    options: RunOptions


ExperimentState = Literal["pending", "training", "evaluating", "completed", "failed", "cached"]


class ExperimentRow(Model):
    """One line of the results table; a failed experiment keeps its row, with the error."""

    experiment: str
    run_id: str
    state: ExperimentState = "pending"
    config_diff: dict = Field(default_factory=dict)
    metrics: dict[str, float] = Field(default_factory=dict)
    train_time_s: float | None = None
    resumes: int = 0
    checkpoints: int = 0
    cached_from: str | None = None
    error: str | None = None


class CoordinatorResult(Model):
    experiment_id: str
    metric: str
    mode: Literal["max", "min"]
    rows: list[ExperimentRow]


class RunCacheEntry(Model):
    """Content-addressed: the same snapshot and the same training config map to one finished run."""

    key: str
    run_id: str
    result: TrainingResult | None = None


class RunCacheLookup(Model):
    storage_uri: str
    key: str


class RunCacheStore(Model):
    storage_uri: str
    entry: RunCacheEntry


class ClusterCapacity(Model):
    """The Ray cluster's total resources (alive nodes), as a scale-up decides which worker counts can run at all."""

    resources: dict[str, float]
    nodes: int


ScalingMode = Literal["strong", "weak"]


class ScaleUpRequest(Model):
    """One image training, or a custom loop, at several worker counts. The global batch at one worker (an image
    config's `batch_size`, a custom loop's `train_loop_config.batch_size`): strong scaling keeps it for every count,
    weak scaling keeps the per-worker batch (global = batch x workers)."""

    scaleup_id: ChosenId
    config: ScalableConfig
    workers: list[int] = Field(min_length=1)
    scaling: ScalingMode = "strong"
    options: RunOptions


ScaleUpState = Literal["pending", "running", "completed", "does-not-fit", "failed"]


class ScaleUpRow(Model):
    workers: int
    global_batch: int | None = Field(description="None: a custom loop without train_loop_config.batch_size")
    run_id: str | None = None
    state: ScaleUpState = "pending"
    images_per_s: float | None = Field(default=None, description="throughput: images/s, or a custom loop's samples/s")
    efficiency: float | None = Field(default=None, description="images/s per worker, relative to the baseline's")
    time_to_target_s: float | None = None
    final_accuracy: float | None = None
    wall_time_s: float | None = None
    detail: str | None = None


class ScaleUpResult(Model):
    scaleup_id: str
    scaling: ScalingMode
    dataset: str
    synthetic: bool
    target_accuracy: float | None
    baseline_workers: int | None
    rows: list[ScaleUpRow]
    plot_uri: str | None = None
    throughput: str = Field(default="images/s", description="what `images_per_s` counts: a custom loop's samples/s")
