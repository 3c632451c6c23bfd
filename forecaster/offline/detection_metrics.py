"""Frame-level detection metrics: ROC AUC, ROC curve, equal error rate, best F1.

numpy only. ``labels`` are 0/1 per frame (1 = anomalous), ``scores`` are real numbers,
higher = more anomalous. Ties are handled exactly: tied scores share their average rank
in the AUC, and a threshold admits all tied frames at once in the curve. When only one
class is present the metrics are undefined: they return NaN and warn with
:class:`UndefinedMetricWarning` saying why (:func:`undefined_reason` gives the same text).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np

__all__ = [
    "RocCurve",
    "UndefinedMetricWarning",
    "best_f1",
    "eer",
    "roc_auc",
    "roc_curve",
    "undefined_reason",
]


class UndefinedMetricWarning(UserWarning):
    """A metric is undefined for these labels (only one class present)."""


@dataclass(frozen=True)
class RocCurve:
    """Points of a ROC curve, from (0, 0) at threshold +inf to (1, 1).

    Point ``i`` flags the frames with ``score >= thresholds[i]``.
    """

    fpr: np.ndarray
    tpr: np.ndarray
    thresholds: np.ndarray


def _check(labels: object, scores: object) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(labels)
    s = np.asarray(scores, dtype=np.float64)
    if y.ndim != 1 or s.ndim != 1:
        raise ValueError(f"labels and scores must be 1-D, got shapes {y.shape} and {s.shape}")
    if y.shape != s.shape:
        raise ValueError(f"labels and scores differ in length: {len(y)} vs {len(s)}")
    if y.size and not np.isin(y, (0, 1)).all():
        bad = y[~np.isin(y, (0, 1))][0]
        raise ValueError(f"labels must be 0 or 1, got {bad!r}")
    if np.isnan(s).any():
        raise ValueError(f"scores must not be NaN, got {int(np.isnan(s).sum())} NaN of {len(s)}")
    return y.astype(bool), s


def undefined_reason(labels: object) -> str | None:
    """Why frame-level metrics are undefined for ``labels`` (one class only), else None."""
    y = np.asarray(labels).astype(bool)
    positives = int(y.sum())
    if y.size == 0:
        return "no frames"
    if positives == 0:
        return f"all {y.size} frames are normal (label 0): no anomalous frame to detect"
    if positives == y.size:
        return f"all {y.size} frames are anomalous (label 1): no normal frame to compare"
    return None


def _undefined(y: np.ndarray, metric: str) -> bool:
    reason = undefined_reason(y)
    if reason is None:
        return False
    warnings.warn(f"{metric} undefined: {reason}", UndefinedMetricWarning, stacklevel=3)
    return True


def _average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks of ``values``; tied values get the mean of their ranks."""
    order = np.argsort(values, kind="mergesort")
    ordered = values[order]
    # start index of each run of equal values
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
    ends = np.r_[starts[1:], len(values)]
    mean_rank = (starts + ends + 1) / 2.0  # ranks starts+1 .. ends, averaged
    ranks = np.empty(len(values), dtype=np.float64)
    ranks[order] = np.repeat(mean_rank, ends - starts)
    return ranks


def roc_auc(labels: object, scores: object) -> float:
    """Area under the ROC curve (Mann-Whitney U / (n_pos n_neg)); ties count one half.

    NaN (with an :class:`UndefinedMetricWarning`) when only one class is present.
    """
    y, s = _check(labels, scores)
    if _undefined(y, "ROC AUC"):
        return math.nan
    ranks = _average_ranks(s)
    n_pos = int(y.sum())
    n_neg = len(y) - n_pos
    u = float(ranks[y].sum()) - n_pos * (n_pos + 1) / 2.0
    return u / (n_pos * n_neg)


def roc_curve(labels: object, scores: object) -> RocCurve:
    """The ROC curve at every distinct score (plus the (0, 0) start).

    With one class only, the rates of the missing class are NaN (and a warning says why).
    """
    y, s = _check(labels, scores)
    _undefined(y, "ROC curve")
    order = np.argsort(-s, kind="mergesort")
    ordered = s[order]
    hits = y[order]
    # last index of each run of equal scores: a threshold takes the whole run
    last = np.flatnonzero(np.r_[ordered[1:] != ordered[:-1], True]) if len(s) else np.empty(0, int)
    tp = np.cumsum(hits)[last].astype(np.float64)
    fp = (last + 1) - tp
    n_pos = float(y.sum())
    n_neg = float(len(y) - y.sum())
    with np.errstate(invalid="ignore", divide="ignore"):
        tpr = np.r_[0.0, tp / n_pos] if n_pos else np.full(len(tp) + 1, np.nan)
        fpr = np.r_[0.0, fp / n_neg] if n_neg else np.full(len(fp) + 1, np.nan)
    thresholds = np.r_[np.inf, ordered[last]]
    return RocCurve(fpr=fpr, tpr=tpr, thresholds=thresholds)


def eer(labels: object, scores: object) -> float:
    """Equal error rate: where the false positive rate equals the miss rate (1 - tpr).

    Linear interpolation between the two curve points that bracket the crossing. NaN with
    one class only.
    """
    y, s = _check(labels, scores)
    if _undefined(y, "EER"):
        return math.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        curve = roc_curve(y, s)
    fnr = 1.0 - curve.tpr
    diff = curve.fpr - fnr  # goes from -1 at (0, 0) to +1 at (1, 1), never decreasing
    i = int(np.argmax(diff >= 0.0))
    if diff[i] == 0.0 or i == 0:
        return float(curve.fpr[i])
    # crossing between points i - 1 and i
    d0, d1 = diff[i - 1], diff[i]
    t = d0 / (d0 - d1)
    return float(curve.fpr[i - 1] + t * (curve.fpr[i] - curve.fpr[i - 1]))


def best_f1(labels: object, scores: object) -> tuple[float, float]:
    """Highest F1 over all thresholds (flag ``score >= threshold``) and that threshold.

    ``(nan, nan)`` when no frame is anomalous (F1 is undefined).
    """
    y, s = _check(labels, scores)
    if not y.any():
        _undefined(y, "best F1")
        return math.nan, math.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        curve = roc_curve(y, s)
    n_pos = float(y.sum())
    n_neg = float(len(y) - n_pos)
    tp = curve.tpr[1:] * n_pos
    fp = np.nan_to_num(curve.fpr[1:]) * n_neg
    f1 = 2.0 * tp / (2.0 * tp + fp + (n_pos - tp))
    i = int(np.argmax(f1))
    return float(f1[i]), float(curve.thresholds[i + 1])
