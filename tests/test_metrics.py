"""Evaluation metrics on hand-checked arrays."""

from __future__ import annotations

import numpy as np
import pytest

from ray_jobs.metrics import _ranks, classification_report, regression_report


def test_classification_report_counts_and_baseline():
    logits = np.array([[2.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 3.0]])
    labels = np.array([0, 1, 1, 1])
    r = classification_report(logits, labels, ["neg", "pos"], train_majority=1)
    assert r["accuracy"] == pytest.approx(0.75)
    assert r["confusion_matrix"] == [[1, 0], [1, 2]]
    assert r["per_class"]["neg"] == {"precision": 0.5, "recall": 1.0, "f1": pytest.approx(2 / 3), "support": 1}
    assert r["per_class"]["pos"]["precision"] == 1.0
    assert r["per_class"]["pos"]["recall"] == pytest.approx(2 / 3)
    assert r["macro_f1"] == pytest.approx((2 / 3 + 0.8) / 2)
    assert r["baseline"]["accuracy"] == pytest.approx(0.75)
    assert r["improvement_over_baseline"] == pytest.approx(0.0)
    expected_loss = -np.mean(
        [np.log(np.exp(row[y]) / np.exp(row).sum()) for row, y in zip(logits, labels, strict=True)]
    )
    assert r["loss"] == pytest.approx(expected_loss)


def test_classification_report_never_divides_by_zero_for_an_unpredicted_class():
    r = classification_report(np.array([[1.0, 0.0, 0.0]] * 3), np.array([0, 1, 2]), ["a", "b", "c"], 0)
    assert r["per_class"]["b"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}
    assert r["accuracy"] == pytest.approx(1 / 3)


def test_ranks_share_ties():
    assert _ranks(np.array([3.0, 1.0, 1.0, 2.0])).tolist() == [4.0, 1.5, 1.5, 3.0]


def test_regression_report():
    r = regression_report(np.array([1.0, 2.0, 3.0]), np.array([1.0, 2.0, 4.0]), train_mean=2.0)
    assert r["mse"] == pytest.approx(1 / 3)
    assert r["mae"] == pytest.approx(1 / 3)
    assert r["spearman"] == pytest.approx(1.0)
    assert r["pearson"] == pytest.approx(np.corrcoef([1, 2, 3], [1, 2, 4])[0, 1])
    assert r["baseline"]["mse"] == pytest.approx(5 / 3)
    assert r["improvement_over_baseline"] == pytest.approx(4 / 3)
    flat = regression_report(np.array([1.0, 1.0]), np.array([0.0, 2.0]), 1.0)
    assert flat["pearson"] == 0.0  # constant predictions: no correlation rather than NaN
