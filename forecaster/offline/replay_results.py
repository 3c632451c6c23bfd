"""What a replay produced per video: scores, events, ROC AUC against the labels;
summary.json and timeline.png."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from forecaster.offline.detection_metrics import roc_auc, undefined_reason
from forecaster.offline.report import Series, TimelinePanel, plot_timelines

#: videos drawn in timeline.png (one panel each)
MAX_PANELS = 24


@dataclass
class EpisodeRecord:
    start_seq: int
    end_seq: int | None = None
    peak_score: float = math.nan

    def to_json(self) -> dict[str, Any]:
        return {"start_seq": self.start_seq, "end_seq": self.end_seq,
                "peak_score": _finite(self.peak_score)}


@dataclass
class VideoResult:
    """What a replay of one video produced."""

    name: str
    camera: str
    source: str
    frames: int = 0
    seconds: float = 0.0
    state_resets: int = 0
    skipped: int = 0
    seqs: list[int] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)
    #: per frame (index = seq), when known
    labels: list[int] | None = None
    events: list[EpisodeRecord] = field(default_factory=list)
    #: does the model fit this video (:mod:`forecaster.detection.fit`): "ok", "misfit", or
    #: "checking" when too few frames were scored to tell
    model_fit: str = "checking"
    #: the median score the verdict was made on (NaN: none made)
    model_fit_median: float = math.nan
    #: each scored frame's two fused terms alone, (the model's error, the motion cue)
    #: (:attr:`forecaster.detection.scorer.Scorer.terms_log`; NaN outside the fused mode)
    terms: list[tuple[float, float]] = field(default_factory=list)
    #: where the frames' times come from (:mod:`forecaster.offline.replay_time`): "file"
    #: (the file's own creation time plus the position) or "position" (from 0)
    time_from: str = "position"

    def term_scores(self, column: int) -> np.ndarray:
        """One term of every scored frame (0: the model's, 1: the cue's); NaN if unknown."""
        terms = np.asarray(self.terms, dtype=np.float64).reshape(-1, 2)
        if len(terms) != len(self.seqs):
            return np.full(len(self.seqs), math.nan)
        return terms[:, column]

    @property
    def frames_scored(self) -> int:
        return len(self.seqs)

    def scored_labels(self) -> np.ndarray | None:
        if self.labels is None:
            return None
        return np.asarray(self.labels, dtype=np.uint8)[np.asarray(self.seqs, dtype=np.int64)]

    def auc(self) -> tuple[float | None, str | None]:
        """ROC AUC of the scored frames against their labels, or (None, why not)."""
        return _auc(self.scored_labels(), np.asarray(self.scores, dtype=np.float64))

    def to_json(self) -> dict[str, Any]:
        auc, why = self.auc()
        labels = self.scored_labels()
        return {
            "name": self.name,
            "camera": self.camera,
            "source": self.source,
            "frames": self.frames,
            "frames_scored": self.frames_scored,
            "frames_unscored": self.frames - self.frames_scored,
            "seconds": round(self.seconds, 3),
            "fps": round(self.frames / self.seconds, 1) if self.seconds > 0 else None,
            "state_resets": self.state_resets,
            "frames_skipped": self.skipped,
            "events": [e.to_json() for e in self.events],
            "labelled": self.labels is not None,
            "anomalous_frames": None if self.labels is None else int(np.sum(self.labels)),
            "anomalous_frames_scored": None if labels is None else int(labels.sum()),
            "auc": auc,
            "auc_undefined": why,
            "time_from": self.time_from,
            "model_fit": self.model_fit,
            "model_fit_median": (round(self.model_fit_median, 3)
                                 if math.isfinite(self.model_fit_median) else None),
        }


def _finite(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


def _auc(labels: np.ndarray | None, scores: np.ndarray) -> tuple[float | None, str | None]:
    if labels is None:
        return None, "no labels"
    finite = np.isfinite(scores)
    labels, scores = labels[finite], scores[finite]
    why = undefined_reason(labels)
    if why is not None:
        return None, why
    return roc_auc(labels, scores), None


def summarize(results: Sequence[VideoResult], extra: dict[str, Any]) -> dict[str, Any]:
    """summary.json: per video and in total."""
    frames = sum(r.frames for r in results)
    seconds = sum(r.seconds for r in results)
    labelled = [r for r in results if r.labels is not None]
    total: dict[str, Any] = {
        "videos": len(results),
        "frames": frames,
        "frames_scored": sum(r.frames_scored for r in results),
        "seconds": round(seconds, 3),
        "fps": round(frames / seconds, 1) if seconds > 0 else None,
        "events": sum(len(r.events) for r in results),
        "state_resets": sum(r.state_resets for r in results),
        "labelled_videos": len(labelled),
        "misfit_videos": [r.camera for r in results if r.model_fit == "misfit"],
    }
    if labelled:
        labels = np.concatenate([r.scored_labels() for r in labelled])
        scores = np.concatenate([np.asarray(r.scores, dtype=np.float64) for r in labelled])
        total["auc"], total["auc_undefined"] = _auc(labels, scores)
        per_video = [r.auc()[0] for r in labelled]
        defined = [a for a in per_video if a is not None]
        total["auc_mean_per_video"] = float(np.mean(defined)) if defined else None
        # each term alone on the same frames: does the forecast add to the motion cue? (the
        # scorer's own cue term: divided by the normal motion per place where the card has one)
        for key, column in (("auc_model_term", 0), ("auc_cue", 1)):
            values = np.concatenate([r.term_scores(column) for r in labelled])
            total[key] = _auc(labels, values)[0] if np.isfinite(values).any() else None
    else:
        total["auc"], total["auc_undefined"] = None, "no labels"
    return {**extra, "videos": [r.to_json() for r in results], "total": total}


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def timeline(results: Sequence[VideoResult], threshold_on: float
             ) -> tuple[str, list[TimelinePanel]]:
    """timeline.png's title (a note when videos are left out) and its panels: one per video
    (the first MAX_PANELS videos)."""
    panels = []
    title = ""
    if len(results) > MAX_PANELS:
        title = f"first {MAX_PANELS} of {len(results)} videos (all are in scores.csv)"
    for r in results[:MAX_PANELS]:
        auc, _ = r.auc()
        panel_title = f"{r.camera}: {r.frames} frames, {_count(len(r.events), 'event')}"
        if auc is not None:
            panel_title += f", AUC {auc:.3f}"
        panels.append(TimelinePanel(
            title=panel_title,
            series=[Series("score", np.asarray(r.seqs), np.asarray(r.scores))],
            truth=None if r.labels is None else np.asarray(r.labels),
            threshold=threshold_on,
            threshold_name="threshold_on",
            events=[(e.start_seq, e.end_seq) for e in r.events],
        ))
    return title, panels


def plot_replay(path: Path, results: Sequence[VideoResult], threshold_on: float) -> Path:
    """timeline.png: :func:`timeline` drawn."""
    title, panels = timeline(results, threshold_on)
    return plot_timelines(path, panels, title=title)
