"""Plots of replay and evaluation results (PNG files, matplotlib without pyplot).

Figures are drawn on ``matplotlib.figure.Figure`` with the Agg canvas, so no display and
no global pyplot state are needed (safe in a headless daemon box or a test).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["Series", "TimelinePanel", "anomalous_runs", "plot_roc", "plot_timelines"]


@dataclass
class Series:
    """One line of a timeline panel: values at frame numbers ``x``."""

    name: str
    x: np.ndarray
    y: np.ndarray


@dataclass
class TimelinePanel:
    """One video's panel: score lines, ground truth shading, threshold line, events."""

    title: str
    series: list[Series]
    #: 0/1 per frame (index = frame number); anomalous frames are shaded
    truth: np.ndarray | None = None
    #: a horizontal line (e.g. the scorer's threshold_on)
    threshold: float | None = None
    threshold_name: str = "threshold"
    #: detected episodes as (start frame, end frame or None while still open)
    events: list[tuple[int, int | None]] = field(default_factory=list)
    ylabel: str = "score"


def anomalous_runs(labels: np.ndarray) -> list[tuple[int, int]]:
    """``[(first, last), ...]`` frame ranges where ``labels`` is 1 (inclusive)."""
    y = np.asarray(labels).astype(bool)
    if not y.any():
        return []
    edges = np.diff(np.r_[0, y.astype(np.int8), 0])
    starts = np.flatnonzero(edges == 1)
    ends = np.flatnonzero(edges == -1) - 1
    return [(int(a), int(b)) for a, b in zip(starts, ends, strict=True)]


def _figure(width: float, height: float) -> Figure:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def plot_timelines(path: str | Path, panels: Sequence[TimelinePanel], title: str = "") -> Path:
    """Write one panel per video, stacked, to ``path`` (PNG)."""
    path = Path(path)
    count = max(len(panels), 1)
    figure = _figure(12.0, 2.4 * count + (0.4 if title else 0.0))
    axes = figure.subplots(count, 1, squeeze=False)[:, 0]
    if title:
        figure.suptitle(title)
    for ax, panel in zip(axes, panels, strict=False):
        truth_label = "ground truth anomalous"
        if panel.truth is not None:
            for first, last in anomalous_runs(panel.truth):
                ax.axvspan(first - 0.5, last + 0.5, color="tab:red", alpha=0.15, lw=0,
                           label=truth_label)
                truth_label = "_nolegend_"
        for series in panel.series:
            ax.plot(series.x, series.y, lw=1.0, label=series.name)
        if panel.threshold is not None:
            ax.axhline(panel.threshold, color="black", ls="--", lw=0.8,
                       label=f"{panel.threshold_name} ({panel.threshold:g})")
        event_label = "detected event"
        x_end = max((float(np.max(s.x)) for s in panel.series if len(s.x)), default=0.0)
        for start, end in panel.events:
            stop = x_end if end is None else end
            ax.axvline(start, color="tab:purple", lw=1.0)
            ax.axvspan(start, stop, ymin=0.0, ymax=0.05, color="tab:purple", alpha=0.7, lw=0,
                       label=event_label)
            event_label = "_nolegend_"
        ax.set_title(panel.title, fontsize=10, loc="left")
        ax.set_ylabel(panel.ylabel)
        ax.grid(alpha=0.3)
        handles, _ = ax.get_legend_handles_labels()
        if handles:
            ax.legend(fontsize=7, loc="upper left", ncol=min(len(handles), 4))
    axes[-1].set_xlabel("frame")
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    return path


def plot_roc(
    path: str | Path,
    groups: dict[str, list[tuple[str, np.ndarray, np.ndarray, float]]],
) -> Path:
    """ROC curves side by side: ``{group title: [(name, fpr, tpr, auc), ...]}``."""
    path = Path(path)
    count = max(len(groups), 1)
    figure = _figure(5.0 * count, 5.0)
    axes = figure.subplots(1, count, squeeze=False)[0]
    for ax, (title, curves) in zip(axes, groups.items(), strict=False):
        for name, fpr, tpr, auc in curves:
            ax.plot(fpr, tpr, lw=1.2, label=f"{name} (AUC {auc:.3f})")
        ax.plot([0, 1], [0, 1], color="gray", ls=":", lw=0.8)
        ax.set_xlim(-0.01, 1.01)
        ax.set_ylim(-0.01, 1.01)
        ax.set_aspect("equal")
        ax.set_xlabel("false positive rate")
        ax.set_ylabel("true positive rate")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    return path
