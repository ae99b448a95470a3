"""Image dataset snapshots: CIFAR-10, Fashion-MNIST or synthetic images, frozen as content-addressed uint8 arrays.

The activity reads the source once (an archive, a parquet folder, IDX files), validates it, and publishes
`{train,heldout}_{x,y}.npy` next to a manifest, so every Ray worker on every node loads the same bytes from the
storage URI without a local copy of the dataset. The held-out split is the dataset's official test set.
Pure data code: no torch, no ray, no temporalio.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import pickle
import tarfile
from pathlib import Path

import numpy as np

from orchestration.snapshot import DatasetError
from ray_jobs.specs import FASHION_MNIST_DIR, ImageSnapshotManifest, ImageTrainConfig

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
FASHION_MNIST_LABELS = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]  # fmt: skip
# what a CIFAR batch pickle may build: numpy arrays and nothing else (a pickle is code otherwise)
PICKLE_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),  # how protocol-2 pickles written by Python 3 carry an array's bytes
}

Arrays = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, list[str]]  # train x/y, test x/y, label names


class _ArraysOnly(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) not in PICKLE_ALLOWED:
            raise DatasetError(f"refusing to unpickle {module}.{name}: a CIFAR batch holds only numpy arrays")
        return super().find_class(module, name)


def _unpickle(data: bytes) -> dict:
    return _ArraysOnly(io.BytesIO(data), encoding="bytes").load()


def load_cifar10(path: str) -> Arrays:
    """The python archive (`cifar-10-python.tar.gz`), its extracted folder, or a folder of HF parquet files."""
    p = Path(path)
    if p.is_dir() and list(p.rglob("*.parquet")):
        return load_parquet(p)
    members: dict[str, bytes] = {}
    if p.is_file():
        try:
            with tarfile.open(p) as tar:
                for m in tar.getmembers():
                    if m.isfile():
                        members[os.path.basename(m.name)] = tar.extractfile(m).read()
        except tarfile.TarError as exc:
            raise DatasetError(f"{path} is not the CIFAR-10 python archive: {exc}") from None
    elif p.is_dir():
        members = {f.name: f.read_bytes() for f in p.rglob("*") if f.is_file()}
    needed = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch", "batches.meta"]
    if missing := [n for n in needed if n not in members]:
        raise DatasetError(f"{path} lacks {', '.join(missing)}: not the CIFAR-10 python version ({CIFAR10_URL})")

    def batch(name: str) -> tuple[np.ndarray, np.ndarray]:
        d = _unpickle(members[name])
        x = np.asarray(d[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
        return np.ascontiguousarray(x), np.asarray(d[b"labels"], dtype=np.int64)

    train = [batch(f"data_batch_{i}") for i in range(1, 6)]
    test_x, test_y = batch("test_batch")
    names = [n.decode() for n in _unpickle(members["batches.meta"])[b"label_names"]]
    return np.concatenate([x for x, _ in train]), np.concatenate([y for _, y in train]), test_x, test_y, names


def load_parquet(folder: Path) -> Arrays:
    """HF layout: `*train*.parquet` and `*test*.parquet` with an encoded image column and an int `label`."""
    import pyarrow.parquet as pq
    from PIL import Image

    def split(word: str) -> tuple[np.ndarray, np.ndarray]:
        files = sorted(f for f in folder.rglob("*.parquet") if word in f.name)
        if not files:
            raise DatasetError(f"{folder} has no *{word}*.parquet file")
        table = pq.read_table(files[0]) if len(files) == 1 else pq.ParquetDataset(files).read()
        image_col = next((c for c in ("img", "image") if c in table.column_names), None)
        if image_col is None or "label" not in table.column_names:
            raise DatasetError(f"{files[0]} needs an 'img' or 'image' column and a 'label' column")
        images = [np.asarray(Image.open(io.BytesIO(cell["bytes"]))) for cell in table.column(image_col).to_pylist()]
        x = np.stack(images).astype(np.uint8)
        return (x[..., None] if x.ndim == 3 else x), np.asarray(table.column("label").to_pylist(), np.int64)

    train_x, train_y = split("train")
    test_x, test_y = split("test")
    classes = int(max(train_y.max(), test_y.max())) + 1
    return train_x, train_y, test_x, test_y, [str(i) for i in range(classes)]


def _idx(path: Path) -> np.ndarray:
    """An IDX file (gzipped or not): big-endian magic, dims, then uint8 data."""
    raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    ndim = raw[3]
    dims = np.frombuffer(raw, dtype=">u4", count=ndim, offset=4)
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def load_fashion_mnist(path: str) -> Arrays:
    folder = Path(path)

    def find(stem: str) -> Path:
        for name in (f"{stem}.gz", stem):
            if (folder / name).is_file():
                return folder / name
        raise DatasetError(
            f"Fashion-MNIST file {stem}(.gz) not found in {folder}; install it with "
            "`apt-get install dataset-fashion-mnist` (Debian/Ubuntu) or set data_path to a folder of the IDX files"
        )

    train_x, train_y = _idx(find("train-images-idx3-ubyte")), _idx(find("train-labels-idx1-ubyte"))
    test_x, test_y = _idx(find("t10k-images-idx3-ubyte")), _idx(find("t10k-labels-idx1-ubyte"))
    return (
        train_x[..., None],
        train_y.astype(np.int64),
        test_x[..., None],
        test_y.astype(np.int64),
        FASHION_MNIST_LABELS,
    )


def synthetic(rows: int, seed: int) -> Arrays:
    """Random 32x32x3 images with random labels: for throughput only, never for accuracy."""
    rng = np.random.default_rng(seed)
    test_rows = max(1, rows // 10)
    x = rng.integers(0, 256, size=(rows + test_rows, 32, 32, 3), dtype=np.uint8)
    y = rng.integers(0, 10, size=rows + test_rows).astype(np.int64)
    return x[:rows], y[:rows], x[rows:], y[rows:], [f"synthetic-{i}" for i in range(10)]


def load(cfg: ImageTrainConfig) -> tuple[Arrays, str]:
    if cfg.dataset == "synthetic":
        return synthetic(cfg.synthetic_rows, cfg.seed), f"synthetic:{cfg.synthetic_rows}"
    if cfg.dataset == "fashion-mnist":
        path = cfg.data_path or FASHION_MNIST_DIR
        return load_fashion_mnist(path), path
    if cfg.data_path is None:
        raise DatasetError(f"dataset cifar10 needs data_path: download {CIFAR10_URL} (or the HF parquet files)")
    if not os.path.exists(cfg.data_path):
        raise DatasetError(f"CIFAR-10 data_path {cfg.data_path!r} does not exist; get the archive from {CIFAR10_URL}")
    return load_cifar10(cfg.data_path), cfg.data_path


def build_image_snapshot(cfg: ImageTrainConfig) -> tuple[ImageSnapshotManifest, dict[str, bytes]]:
    (train_x, train_y, test_x, test_y, names), source = load(cfg)
    if len(train_x) != len(train_y) or len(test_x) != len(test_y):
        raise DatasetError(f"{source}: image and label counts differ")
    if cfg.max_train_rows is not None and len(train_x) > cfg.max_train_rows:
        keep = np.sort(np.random.default_rng(cfg.seed).choice(len(train_x), cfg.max_train_rows, replace=False))
        train_x, train_y = train_x[keep], train_y[keep]
    arrays = {"train_x": train_x, "train_y": train_y, "heldout_x": test_x, "heldout_y": test_y}
    h = hashlib.sha256(json.dumps({"dataset": cfg.dataset, "labels": names}).encode())
    for name, array in arrays.items():
        h.update(name.encode())
        h.update(np.ascontiguousarray(array).tobytes())
    scaled = train_x.reshape(-1, train_x.shape[-1]).astype(np.float64) / 255.0
    manifest = ImageSnapshotManifest(
        snapshot_id="img-" + h.hexdigest()[:20],
        dataset=cfg.dataset,
        source=source,
        shape=tuple(int(d) for d in train_x.shape[1:]),
        label_names=names,
        num_train=len(train_x),
        num_heldout=len(test_x),
        mean=scaled.mean(axis=0).tolist(),
        std=scaled.std(axis=0).tolist(),
    )
    return manifest, {f"{name}.npy": _npy(array) for name, array in arrays.items()}


def _npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array), allow_pickle=False)
    return buf.getvalue()
