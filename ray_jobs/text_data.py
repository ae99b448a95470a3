"""Snapshot rows → tokenized tensors with fixed shapes (the batch order is `ray_jobs.sampling`'s)."""

from __future__ import annotations

import io

import pyarrow.parquet as pq
import torch

from ray_jobs import storage
from ray_jobs.specs import SnapshotManifest


def read_manifest(snapshot_uri: str) -> SnapshotManifest:
    return SnapshotManifest.model_validate(storage.read_json(storage.join(snapshot_uri, "manifest.json")))


def read_split(snapshot_uri: str, split: str) -> dict[str, list]:
    table = pq.read_table(io.BytesIO(storage.read_bytes(storage.join(snapshot_uri, f"{split}.parquet"))))
    return table.to_pydict()


def tokenize(tokenizer, rows: dict[str, list], max_seq_length: int, regression: bool) -> dict[str, torch.Tensor]:
    """Pad once to the longest row (capped): fixed shapes keep DDP buckets and resume bit-identical."""
    enc = tokenizer(
        rows["text"],
        rows.get("text_pair"),
        truncation=True,
        max_length=max_seq_length,
        padding="longest",
        return_tensors="pt",
    )
    dtype = torch.float32 if regression else torch.long
    return {
        "input_ids": enc["input_ids"],
        "attention_mask": enc["attention_mask"],
        "labels": torch.tensor(rows["label"], dtype=dtype),
    }


def trim_padding(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop columns that are padding in every row of this batch: the same rows always give the same shape."""
    width = int(batch["attention_mask"].sum(dim=1).max())
    return {k: (v[:, :width] if v.dim() == 2 else v) for k, v in batch.items()}
