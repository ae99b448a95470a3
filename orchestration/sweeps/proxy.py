"""Cheap real trainers for sweep benchmarks: linear models trained by SGD on real data, at milliseconds per step.

Two tasks, so a sweep strategy is judged where early results do and do not predict the final one:
- `reviews`: logistic regression on hashed bag-of-words of the packaged movie reviews. Scores at 30-90 steps are
  mostly the majority class, so early rungs carry little signal (like a fine-tune's first hundred steps).
- `fashion-mnist`: softmax regression on Fashion-MNIST pixels (the Debian dataset the image tests use). Curves are
  smooth and ordered early, so early stopping has signal to use.
Real learning curves with real sensitivity to lr, weight decay and batch size: ladder vs random vs TPE (and the
peers in `bench/sweep_peers.py`) can be compared over many seeds on a 2-core CPU, where one MiniLM segment costs
~40 s. Checkpointed like the real trainer (weights + step in storage), so a promoted trial resumes from its rung.
"""

from __future__ import annotations

import io
import re
import zlib
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from orchestration.sweeps.models import ProxyTask
from ray_jobs import storage

FEATURES = 1 << 12
ROWS, HELDOUT = 6000, 1000
FASHION_TRAIN, FASHION_HELDOUT = 10_000, 2_000
TOKEN = re.compile(r"[a-z']+")


@dataclass(frozen=True)
class Task:
    xtr: np.ndarray
    ytr: np.ndarray
    xte: np.ndarray
    yte: np.ndarray
    classes: int  # 2: one logit (sigmoid); more: one per class (softmax)
    lr_scale: float  # FineTuneConfig caps lr at 1 (right for transformers); a linear model may want more

    def init(self) -> np.ndarray:
        return np.zeros(self.xtr.shape[1] + 1 if self.classes == 2 else (self.xtr.shape[1] + 1, self.classes))


@lru_cache(maxsize=2)
def task(name: ProxyTask = "reviews") -> Task:
    return _reviews() if name == "reviews" else _fashion_mnist()


def _reviews() -> Task:
    from orchestration.snapshot import load_rows
    from ray_jobs.specs import DatasetSource

    df = load_rows(DatasetSource()).sample(n=ROWS, random_state=0)
    x = np.zeros((ROWS, FEATURES), dtype=np.float32)
    for i, text in enumerate(df["text"].astype(str)):
        for tok in TOKEN.findall(text.lower()):
            x[i, zlib.crc32(tok.encode()) % FEATURES] += 1.0
    x = np.log1p(x)
    x /= np.linalg.norm(x, axis=1, keepdims=True) + 1e-6
    y = df["label"].to_numpy().astype(np.float32)
    return Task(x[HELDOUT:], y[HELDOUT:], x[:HELDOUT], y[:HELDOUT], classes=2, lr_scale=100.0)


def _fashion_mnist() -> Task:
    from orchestration.image_snapshot import load_fashion_mnist
    from ray_jobs.specs import FASHION_MNIST_DIR

    train_x, train_y, test_x, test_y, labels = load_fashion_mnist(FASHION_MNIST_DIR)
    rng = np.random.default_rng(0)
    tr, te = rng.permutation(len(train_y))[:FASHION_TRAIN], rng.permutation(len(test_y))[:FASHION_HELDOUT]
    xtr = train_x[tr].reshape(FASHION_TRAIN, -1).astype(np.float32) / 255.0
    xte = test_x[te].reshape(FASHION_HELDOUT, -1).astype(np.float32) / 255.0
    mean, std = xtr.mean(0), xtr.std(0) + 0.1
    return Task((xtr - mean) / std, train_y[tr], (xte - mean) / std, test_y[te], classes=len(labels), lr_scale=1.0)


def train_steps(t: Task, w: np.ndarray, params: dict, seed: int, start: int, stop: int, max_steps: int) -> np.ndarray:
    """SGD steps [start, stop) with the learning rate decayed linearly over the full budget, as the real trainer;
    each step's batch depends only on (seed, step), so a resumed trial trains exactly as an uninterrupted one."""
    lr = t.lr_scale * float(params.get("lr", 0.05))
    wd, bs = float(params.get("weight_decay", 0.0)), int(params.get("batch_size", 32))
    w = w.copy()
    for step in range(start, stop):
        rng = np.random.default_rng(seed * 1_000_003 + step)
        idx = rng.integers(0, len(t.ytr), bs)
        xb, yb = t.xtr[idx], t.ytr[idx]
        if t.classes == 2:
            p = 1.0 / (1.0 + np.exp(-(xb @ w[:-1] + w[-1])))
            grad = np.append(xb.T @ (p - yb), (p - yb).sum()) / bs + wd * np.append(w[:-1], 0.0)
        else:
            logits = xb @ w[:-1] + w[-1]
            p = np.exp(logits - logits.max(axis=1, keepdims=True))
            p /= p.sum(axis=1, keepdims=True)
            p[np.arange(bs), yb] -= 1.0
            grad = np.vstack([xb.T @ p, p.sum(axis=0)]) / bs
            grad[:-1] += wd * w[:-1]
        w -= lr * (1.0 - step / max_steps) * grad
    return w


def score(t: Task, w: np.ndarray) -> float:
    """Held-out accuracy."""
    logits = t.xte @ w[:-1] + w[-1]
    predicted = (logits > 0).astype(np.float32) if t.classes == 2 else logits.argmax(axis=1)
    return float((predicted == t.yte).mean())


def train_segment(
    checkpoint_uri: str, params: dict, seed: int, start: int, stop: int, max_steps: int, name: ProxyTask = "reviews"
) -> tuple[float, int]:
    """Train steps [start, stop) from the checkpoint at `start` (zero weights at 0); returns held-out accuracy."""
    t = task(name)
    w = t.init()
    if start > 0:
        saved = np.load(io.BytesIO(storage.read_bytes(checkpoint_uri)))
        if int(saved["step"]) != start:
            raise ValueError(f"checkpoint {checkpoint_uri} holds step {int(saved['step'])}, not {start}")
        w = saved["w"]
    w = train_steps(t, w, params, seed, start, stop, max_steps)
    buf = io.BytesIO()
    np.savez(buf, w=w, step=stop)
    storage.write_bytes(checkpoint_uri, buf.getvalue())
    return score(t, w), stop
