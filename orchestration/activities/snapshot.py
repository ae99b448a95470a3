"""Dataset snapshot activity: validate the model and data before any Ray job exists, then freeze the rows."""

from __future__ import annotations

from pathlib import Path

from temporalio import activity
from transformers import AutoConfig, AutoTokenizer, PretrainedConfig

from orchestration import image_snapshot, snapshot
from orchestration.activities.heartbeat import in_child
from orchestration.errors import invalid
from orchestration.types import DatasetSnapshot, SnapshotRequest
from ray_jobs.models import ModelNotFound, resolve_model_path, tokenizer_identity
from ray_jobs.specs import CustomTrainConfig, FineTuneConfig, ImageTrainConfig, NoSnapshot, SnapshotManifest


def build(req: SnapshotRequest) -> DatasetSnapshot:
    cfg = req.config
    if isinstance(cfg, ImageTrainConfig):
        return build_images(req, cfg)
    if isinstance(cfg, CustomTrainConfig):
        return no_snapshot(cfg)
    try:
        model_path = resolve_model_path(cfg.model)
        AutoTokenizer.from_pretrained(model_path)  # proves the model reference loads before any compute is spent
        model_config = AutoConfig.from_pretrained(model_path)
        manifest, splits = snapshot.build_snapshot(cfg.dataset, tokenizer_identity(model_path), cfg.seed)
    except (ModelNotFound, snapshot.DatasetError) as exc:
        raise invalid(str(exc)) from None
    except OSError as exc:
        raise invalid(f"model {cfg.model!r} cannot be loaded: {exc}") from None
    if manifest.num_train < cfg.batch_size:
        raise invalid(f"{manifest.num_train} training rows cannot fill one batch of {cfg.batch_size}")
    if problem := model_mismatch(cfg, model_config, manifest):
        raise invalid(problem)
    return _publish(req, manifest, snapshot.parquet_files(splits))


def model_mismatch(cfg: FineTuneConfig, model_config: PretrainedConfig, manifest: SnapshotManifest) -> str | None:
    """What the job would only find out inside the training loop, a deterministic failure on every attempt."""
    positions = getattr(model_config, "max_position_embeddings", None)
    if positions is not None and cfg.max_seq_length > positions:
        return f"max_seq_length {cfg.max_seq_length} exceeds the {positions} positions of model {cfg.model!r}"
    heads = [a for a in model_config.architectures or [] if a.endswith("ForSequenceClassification")]
    labels = 1 if manifest.task == "regression" else len(manifest.label_names)
    if heads and model_config.num_labels != labels:
        return (
            f"model {cfg.model!r} already has a classification head for {model_config.num_labels} labels; "
            f"the data has {labels} (use its base encoder, or data with the same labels)"
        )
    return None


def no_snapshot(cfg: CustomTrainConfig) -> DatasetSnapshot:
    """A custom loop reads its own data. What can be checked before compute is checked here, on the machine that
    submits the job: Ray uploads a local `working_dir` from it."""
    working_dir = cfg.runtime_env.working_dir
    if working_dir and "://" not in working_dir and not Path(working_dir).is_dir():
        raise invalid(f"runtime_env.working_dir {working_dir!r} is not a folder on this training worker")
    return DatasetSnapshot(snapshot_id=NoSnapshot().snapshot_id, uri="", manifest=NoSnapshot(), reused=True)


def build_images(req: SnapshotRequest, cfg: ImageTrainConfig) -> DatasetSnapshot:
    try:
        manifest, files = image_snapshot.build_image_snapshot(cfg)
    except snapshot.DatasetError as exc:
        raise invalid(str(exc)) from None
    if manifest.num_train < cfg.batch_size:
        raise invalid(f"{manifest.num_train} training images cannot fill one batch of {cfg.batch_size}")
    return _publish(req, manifest, files)


def _publish(req: SnapshotRequest, manifest, files: dict[str, bytes]) -> DatasetSnapshot:
    uri, reused = snapshot.publish_snapshot(req.storage_uri, manifest, files)
    return DatasetSnapshot(snapshot_id=manifest.snapshot_id, uri=uri, manifest=manifest, reused=reused)


@activity.defn
async def create_snapshot(req: SnapshotRequest) -> DatasetSnapshot:
    return await in_child(build, req)
