"""Dataset snapshot activity: validate the model and data before any Ray job exists, then freeze the rows."""

from __future__ import annotations

import asyncio

from temporalio import activity
from transformers import AutoTokenizer

from orchestration import image_snapshot, snapshot
from orchestration.errors import invalid
from orchestration.types import DatasetSnapshot, SnapshotRequest
from ray_jobs.models import ModelNotFound, resolve_model_path, tokenizer_identity
from ray_jobs.specs import ImageTrainConfig


def build(req: SnapshotRequest) -> DatasetSnapshot:
    cfg = req.config
    if isinstance(cfg, ImageTrainConfig):
        return build_images(req, cfg)
    try:
        model_path = resolve_model_path(cfg.model)
        AutoTokenizer.from_pretrained(model_path)  # proves the model reference loads before any compute is spent
        manifest, splits = snapshot.build_snapshot(cfg.dataset, tokenizer_identity(model_path), cfg.seed)
    except (ModelNotFound, snapshot.DatasetError) as exc:
        raise invalid(str(exc)) from None
    except OSError as exc:
        raise invalid(f"model {cfg.model!r} cannot be loaded: {exc}") from None
    if manifest.num_train < cfg.batch_size:
        raise invalid(f"{manifest.num_train} training rows cannot fill one batch of {cfg.batch_size}")
    return _publish(req, manifest, snapshot.parquet_files(splits))


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
    return await asyncio.to_thread(build, req)
