"""A cheap real trainer for sweep benchmarks: logistic regression on hashed bag-of-words of the movie reviews.

Real data, a real learning curve and real sensitivity to lr, weight decay and batch size, at milliseconds per step:
so ladder vs random vs TPE can be compared over many seeds on a 2-core CPU, where one MiniLM segment costs ~40 s.
Checkpointed like the real trainer (weights + step in storage), so a promoted trial resumes from its rung.
"""

from __future__ import annotations

import io
import re
import zlib
from functools import lru_cache

import numpy as np

from orchestration.snapshot import load_rows
from ray_jobs import storage
from ray_jobs.specs import DatasetSource

FEATURES = 1 << 12
ROWS, HELDOUT = 6000, 1000
TOKEN = re.compile(r"[a-z']+")
LR_SCALE = 100.0


@lru_cache(maxsize=1)
def dataset() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    df = load_rows(DatasetSource()).sample(n=ROWS, random_state=0)
    x = np.zeros((ROWS, FEATURES), dtype=np.float32)
    for i, text in enumerate(df["text"].astype(str)):
        for tok in TOKEN.findall(text.lower()):
            x[i, zlib.crc32(tok.encode()) % FEATURES] += 1.0
    x = np.log1p(x)
    x /= np.linalg.norm(x, axis=1, keepdims=True) + 1e-6
    y = df["label"].to_numpy().astype(np.float32)
    return x[HELDOUT:], y[HELDOUT:], x[:HELDOUT], y[:HELDOUT]


def train_segment(
    checkpoint_uri: str, params: dict, seed: int, start: int, stop: int, max_steps: int
) -> tuple[float, int]:
    """Train steps [start, stop) from the checkpoint at `start` (zero weights at 0); returns held-out accuracy."""
    xtr, ytr, xte, yte = dataset()
    # FineTuneConfig caps lr at 1 (right for transformers); a linear model on unit-norm features wants ~1-50
    lr = LR_SCALE * float(params.get("lr", 0.05))
    wd, bs = float(params.get("weight_decay", 0.0)), int(params.get("batch_size", 32))
    w = np.zeros(FEATURES + 1, dtype=np.float64)
    if start > 0:
        saved = np.load(io.BytesIO(storage.read_bytes(checkpoint_uri)))
        if int(saved["step"]) != start:
            raise ValueError(f"checkpoint {checkpoint_uri} holds step {int(saved['step'])}, not {start}")
        w = saved["w"]
    for step in range(start, stop):
        rng = np.random.default_rng(seed * 1_000_003 + step)
        idx = rng.integers(0, len(ytr), bs)
        xb, yb = xtr[idx], ytr[idx]
        p = 1.0 / (1.0 + np.exp(-(xb @ w[:-1] + w[-1])))
        grad = np.append(xb.T @ (p - yb), (p - yb).sum()) / bs + wd * np.append(w[:-1], 0.0)
        w -= lr * (1.0 - step / max_steps) * grad  # linear decay over the full budget, as the real trainer
    buf = io.BytesIO()
    np.savez(buf, w=w, step=stop)
    storage.write_bytes(checkpoint_uri, buf.getvalue())
    accuracy = float((((xte @ w[:-1] + w[-1]) > 0).astype(np.float32) == yte).mean())
    return accuracy, stop
