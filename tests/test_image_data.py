"""Image snapshots, augmentation and scale-up arithmetic: pure logic, no servers."""

from __future__ import annotations

import io
import os
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from orchestration import scaleup
from orchestration.image_snapshot import build_image_snapshot, load_cifar10
from orchestration.snapshot import DatasetError
from orchestration.types import ClusterCapacity, RunOptions, ScaleUpRequest, ScaleUpResult, ScaleUpRow
from ray_jobs import image_data, sampling
from ray_jobs.specs import FASHION_MNIST_DIR, CustomTrainConfig, ImageTrainConfig


def _cifar_batch(n: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    return {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), b"labels": rng.integers(0, 10, n).tolist()}


def _cifar_archive(tmp_path: Path, n: int = 4) -> Path:
    """The python archive's layout, with tiny batches: the real one is 170 MB and cannot be fetched here."""
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for i in range(1, 6):
        (folder / f"data_batch_{i}").write_bytes(pickle.dumps(_cifar_batch(n, i), protocol=2))
    (folder / "test_batch").write_bytes(pickle.dumps(_cifar_batch(n, 9), protocol=2))
    names = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse", b"ship", b"truck"]
    (folder / "batches.meta").write_bytes(pickle.dumps({b"label_names": names}, protocol=2))
    archive = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname="cifar-10-batches-py")
    return archive


def test_cifar_archive_and_folder_load_the_same_images(tmp_path: Path) -> None:
    archive = _cifar_archive(tmp_path)
    from_tar = load_cifar10(str(archive))
    from_dir = load_cifar10(str(tmp_path / "cifar-10-batches-py"))
    train_x, train_y, test_x, _, names = from_tar
    assert train_x.shape == (20, 32, 32, 3) and test_x.shape == (4, 32, 32, 3) and train_x.dtype == np.uint8
    assert names[0] == "airplane" and len(names) == 10
    # rows are CHW-flattened in the archive: pixel (0, 0) of channel 1 sits at offset 1024
    assert train_x[0, 0, 0, 1] == _cifar_batch(4, 1)[b"data"][0, 1024]
    assert train_y.tolist()[:4] == _cifar_batch(4, 1)[b"labels"]
    for a, b in zip(from_tar[:4], from_dir[:4], strict=True):
        assert np.array_equal(a, b)


def test_a_pickle_that_builds_anything_but_arrays_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "evil"
    folder.mkdir()
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch", "batches.meta"]:
        (folder / name).write_bytes(pickle.dumps(_cifar_batch(2, 0), protocol=2))
    (folder / "data_batch_1").write_bytes(pickle.dumps(os.system, protocol=2))
    with pytest.raises(DatasetError, match=r"refusing to unpickle posix\.system"):
        load_cifar10(str(folder))


def test_cifar_errors_say_where_to_get_the_data(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"cifar-10-python\.tar\.gz"):
        build_image_snapshot(ImageTrainConfig(dataset="cifar10", data_path=str(tmp_path / "missing")))
    with pytest.raises(DatasetError, match="needs data_path"):
        build_image_snapshot(ImageTrainConfig(dataset="cifar10"))
    with pytest.raises(DatasetError, match="lacks data_batch_1"):
        load_cifar10(str(tmp_path))


