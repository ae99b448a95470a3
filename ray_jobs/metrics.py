"""Evaluation metrics over plain arrays: pure numpy, unit-tested, shared by evaluation and the training job.

Each report carries the trivial baseline (majority class, or the training mean for regression) and the
improvement over it, because an accuracy means little until you know what guessing would have scored.
"""

from __future__ import annotations

import numpy as np


def classification_report(logits: np.ndarray, labels: np.ndarray, label_names: list[str], train_majority: int) -> dict:
    """Accuracy, macro-F1, per-class precision/recall/F1, mean cross-entropy, confusion matrix, majority baseline."""
    k = len(label_names)
    pred = logits.argmax(-1)
    shifted = logits - logits.max(-1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
    loss = float(-log_probs[np.arange(len(labels)), labels].mean())
    confusion = np.zeros((k, k), dtype=np.int64)
    np.add.at(confusion, (labels, pred), 1)
    tp = np.diag(confusion).astype(float)
    predicted, actual = confusion.sum(0).astype(float), confusion.sum(1).astype(float)
    precision = np.divide(tp, predicted, out=np.zeros(k), where=predicted > 0)
    recall = np.divide(tp, actual, out=np.zeros(k), where=actual > 0)
    f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros(k), where=(precision + recall) > 0)
    accuracy = float(tp.sum() / len(labels))
    baseline = float((labels == train_majority).mean())
    return {
        "task": "classification",
        "examples": len(labels),
        "accuracy": accuracy,
        "macro_f1": float(f1.mean()),
        "loss": loss,
        "per_class": {
            name: {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
            for name, p, r, f, s in zip(label_names, precision, recall, f1, actual, strict=True)
        },
        "confusion_matrix": confusion.tolist(),
        "baseline": {"name": f"majority class {label_names[train_majority]!r}", "accuracy": baseline},
        "improvement_over_baseline": accuracy - baseline,
    }


def _ranks(x: np.ndarray) -> np.ndarray:
    """Average ranks (ties share their mean rank), as Spearman's rho needs."""
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x))
    ranks[order] = np.arange(1, len(x) + 1)
    _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    sums = np.bincount(inverse, weights=ranks)
    return (sums / counts)[inverse]


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    if a.std() == 0 or b.std() == 0:
        return 0.0
    return float(np.corrcoef(a, b)[0, 1])


def regression_report(pred: np.ndarray, target: np.ndarray, train_mean: float) -> dict:
    mse = float(np.mean((pred - target) ** 2))
    baseline = float(np.mean((train_mean - target) ** 2))
    return {
        "task": "regression",
        "examples": len(target),
        "mse": mse,
        "mae": float(np.mean(np.abs(pred - target))),
        "pearson": _pearson(pred, target),
        "spearman": _pearson(_ranks(pred), _ranks(target)),
        "loss": mse,
        "baseline": {"name": f"training mean {train_mean:.4f}", "mse": baseline},
        "improvement_over_baseline": baseline - mse,
    }
