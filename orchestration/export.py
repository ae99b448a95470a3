"""`ttrain export`: one checkpoint of a run, as a folder the user's own code loads without ttrain.

A text run's checkpoint is already a Hugging Face `save_pretrained` folder (safetensors weights, config, tokenizer);
an image run's is a safetensors state dict. Export copies it without what only resuming needs (optimizer, scheduler,
ttrain's training state), and adds `ttrain_export.json`: which run, step, metrics and config it came from. A custom
run's checkpoint is in the user's own format, so it is copied whole.
Copied straight from the run's storage, as `ttrain metrics` reads it: this machine must reach that storage.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import pyarrow.fs as pafs
from pydantic import BaseModel

from orchestration.types import CheckpointInfo, Model
from ray_jobs import storage
from ray_jobs.checkpointing import RESUME_ONLY

MANIFEST = "ttrain_export.json"


class Exported(Model):
    run_id: str
    kind: str
    step: int
    best_metric: str | None
    is_best: bool
    metrics: dict[str, float]
    content_hash: str
    source_uri: str
    directory: str
    files: list[str]


def check_target(target: str | Path) -> Path:
    """Refused before anything is read: an export never mixes into, nor overwrites, a folder that holds files."""
    if "://" in str(target):  # before Path() folds `s3://b` into `s3:/b`, a local folder nobody meant
        raise ValueError(f"{target} is a URI: export writes a folder on this machine")
    directory = Path(target)
    if directory.exists() and (not directory.is_dir() or any(directory.iterdir())):
        raise ValueError(f"{directory} exists and is not an empty folder: export into a new one")
    return directory


def export_checkpoint(
    checkpoint: CheckpointInfo, directory: Path, kind: str, config: BaseModel, best: CheckpointInfo | None
) -> Exported:
    """Copied into a sibling folder that is renamed into place at the end: a failure halfway (storage, a full disk,
    the checkpoint pruned meanwhile) leaves nothing behind, so the same command can simply be run again."""
    check_target(directory)
    fs, root = storage.resolve(checkpoint.uri)
    if fs.get_file_info(root).type != pafs.FileType.Directory:
        raise ValueError(f"the checkpoint at step {checkpoint.step} is no longer in storage ({checkpoint.uri})")
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    try:
        files = _copy(fs, root, staging, keep_resume_state=kind == "custom")
        if MANIFEST in files:
            raise ValueError(f"the checkpoint holds a file named {MANIFEST}, which export writes")
        exported = Exported(
            run_id=checkpoint.run_id,
            kind=kind,
            step=checkpoint.step,
            best_metric=getattr(config, "best_metric", None),
            is_best=best is not None and best.step == checkpoint.step,
            metrics=checkpoint.metrics,
            content_hash=checkpoint.content_hash,
            source_uri=checkpoint.uri,
            directory=str(directory.resolve()),
            files=files,
        )
        manifest = {**exported.model_dump(mode="json"), "config": config.model_dump(mode="json")}
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True))
        if directory.exists():
            directory.rmdir()  # empty (checked above): os.replace cannot put a folder over it
        os.replace(staging, directory)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return exported


def _copy(fs: pafs.FileSystem, root: str, target: Path, keep_resume_state: bool) -> list[str]:
    """Files only (no folders, no special files), in 4 MiB blocks: a checkpoint can be many GB."""
    files = []
    for info in fs.get_file_info(pafs.FileSelector(root, recursive=True)):
        relative = os.path.relpath(info.path, root)
        if info.type != pafs.FileType.File or (not keep_resume_state and relative in RESUME_ONLY):
            continue
        out = target / relative
        out.parent.mkdir(parents=True, exist_ok=True)
        with fs.open_input_stream(info.path) as src, open(out, "wb") as dst:
            while block := src.read(1 << 22):
                dst.write(block)
        files.append(relative)
    return sorted(files)