def test_hf_parquet_folder(tmp_path: Path) -> None:
    def png(seed: int) -> bytes:
        buf = io.BytesIO()
        Image.fromarray(np.random.default_rng(seed).integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(buf, "PNG")
        return buf.getvalue()

    for split, n in (("train", 6), ("test", 3)):
        table = pa.table({"img": [{"bytes": png(i), "path": None} for i in range(n)], "label": list(range(n))})
        pq.write_table(table, tmp_path / f"{split}-00000-of-00001.parquet")
    train_x, train_y, test_x, _, _ = load_cifar10(str(tmp_path))
    assert train_x.shape == (6, 32, 32, 3) and test_x.shape == (3, 32, 32, 3)
    assert np.array_equal(train_x[2], np.asarray(Image.open(io.BytesIO(png(2)))))
    assert train_y.tolist() == list(range(6))


def test_fashion_mnist_from_the_debian_package() -> None:
    manifest, files = build_image_snapshot(ImageTrainConfig(dataset="fashion-mnist", max_train_rows=1000))
    assert manifest.shape == (28, 28, 1) and manifest.num_train == 1000 and manifest.num_heldout == 10_000
    assert manifest.label_names[9] == "Ankle boot" and manifest.source == FASHION_MNIST_DIR
    y = np.load(io.BytesIO(files["heldout_y.npy"]), allow_pickle=False)
    assert sorted(np.bincount(y).tolist()) == [1000] * 10  # the official test set: 1,000 per class
    again, _ = build_image_snapshot(ImageTrainConfig(dataset="fashion-mnist", max_train_rows=1000))
    other, _ = build_image_snapshot(ImageTrainConfig(dataset="fashion-mnist", max_train_rows=1000, seed=1))
    assert again.snapshot_id == manifest.snapshot_id != other.snapshot_id


def test_missing_fashion_mnist_names_the_package(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="apt-get install dataset-fashion-mnist"):
        build_image_snapshot(ImageTrainConfig(dataset="fashion-mnist", data_path=str(tmp_path)))


def test_synthetic_is_labelled_as_such() -> None:
    manifest, _ = build_image_snapshot(ImageTrainConfig(dataset="synthetic", synthetic_rows=64))
    assert manifest.source == "synthetic:64" and manifest.label_names[0].startswith("synthetic")


@pytest.mark.parametrize("world", [2, 4])
def test_rank_shares_of_a_step_are_the_one_worker_batch(world: int) -> None:
    """Batch rows and their augmentation depend on the step alone: N workers' shares rebuild one worker's batch."""
    x = torch.randint(0, 256, (64, 3, 8, 8), dtype=torch.uint8)
    order = sampling.epoch_order(64, 7, 0)
    aug = image_data.augmentation(7, step=3, batch_size=16)
    one = image_data.augment(x[sampling.batch_indices(order, 3, 16, 0, 1)], *aug)
    shares = [
        image_data.augment(x[sampling.batch_indices(order, 3, 16, r, world)], *(t[r::world] for t in aug))
        for r in range(world)
    ]
    rebuilt = torch.empty_like(one)
    for r, share in enumerate(shares):
        rebuilt[r::world] = share
    assert torch.equal(rebuilt, one)
    assert not torch.equal(one, x[sampling.batch_indices(order, 3, 16, 0, 1)])  # augmentation did something


def _request(batch: int, scaling: str = "strong", **scaling_cfg) -> ScaleUpRequest:
    return ScaleUpRequest(
        scaleup_id="s",
        config=ImageTrainConfig(dataset="synthetic", batch_size=batch, scaling=scaling_cfg),
        workers=[1, 2, 4],
        scaling=scaling,
        options=RunOptions(storage_uri="/tmp/x"),
    )


def test_strong_and_weak_scaling_configs() -> None:
    strong, weak = _request(96), _request(96, "weak")
    assert [scaleup.config_for(strong, n).batch_size for n in (1, 2, 4)] == [96, 96, 96]
    assert [scaleup.config_for(weak, n).batch_size for n in (1, 2, 4)] == [96, 192, 384]
    assert scaleup.config_for(strong, 4).scaling.num_workers == 4


def test_a_custom_loop_scales_its_train_loop_batch_or_only_its_workers() -> None:
    def request(loop_config: dict, scaling: str) -> ScaleUpRequest:
        config = CustomTrainConfig(entrypoint="pkg.mod:fn", max_steps=10, train_loop_config=loop_config)
        return ScaleUpRequest(
            scaleup_id="s", config=config, workers=[1, 2], scaling=scaling, options=RunOptions(storage_uri="/x")
        )

    weak = request({"batch_size": 32, "lr": 0.1}, "weak")
    assert [scaleup.config_for(weak, n).train_loop_config for n in (1, 2)] == [
        {"batch_size": 32, "lr": 0.1},
        {"batch_size": 64, "lr": 0.1},
    ]
    assert scaleup.config_for(weak, 2).scaling.num_workers == 2
    unknown = request({"lr": 0.1}, "weak")  # no batch ttrain knows of: only the worker count changes
    assert scaleup.config_for(unknown, 2).train_loop_config == {"lr": 0.1} and scaleup.global_batch(unknown, 2) is None
    cpus = ClusterCapacity(resources={"CPU": 4}, nodes=1)
    assert "does not split" in scaleup.does_not_fit(request({"batch_size": 33}, "strong"), 2, cpus)
    assert scaleup.does_not_fit(unknown, 2, cpus) is None
    assert scaleup.throughput(weak, {"samples_per_s": 5.0, "images_per_s": 9.0}) == 5.0
    assert scaleup.throughput(_request(96), {"samples_per_s": 5.0, "images_per_s": 9.0}) == 9.0
    old = ScaleUpRequest.model_validate({**_request(96).model_dump(mode="json"), "config": {"batch_size": 96}})
    assert isinstance(old.config, ImageTrainConfig)  # a request of before custom scale-ups, with no kind


def test_a_scaleup_where_nothing_fitted_still_draws_its_plot() -> None:
    result = ScaleUpResult(
        scaleup_id="s",
        scaling="strong",
        dataset="custom loop m:f",
        synthetic=False,
        target_accuracy=None,
        baseline_workers=None,
        rows=[ScaleUpRow(workers=64, global_batch=None, state="does-not-fit", detail="needs 64 CPU")],
        throughput="samples/s",
    )
    assert scaleup.plot_png(result).startswith(b"\x89PNG")


def test_what_does_not_fit_is_said() -> None:
    cpus = ClusterCapacity(resources={"CPU": 3.0}, nodes=1)
    assert scaleup.does_not_fit(_request(96), 2, cpus) is None
    assert scaleup.does_not_fit(_request(96), 4, cpus) == "needs 4 CPU, the cluster has 3"
    assert scaleup.does_not_fit(_request(96, use_gpu=True), 1, cpus) == "needs 1 GPU, the cluster has 0"
    assert "does not split" in scaleup.does_not_fit(_request(90), 4, ClusterCapacity(resources={"CPU": 9}, nodes=1))


def test_efficiency_is_per_worker_throughput_against_the_smallest_completed_count() -> None:
    rows = [
        ScaleUpRow(workers=1, global_batch=8, state="does-not-fit"),
        ScaleUpRow(workers=2, global_batch=8, state="completed", images_per_s=200.0),
        ScaleUpRow(workers=4, global_batch=8, state="completed", images_per_s=300.0),
        ScaleUpRow(workers=8, global_batch=8, state="failed"),
    ]
    out, baseline = scaleup.with_efficiency(rows)
    assert baseline == 2
    assert [r.efficiency for r in out] == [None, 1.0, 0.75, None]
