"""Frame-level metrics against values worked out by hand."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from forecaster.offline.detection_metrics import (
    UndefinedMetricWarning,
    best_f1,
    eer,
    roc_auc,
    roc_curve,
    undefined_reason,
)


def pairwise_auc(labels: list[int], scores: list[float]) -> float:
    """P(score of an anomalous frame > score of a normal one), ties counting one half."""
    pos = [s for y, s in zip(labels, scores, strict=True) if y]
    neg = [s for y, s in zip(labels, scores, strict=True) if not y]
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in itertools.product(pos, neg))
    return wins / (len(pos) * len(neg))


def test_auc_separable_reversed_and_known_values() -> None:
    assert roc_auc([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9]) == 1.0
    assert roc_auc([0, 0, 1, 1], [0.9, 0.8, 0.2, 0.1]) == 0.0
    assert roc_auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == 0.75
    assert roc_auc([True, False], [2, 1]) == 1.0


def test_auc_ties_count_one_half() -> None:
    assert roc_auc([0, 1, 0, 1], [1, 1, 1, 1]) == 0.5
    # one tie between a positive and a negative: 3 wins + 0.5 of 4 pairs
    assert roc_auc([0, 0, 1, 1], [0.1, 0.5, 0.5, 0.9]) == 0.875


def test_auc_matches_pairwise_definition_on_random_data_with_ties() -> None:
    rng = np.random.default_rng(0)
    for _ in range(20):
        n = int(rng.integers(2, 60))
        labels = rng.integers(0, 2, n)
        labels[0], labels[1] = 0, 1
        scores = rng.integers(0, 6, n).astype(float)  # many ties
        assert roc_auc(labels, scores) == pytest.approx(
            pairwise_auc(labels.tolist(), scores.tolist()), abs=1e-12)


def test_one_class_gives_nan_with_reason() -> None:
    with pytest.warns(UndefinedMetricWarning, match="all 3 frames are normal"):
        assert math.isnan(roc_auc([0, 0, 0], [1, 2, 3]))
    with pytest.warns(UndefinedMetricWarning, match="anomalous"):
        assert math.isnan(eer([1, 1], [1, 2]))
    assert undefined_reason([1, 1]) is not None and undefined_reason([0, 1]) is None
    with pytest.warns(UndefinedMetricWarning):
        assert math.isnan(best_f1([0, 0], [1, 2])[0])


def test_bad_input_is_rejected() -> None:
    with pytest.raises(ValueError, match="length"):
        roc_auc([0, 1], [1.0])
    with pytest.raises(ValueError, match="0 or 1"):
        roc_auc([0, 2], [1.0, 2.0])
    with pytest.raises(ValueError, match="NaN"):
        roc_auc([0, 1], [1.0, math.nan])


def test_roc_curve_points_and_area() -> None:
    curve = roc_curve([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8])
    np.testing.assert_allclose(curve.fpr, [0, 0, 0.5, 0.5, 1])
    np.testing.assert_allclose(curve.tpr, [0, 0.5, 0.5, 1, 1])
    assert curve.thresholds[0] == math.inf
    np.testing.assert_allclose(curve.thresholds[1:], [0.8, 0.4, 0.35, 0.1])
    # tied scores form one point
    tied = roc_curve([0, 1, 0, 1], [1, 1, 2, 2])
    assert len(tied.fpr) == 3
    # the trapezoid area under the curve equals the rank AUC (ties included)
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, 200)
    scores = rng.integers(0, 10, 200).astype(float)
    curve = roc_curve(labels, scores)
    area = float(np.sum(np.diff(curve.fpr) * (curve.tpr[1:] + curve.tpr[:-1]) / 2))
    assert area == pytest.approx(roc_auc(labels, scores), abs=1e-12)


def test_eer() -> None:
    assert eer([0, 0, 1, 1], [1, 2, 3, 4]) == 0.0
    assert eer([0, 0, 1, 1], [4, 3, 2, 1]) == 1.0
    # at threshold 0.4: fpr 0.5 and tpr 0.5, so miss rate = false alarm rate = 0.5
    assert eer([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.5)
    assert eer([0, 0, 0, 1, 1, 1], [1, 2, 4, 3, 5, 6]) == pytest.approx(1 / 3)
    # all scores tied: one diagonal segment from (0, 0) to (1, 1), crossed half way
    assert eer([0, 1, 0, 1], [1, 1, 1, 1]) == pytest.approx(0.5)


def test_best_f1() -> None:
    assert best_f1([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9]) == (1.0, 0.8)
    f1, threshold = best_f1([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8])
    # flag >= 0.35: tp 2, fp 1 -> F1 = 4 / 5
    assert f1 == pytest.approx(0.8) and threshold == 0.35
    # reversed scores: the best is to flag everything: F1 = 2 * 2 / (2 * 2 + 2)
    assert best_f1([0, 0, 1, 1], [4, 3, 2, 1])[0] == pytest.approx(2 / 3)
