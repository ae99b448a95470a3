"""The pydantic models that cross Temporal boundaries: workflow and activity inputs, results, signals, queries.

One input and one result model per workflow and activity. Imports neither torch nor ray: workflows use them
inside Temporal's sandbox, and the pydantic data converter serializes them on both client and worker.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from ray_jobs.specs import FineTuneConfig, ImageTrainConfig, Manifest, TrainConfig


class Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


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


class DatasetSnapshot(Model):
    snapshot_id: str
    uri: str
    manifest: Manifest
    reused: bool


class RunOptions(Model):
    """How the run is driven, not what it trains: timeouts, retries, where checkpoints live, which queue trains."""

    storage_uri: str
    training_queue: str = "ttrain-training"
    heartbeat_timeout_s: float = Field(default=30.0, ge=1.0)
    stall_timeout_s: float = Field(default=600.0, ge=1.0, description="fail the attempt if the step stops advancing")
    poll_interval_s: float = Field(default=2.0, gt=0.0)
    max_attempts: int = Field(default=20, ge=1)


class TrainingRequest(Model):
    run_id: str
    config: TrainConfig
    options: RunOptions
    resume_from: CheckpointInfo | None = Field(default=None, description="continue a run (a promoted sweep trial)")
    stop_at_step: int | None = Field(default=None, ge=1, description="train only up to here (a ladder rung)")


class SnapshotRequest(Model):
    run_id: str
    config: TrainConfig
    storage_uri: str


class TrainAttemptInput(Model):
    """What one training activity attempt starts from; a retry may find a newer checkpoint than `resume_from`."""

    run_id: str
    config: TrainConfig
    snapshot: DatasetSnapshot
    options: RunOptions
    resume_from: CheckpointInfo | None = None
    stop_at_step: int | None = None


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


RunState = Literal["snapshotting", "training", "completed", "failed"]


class RunStatus(Model):
    run_id: str
    state: RunState
    step: int
    total_steps: int | None
    latest_checkpoint: CheckpointInfo | None
    checkpoints: list[CheckpointInfo]
    resumes: int
    ray_job_id: str | None
    ray_job_status: str | None = None
    snapshot_id: str | None
    snapshot_uri: str | None = None
    attempts: list[AttemptStarted]


class Progress(Model):
    """Heartbeat details: a retried attempt reads these to reattach to the job and to know where it had got to."""

    ray_job_id: str
    step: int = 0
    total_steps: int | None = None
    loss: float | None = None
    job_status: str | None = None
    latest_checkpoint: CheckpointInfo | None = None
    updated_at: float = 0.0


class InferenceRequest(Model):
    run_id: str
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
    run_id: str
    checkpoint_step: int | None = None
    split: Literal["heldout"] = "heldout"
    batch_size: int = Field(default=64, ge=1)


class RunArtifacts(Model):
    """What evaluation and inference need from a run: its chosen checkpoint and the snapshot it trained on."""

    checkpoint: CheckpointInfo
    snapshot_uri: str


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
    id: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$", max_length=80)
    config: FineTuneConfig


class CoordinatorRequest(Model):
    experiment_id: str
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
    """One image training at several worker counts. `config.batch_size` is the global batch at one worker:
    strong scaling keeps it for every count, weak scaling keeps the per-worker batch (global = batch x workers)."""

    scaleup_id: str
    config: ImageTrainConfig
    workers: list[int] = Field(min_length=1)
    scaling: ScalingMode = "strong"
    options: RunOptions


ScaleUpState = Literal["pending", "running", "completed", "does-not-fit", "failed"]


class ScaleUpRow(Model):
    workers: int
    global_batch: int
    run_id: str | None = None
    state: ScaleUpState = "pending"
    images_per_s: float | None = None
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
