"""The pydantic models a Ray job is started with.

They cross the process boundary twice (CLI → workflow → activity → Ray job), so they are validated once, at the
CLI, and every impossible value is refused there with a readable message, before any compute is spent.
Imports neither torch nor ray nor temporalio: workflows import this module inside Temporal's sandbox.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, StringConstraints, Tag, model_validator

DEFAULT_MODEL = "all-MiniLM-L6-v2"
DEFAULT_DATASET = "movie-reviews"

# Every id that becomes a path, a workflow id or a Ray job id (run, sweep, experiment set, experiment, scale-up,
# trial, job): letters, digits, `.`, `_` and `-`, starting with a letter or digit, so never `..` nor a `/`. Ids a
# person chooses are at most 80 characters; ids ttrain derives from them (trials, rungs, jobs) have room to grow.
ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"
CHOSEN_ID_MAX = 80
Identifier = Annotated[str, StringConstraints(pattern=ID_PATTERN, max_length=160)]
ChosenId = Annotated[str, StringConstraints(pattern=ID_PATTERN, max_length=CHOSEN_ID_MAX)]


def check_id(value: str, what: str) -> str:
    """The id as given, or one line saying why it cannot name a run (for the CLI, before anything starts)."""
    if not re.fullmatch(ID_PATTERN, value) or len(value) > CHOSEN_ID_MAX:
        raise ValueError(
            f"{what} {value!r} is not allowed: use up to {CHOSEN_ID_MAX} letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return value


class Strict(BaseModel):
    """A config: frozen, and strict about keys where a person wrote them. Files and `--set` are validated with
    `extra="forbid"` (`orchestration.config_loading`), so a typo never falls back to a default in silence; on the
    wire (workflow inputs, job specs) unknown keys are ignored, so a worker still running the previous release reads
    what a newer one sent during a rolling upgrade."""

    model_config = ConfigDict(extra="ignore", frozen=True)


KEEP_LAST = "checkpoints kept per run: the newest ones, plus the best (the ledger keeps every entry's metrics)"
BEST_METRIC = "a metric reported with checkpoints; the best checkpoint by it is kept, evaluated and exported by default"


class DatasetSource(Strict):
    """Where rows come from. `path` is the packaged `movie-reviews`, a local CSV/JSONL/parquet file, or a HF name."""

    path: str = DEFAULT_DATASET
    hf_split: str = "train"
    text_field: str | None = None
    text_pair_field: str | None = None
    label_field: str | None = None
    task: Literal["auto", "classification", "regression"] = "auto"
    max_rows: int | None = Field(default=None, ge=2, description="sample this many rows (seeded) before splitting")
    heldout_fraction: float = Field(default=0.1, gt=0.0, lt=1.0)


class RayScaling(Strict):
    """Mirrors ray.train.ScalingConfig; kept as data so the workflow can carry it without importing Ray."""

    num_workers: int = Field(default=1, ge=1)
    use_gpu: bool = False
    resources_per_worker: dict[str, float] = Field(default_factory=dict)


class FineTuneConfig(Strict):
    """One fine-tune: model, data, optimisation and scaling. `batch_size` is the global batch over all workers."""

    kind: Literal["text"] = "text"
    model: str = DEFAULT_MODEL
    num_hidden_layers: int | None = Field(default=None, ge=1, description="cut the encoder for speed")
    dataset: DatasetSource = Field(default_factory=DatasetSource)
    epochs: int = Field(default=1, ge=1)
    max_steps: int | None = Field(default=None, ge=1, description="overrides epochs when set")
    batch_size: int = Field(default=16, ge=1)
    lr: float = Field(default=5e-5, gt=0.0, le=1.0)
    warmup_ratio: float = Field(default=0.1, ge=0.0, lt=1.0)
    weight_decay: float = Field(default=0.01, ge=0.0)
    max_seq_length: int = Field(default=128, ge=8, le=8192)
    seed: int = Field(default=42, ge=0)
    checkpoint_every_steps: int = Field(default=50, ge=1)
    eval_every_steps: int | None = Field(
        default=None,
        ge=1,
        description="evaluate on the held-out split every N steps, each a checkpoint (default: at the end)",
    )
    keep_last: int = Field(default=3, ge=1, le=1000, description=KEEP_LAST)
    best_metric: str | None = Field(default="eval_loss", description=BEST_METRIC)
    best_mode: Literal["min", "max"] = "min"
    scaling: RayScaling = Field(default_factory=RayScaling)

    @model_validator(mode="after")
    def _batch_splits_evenly(self) -> FineTuneConfig:
        return _check_best_metric(_check_global_batch(self), TEXT_METRICS)


def _check_global_batch(cfg: FineTuneConfig | ImageTrainConfig):
    if cfg.batch_size % cfg.scaling.num_workers:
        raise ValueError(
            f"batch_size {cfg.batch_size} must be a multiple of scaling.num_workers "
            f"{cfg.scaling.num_workers} (it is the global batch, split evenly over workers)"
        )
    return cfg


# What ttrain's own jobs report with every checkpoint (evaluations: at the evaluated ones): what best_metric can name
TEXT_METRICS = {"step", "epoch", "loss", "total_steps", "eval_loss", "eval_accuracy", "eval_examples"}
IMAGE_METRICS = TEXT_METRICS | {"train_time_s", "images_per_s", "workers", "replicas_identical", "time_to_target_s"}


def _check_best_metric(cfg: FineTuneConfig | ImageTrainConfig, reported: set[str]):
    if cfg.best_metric is not None and cfg.best_metric not in reported:
        raise ValueError(f"best_metric {cfg.best_metric!r} is never reported: use one of {sorted(reported)}")
    return cfg


FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"


class ImageTrainConfig(Strict):
    """Image classification (CIFAR-10, Fashion-MNIST) on Ray Train with DDP. `batch_size` is the global batch.

    The defaults are the airbench recipe's shape (compact ResNet-style net, SGD-Nesterov, label smoothing,
    crop + flip); `width` scales every layer so the same net fits a CPU test and an H100.
    """

    kind: Literal["image"] = "image"
    dataset: Literal["cifar10", "fashion-mnist", "synthetic"] = "cifar10"
    data_path: str | None = Field(
        default=None,
        description="cifar-10-python.tar.gz, its extracted folder, or a folder of HF parquet files; "
        f"fashion-mnist defaults to {FASHION_MNIST_DIR} (Debian package dataset-fashion-mnist)",
    )
    max_train_rows: int | None = Field(default=None, ge=1, description="train on a seeded subset (short runs)")
    synthetic_rows: int = Field(default=50_000, ge=1, description="synthetic only: images per epoch (32x32x3)")
    arch: Literal["airbench", "resnet18"] = "airbench"
    width: int = Field(default=64, ge=4, le=1024, description="channels of the first block; later blocks scale it")
    epochs: int = Field(default=10, ge=1)
    max_steps: int | None = Field(default=None, ge=1, description="overrides epochs when set")
    batch_size: int = Field(default=512, ge=1)
    optimizer: Literal["sgd", "adamw"] = "sgd"
    lr: float = Field(default=0.2, gt=0.0, le=10.0)
    momentum: float = Field(default=0.9, ge=0.0, lt=1.0)
    weight_decay: float = Field(default=5e-4, ge=0.0)
    warmup_ratio: float = Field(default=0.2, ge=0.0, lt=1.0)
    label_smoothing: float = Field(default=0.2, ge=0.0, lt=1.0)
    augment: bool = True
    target_accuracy: float | None = Field(
        default=None, gt=0.0, le=1.0, description="report the training time until test accuracy first reaches it"
    )
    eval_every_steps: int | None = Field(default=None, ge=1, description="default: once per epoch")
    compile: bool = False
    bf16: bool = Field(default=True, description="bf16 autocast (GPU only; CPU runs stay fp32)")
    channels_last: bool = Field(default=True, description="GPU only")
    seed: int = Field(default=42, ge=0)
    checkpoint_every_steps: int = Field(default=100, ge=1)
    keep_last: int = Field(default=3, ge=1, le=1000, description=KEEP_LAST)
    best_metric: str | None = Field(default="eval_accuracy", description=BEST_METRIC)
    best_mode: Literal["min", "max"] = "max"
    scaling: RayScaling = Field(default_factory=RayScaling)

    @model_validator(mode="after")
    def _batch_splits_evenly(self) -> ImageTrainConfig:
        return _check_best_metric(_check_global_batch(self), IMAGE_METRICS)


ENTRYPOINT_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*$"


class RuntimeEnv(Strict):
    """The part of Ray's `runtime_env` that ships a user's code to the cluster, the way Ray users already do it:
    `working_dir` (a local folder, uploaded by Ray from the machine that submits the job, i.e. the training worker's,
    or a remote zip URI) is the workers' current directory and on their import path; `pip` installs packages;
    `env_vars` are set in every worker."""

    working_dir: str | None = None
    pip: list[str] = Field(default_factory=list)
    env_vars: dict[str, str] = Field(default_factory=dict)


class CustomTrainConfig(Strict):
    """The user's own Ray Train loop: `entrypoint` names a standard per-worker function (`module:function`), which
    is called with `train_loop_config` on every worker. It trains steps 1..`max_steps`, and reads where to resume and
    where to stop from `ray_jobs.loop` (the ladder's rungs stop it early, a promotion moves the stop)."""

    kind: Literal["custom"] = "custom"
    entrypoint: Annotated[str, StringConstraints(pattern=ENTRYPOINT_PATTERN)] = Field(
        description="`package.module:function`, importable on the Ray workers (installed, or in runtime_env)"
    )
    train_loop_config: dict[str, Any] = Field(default_factory=dict)
    max_steps: int = Field(ge=1, description="the run's whole budget: the LR schedule spans it, rungs cut it")
    seed: int = Field(default=42, ge=0)
    checkpoint_every_steps: int = Field(default=50, ge=1)
    keep_last: int = Field(default=3, ge=1, le=1000, description=KEEP_LAST)
    best_metric: str | None = Field(default=None, description=BEST_METRIC + " (e.g. a `val_loss` the loop reports)")
    best_mode: Literal["min", "max"] = "min"
    scaling: RayScaling = Field(default_factory=RayScaling)
    runtime_env: RuntimeEnv = Field(default_factory=RuntimeEnv)


def _kind(value: Any, missing: str = "text") -> str:
    """Configs written before image runs existed carry no `kind`: they are text fine-tunes (a scale-up's: image)."""
    return (value.get("kind") if isinstance(value, dict) else getattr(value, "kind", None)) or missing


TrainConfig = Annotated[
    Annotated[FineTuneConfig, Tag("text")]
    | Annotated[ImageTrainConfig, Tag("image")]
    | Annotated[CustomTrainConfig, Tag("custom")],
    Discriminator(_kind),
]
ScalableConfig = Annotated[
    Annotated[ImageTrainConfig, Tag("image")] | Annotated[CustomTrainConfig, Tag("custom")],
    Discriminator(lambda value: _kind(value, missing="image")),
]
CONFIG_KINDS: dict[str, type[FineTuneConfig | ImageTrainConfig | CustomTrainConfig]] = {
    "text": FineTuneConfig,
    "image": ImageTrainConfig,
    "custom": CustomTrainConfig,
}


class SnapshotManifest(Strict):
    """What a dataset snapshot holds, written next to its parquet files; the job trusts it instead of re-inferring."""

    kind: Literal["text"] = "text"
    snapshot_id: str
    source: str
    text_field: str
    text_pair_field: str | None
    label_field: str
    task: Literal["classification", "regression"]
    label_names: list[str]
    num_train: int
    num_heldout: int
    tokenizer_id: str


class ImageSnapshotManifest(Strict):
    """An image snapshot: uint8 NHWC arrays (`{split}_x.npy`, `{split}_y.npy`) plus what the job normalises with."""

    kind: Literal["image"] = "image"
    snapshot_id: str
    dataset: Literal["cifar10", "fashion-mnist", "synthetic"]
    source: str
    shape: tuple[int, int, int] = Field(description="height, width, channels")
    label_names: list[str]
    num_train: int
    num_heldout: int
    mean: list[float]
    std: list[float]


class NoSnapshot(Strict):
    """A custom run's loop reads its own data: ttrain freezes none, and records that it did not."""

    kind: Literal["custom"] = "custom"
    snapshot_id: str = "none"


Manifest = Annotated[
    Annotated[SnapshotManifest, Tag("text")]
    | Annotated[ImageSnapshotManifest, Tag("image")]
    | Annotated[NoSnapshot, Tag("custom")],
    Discriminator(_kind),
]


class JobSpec(Strict):
    """Everything one Ray job needs; written to storage by the activity and read by `python -m ray_jobs.<kind>_job`."""

    run_id: Identifier
    ray_job_id: Identifier
    config: TrainConfig
    snapshot_uri: str
    storage_path: str
    resume_from_uri: str | None = None
    resume_from_step: int = 0
    stop_at_step: int | None = Field(
        default=None, ge=1, description="end this job here (a ladder rung); the LR schedule still spans max_steps"
    )
    park_s: float = Field(
        default=0.0, ge=0.0, description="at stop_at_step, wait this long for a promotion before the job ends"
    )
    sweep_id: str | None = Field(default=None, description="the sweep this run is a trial of (MLflow nests it)")
    incarnation: str | None = Field(default=None, description="which start of the run id (`--replace` starts anew)")
