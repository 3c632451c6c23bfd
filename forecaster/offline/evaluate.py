"""Evaluation: frame-level detection quality of a model on a labelled data set.

``forecaster eval DATA --labels FILE`` scores every video with the daemon's own code
(:class:`~forecaster.detection.engine.InferenceEngine` + :class:`~forecaster.detection.scorer.Scorer`, frames
fed in chunks with the state carried) and compares the scores with the labels under two
protocols:

- ``paper``: per video, the anomaly score is min-max normalised over the whole video (Liu
  et al., "Future Frame Prediction for Anomaly Detection", CVPR 2018, normalise PSNR into a
  regularity score ``s = (psnr - min) / (max - min)`` and take ``1 - s``). It needs the
  whole video first, so it is not causal; it is what published numbers use.
- ``causal``: exactly the calibrated score the daemon publishes for each frame.

Two rows for the model: ``model`` is the score the daemon publishes (the scorer's mode, see
:mod:`forecaster.detection.scorer`; paper: its per-video min-max), ``model-global`` the whole-frame
error alone (paper: ``1 - `` per-video min-max of PSNR, as Liu et al.; causal: the global
calibrated score ``(ln mse - mu) / sigma``). With the scorer in global mode the two agree.

Baselines on the same frames and protocols: ``copy-last`` (the prediction is the previous
frame; paper: its PSNR min-max normalised; causal: its raw mse), ``frame-diff`` (mean
absolute difference to the previous frame), ``mog2`` (fraction of foreground pixels of
OpenCV's MOG2 background subtractor run causally at the model's frame size) and ``flow``
(dense optical flow, :mod:`forecaster.detection.flow`: the speed of the fastest places of the frame,
no model at all). Baselines have
no calibration: their causal score is the raw value (a monotone transform would not change
a per-video AUC, but the micro AUC over all videos does depend on it).

The first ``window`` frames of each video cannot be predicted (the state has not seen
enough frames) and are left out of every method.

Metrics: ROC AUC over all frames of all videos together (micro), the mean of per-video
AUCs (macro), the equal error rate and the best F1 (both micro).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from forecaster.config import Config
from forecaster.detection.engine import check_model, load, model_path
from forecaster.detection.flow import PlaceNorm, flow_scores, place_cues
from forecaster.detection.fused import DEFAULT_FUSED, cue_value, smooth_nan
from forecaster.detection.scorer import MSE_FLOOR, SIGMA_FLOOR, cue_height, cue_place
from forecaster.errors import DataError
from forecaster.offline.datasets import expand_videos, load_labels, read_video_cues
from forecaster.offline.detection_metrics import best_f1, eer, roc_auc, roc_curve, undefined_reason
from forecaster.offline.outputs import fresh_dir, prepare_out_dir
from forecaster.offline.replay_feed import DEFAULT_CHUNK, RecordingStepper, score_video
from forecaster.offline.replay_inputs import label_mismatch
from forecaster.offline.replay_results import MAX_PANELS
from forecaster.sources.preprocess import to_unit

log = logging.getLogger("forecaster.evaluate")

METHODS = ("model", "model-term", "cue", "place-cue", "model-global", "copy-last", "frame-diff", "mog2",
           "flow")
PROTOCOLS = ("paper", "causal")
METHOD_NOTES = {
    "model": "paper: per-video min-max of the calibrated score the daemon publishes; causal: "
             "that score",
    "model-term": "the model's own term of the score alone, no motion cue (fused mode: its "
                  "error term, smoothed and standardised as the scorer does; other modes: the "
                  "whole-frame error, as model-global); paper: per-video min-max; causal: that "
                  "term",
    "cue": "the daemon's motion cue alone, nothing learned: ln(0.001 + cue) at the card's "
           "cue size and smoothing (other modes: the default size and smoothing); paper: "
           "per-video min-max; causal: that term",
    "place-cue": "the motion cue divided by the card's normal motion per place (learned by "
                 "train from normal footage; no forecast): the fused scorer's cue term, "
                 "standardised as the scorer does; the same as cue when the score has no "
                 "normal motion per place (a card without one, or a mode other than fused); "
                 "paper: per-video min-max; causal: that term",
    "model-global": "paper: 1 - per-video min-max of the model's PSNR (whole frame); causal: "
                    "(ln mse - mu) / sigma with the card's global calibration",
    "copy-last": "prediction = previous frame; paper: 1 - per-video min-max of its PSNR; "
                 "causal: its raw mse (no calibration)",
    "frame-diff": "mean absolute difference to the previous frame; paper: per-video min-max; "
                  "causal: raw value",
    "mog2": "foreground fraction of cv2 MOG2 (detectShadows=False) run causally at the model's "
            "frame size; paper: per-video min-max; causal: raw value",
    "flow": "dense optical flow (cv2 Farneback) between consecutive frames at the model's frame "
            "size: mean magnitude of the top 5% of 8x8 windows, causal moving average (0.3 of "
            "the past); paper: per-video min-max; causal: raw value",
}


@dataclass
class EvalVideo:
    """One video's evaluated frames and every method's scores on them."""

    name: str
    frames: int
    #: frame numbers evaluated (the model scored them)
    seqs: np.ndarray
    labels: np.ndarray  #: 0/1 of the evaluated frames
    all_labels: np.ndarray  #: 0/1 of every frame
    #: {method: {protocol: scores of the evaluated frames}}
    scores: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    #: raw per-frame values worth keeping (model mse/psnr, baselines)
    raw: dict[str, np.ndarray] = field(default_factory=dict)


# --- baselines -------------------------------------------------------------------------------


def copy_last_mse(frames: np.ndarray) -> np.ndarray:
    """mse of "frame t = frame t-1" for every frame (NaN for frame 0), pixels in [0, 1]."""
    x = to_unit(frames)
    out = np.full(len(frames), np.nan)
    if len(frames) > 1:
        diff = x[1:] - x[:-1]
        out[1:] = np.mean(np.square(diff, dtype=np.float64), axis=(1, 2))
    return out


def frame_diff(frames: np.ndarray) -> np.ndarray:
    """Mean absolute difference to the previous frame (NaN for frame 0), pixels in [0, 1]."""
    x = to_unit(frames)
    out = np.full(len(frames), np.nan)
    if len(frames) > 1:
        out[1:] = np.mean(np.abs(x[1:] - x[:-1], dtype=np.float64), axis=(1, 2))
    return out


def mog2_fraction(frames: np.ndarray) -> np.ndarray:
    """Fraction of foreground pixels of MOG2 run causally over ``frames`` (T, H, W) uint8."""
    import cv2

    subtractor = cv2.createBackgroundSubtractorMOG2(detectShadows=False)
    out = np.empty(len(frames))
    for t, frame in enumerate(frames):
        mask = subtractor.apply(frame)
        out[t] = np.count_nonzero(mask) / mask.size
    return out


def psnr(mse: np.ndarray) -> np.ndarray:
    """As the scorer: ``10 log10(1 / max(mse, 1e-10))``."""
    return -10.0 * np.log10(np.maximum(mse, MSE_FLOOR))


def minmax(values: np.ndarray) -> np.ndarray:
    """``(v - min) / (max - min)`` over the array; zeros when all values are equal."""
    values = np.asarray(values, dtype=np.float64)
    low, high = float(np.min(values)), float(np.max(values))
    if not high > low:
        return np.zeros_like(values)
    return (values - low) / (high - low)


def global_scores(mse: np.ndarray, calibration: dict[str, Any]) -> np.ndarray:
    """The global-mode score ``(ln max(mse, 1e-10) - mu) / max(sigma, 1e-3)`` of each frame."""
    mu = float(calibration["log_mse_mean"])
    sigma = max(float(calibration["log_mse_std"]), SIGMA_FLOOR)
    return (np.log(np.maximum(mse, MSE_FLOOR)) - mu) / sigma


# --- metrics -------------------------------------------------------------------------------


def method_metrics(videos: Sequence[EvalVideo], method: str, protocol: str) -> dict[str, Any]:
    """Micro/macro AUC, EER, best F1 of one method under one protocol."""
    labels = np.concatenate([v.labels for v in videos])
    scores = np.concatenate([v.scores[method][protocol] for v in videos])
    per_video: dict[str, float | None] = {}
    for v in videos:
        why = undefined_reason(v.labels)
        per_video[v.name] = None if why else roc_auc(v.labels, v.scores[method][protocol])
    defined = [a for a in per_video.values() if a is not None]
    why = undefined_reason(labels)
    if why is not None:
        return {"micro_auc": None, "macro_auc": None, "eer": None, "best_f1": None,
                "best_f1_threshold": None, "undefined": why, "per_video_auc": per_video,
                "macro_videos": 0}
    f1, threshold = best_f1(labels, scores)
    return {
        "micro_auc": roc_auc(labels, scores),
        "macro_auc": float(np.mean(defined)) if defined else None,
        "macro_videos": len(defined),
        "eer": eer(labels, scores),
        "best_f1": f1,
        "best_f1_threshold": threshold,
        "per_video_auc": per_video,
    }


def _fmt(value: float | None) -> str:
    return "  -  " if value is None or not math.isfinite(value) else f"{value:.3f}"


def format_table(results: dict[str, dict[str, dict[str, Any]]]) -> str:
    """The method x protocol table as text."""
    header = f"{'method':<12} {'protocol':<8} {'micro AUC':>9} {'macro AUC':>9} {'EER':>6} {'best F1':>7}"
    lines = [header, "-" * len(header)]
    for method, by_protocol in results.items():
        for protocol, m in by_protocol.items():
            lines.append(
                f"{method:<12} {protocol:<8} {_fmt(m['micro_auc']):>9} {_fmt(m['macro_auc']):>9} "
                f"{_fmt(m['eer']):>6} {_fmt(m['best_f1']):>7}"
            )
    return "\n".join(lines)


# --- the command ---------------------------------------------------------------------------


def _read(data: Sequence[str], labels_path: str | None, size: tuple[int, int],
          cue_rows: int | None, place: PlaceNorm | None = None,
          ) -> list[tuple[str, np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None]]:
    """Each video's name, frames, labels, plain cues and cues divided by ``place`` (None
    without one)."""
    refs = expand_videos(list(data))
    labels = load_labels(labels_path) if labels_path else {}
    videos = []
    for ref in refs:
        windows: list[np.ndarray] = []
        frames, own, cues = read_video_cues(ref.uri, size, cue_height=cue_rows,
                                            windows_out=None if place is None else windows)
        placed = None
        if place is not None and cues is not None and windows:
            placed = place_cues(windows[0], place)
        truth = labels.get(ref.name, own)
        if truth is None:
            raise DataError(
                f"no labels for video {ref.name!r}: give --labels FILE with a "
                f'"{ref.name}" entry (one 0/1 per frame)'
            )
        if len(truth) != len(frames):
            raise label_mismatch(ref.name, len(frames), len(truth))
        videos.append((ref.name, frames, np.asarray(truth, dtype=np.uint8), cues, placed))
    return videos


#: the files every evaluation writes into its output folder
RESULT_FILES = ("eval.json", "roc.png", "timelines.png")


def evaluate_command(
    data: Sequence[str],
    *,
    labels: str | None,
    model: str | None = None,
    out: str | Path | None = None,
    config: Config | None = None,
    chunk: int = DEFAULT_CHUNK,
    echo: Callable[[str], None] = print,
    force: bool = False,
) -> dict[str, Any]:
    """Evaluate the model on ``data``; print the table, write eval.json and plots to ``out``.

    ``out`` defaults to a fresh folder ``<cache>/eval/<model name>-<date>-<time>``
    (:mod:`forecaster.offline.outputs`); an ``out`` holding an earlier evaluation's results is
    refused unless ``force``, which removes them first.
    """
    cfg = config if config is not None else Config()
    path = model_path(model, config)
    card = check_model(path, cfg.scorer)
    size = (int(card.height), int(card.width))
    if out is not None:
        prepare_out_dir(Path(out), [Path(out) / name for name in RESULT_FILES], force=force)
    # before TensorFlow: bad data fails fast; the cue is read in every mode (its own row)
    cue_rows = cue_height(cfg.scorer.mode, card.calibration) or DEFAULT_FUSED.cue_height
    raw_videos = _read(data, labels, size, cue_rows, cue_place(cfg.scorer.mode, card.calibration))
    smoothing = _cue_smoothing(cfg.scorer.mode, card.calibration)
    out_dir = Path(out) if out is not None else fresh_dir("eval", path.stem)

    loaded = load(path)
    stepper = RecordingStepper(loaded.runner)
    engine = loaded.engine(cfg.scorer, stepper)
    videos: list[EvalVideo] = []
    for index, (name, frames, truth, cues, placed) in enumerate(raw_videos):
        terms_log: list[tuple[float, float]] = []
        scored = score_video(engine, stepper, f"video{index}", frames, chunk,
                             cues if placed is None else placed, terms_log)
        seqs = np.asarray([s.seq for s in scored], dtype=np.int64)
        if len(seqs) == 0:
            log.warning("video %s: no frame scored (%d frames, window %d)", name, len(frames),
                        card.window)
            continue
        model_mse = np.asarray([s.mse for s in scored])
        model_psnr = np.asarray([s.psnr for s in scored])
        model_score = np.asarray([s.score for s in scored])
        global_score = global_scores(model_mse, card.calibration)
        model_term, place_term = _terms(terms_log, global_score, cues, seqs)
        cue_term = _plain_cue(cues, seqs, smoothing)
        copy_mse = copy_last_mse(frames)[seqs]
        diff = frame_diff(frames)[seqs]
        mog = mog2_fraction(frames)[seqs]
        flow = flow_scores(frames)[seqs]
        video = EvalVideo(name=name, frames=len(frames), seqs=seqs, labels=truth[seqs],
                          all_labels=truth)
        video.scores = {
            "model": {"paper": minmax(model_score), "causal": model_score},
            "model-term": {"paper": minmax(model_term), "causal": model_term},
            "cue": {"paper": minmax(cue_term), "causal": cue_term},
            "place-cue": {"paper": minmax(place_term), "causal": place_term},
            "model-global": {"paper": 1.0 - minmax(model_psnr), "causal": global_score},
            "copy-last": {"paper": 1.0 - minmax(psnr(copy_mse)), "causal": copy_mse},
            "frame-diff": {"paper": minmax(diff), "causal": diff},
            "mog2": {"paper": minmax(mog), "causal": mog},
            "flow": {"paper": minmax(flow), "causal": flow},
        }
        video.raw = {"model_mse": model_mse, "model_psnr": model_psnr, "model_term": model_term,
                     "cue": cue_term, "place_cue": place_term, "copy_last_mse": copy_mse,
                     "frame_diff": diff, "mog2": mog, "flow": flow}
        videos.append(video)
    if not videos:
        raise DataError(f"no video of {', '.join(data)} is longer than window={card.window} frames")

    scorer_mode = next(iter(engine.cameras.values())).scorer.mode
    frames_total = sum(len(video[1]) for video in raw_videos)
    evaluated = sum(len(v.seqs) for v in videos)
    left_out = frames_total - evaluated
    results = {m: {p: method_metrics(videos, m, p) for p in PROTOCOLS} for m in METHODS}

    echo(f"{len(raw_videos)} videos, {frames_total} frames; {evaluated} evaluated, {left_out} "
         f"left out (the first {card.window} frames of each video cannot be predicted)")
    anomalous = int(sum(int(v.labels.sum()) for v in videos))
    echo(f"anomalous frames evaluated: {anomalous} of {evaluated} "
         f"({100.0 * anomalous / max(evaluated, 1):.1f}%)")
    echo(f"model score: the scorer's {scorer_mode} mode{_mode_note(scorer_mode, card.calibration)}")
    echo(format_table(results))
    echo("causal scores of the baselines are their raw values (no calibration)")

    report = {
        "data": list(data),
        "labels": labels,
        "model": str(path),
        "model_card": {"arch": card.arch, "size": [card.height, card.width],
                       "window": card.window, "calibration": card.calibration},
        "scorer": cfg.scorer.model_dump(),
        "scorer_mode": scorer_mode,
        "frames": frames_total,
        "frames_evaluated": evaluated,
        "frames_left_out": left_out,
        "anomalous_frames_evaluated": anomalous,
        "videos": [{"name": v.name, "frames": v.frames, "frames_evaluated": len(v.seqs),
                    "anomalous_frames_evaluated": int(v.labels.sum())} for v in videos],
        "methods": METHOD_NOTES,
        "results": results,
    }
    (out_dir / "eval.json").write_text(json.dumps(_jsonable(report), indent=2, allow_nan=False)
                                       + "\n", encoding="utf-8")
    _plots(out_dir, videos, results)
    echo(f"wrote {out_dir / 'eval.json'}, {out_dir / 'roc.png'}, {out_dir / 'timelines.png'}")
    return report


def _terms(terms_log: Sequence[tuple[float, float]], global_score: np.ndarray,
           cues: np.ndarray | None, seqs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The model-term and cue rows' causal scores of the scored frames ``seqs``: the fused
    scorer's own terms where it measured them, else the whole-frame error and the cue's
    smoothed logarithm."""
    terms = np.asarray(terms_log, dtype=np.float64).reshape(-1, 2)
    if len(terms) != len(seqs):
        raise RuntimeError(f"{len(terms)} scorer terms for {len(seqs)} scored frames")
    model_term = terms[:, 0] if np.isfinite(terms[:, 0]).any() else global_score
    if np.isfinite(terms[:, 1]).any():
        return model_term, terms[:, 1]
    return model_term, _plain_cue(cues, seqs, DEFAULT_FUSED.smoothing)


def _cue_smoothing(mode: str, calibration: dict[str, Any]) -> float:
    """The smoothing of the scorer's cue term (the default's when it has none)."""
    if cue_height(mode, calibration) is None:
        return DEFAULT_FUSED.smoothing
    return float(calibration["fused"].get("smoothing", DEFAULT_FUSED.smoothing))


def _plain_cue(cues: np.ndarray | None, seqs: np.ndarray, smoothing: float) -> np.ndarray:
    """The cue row: each frame's plain cue, ``ln(0.001 + cue)`` smoothed as the scorer
    smooths its cue term (its moving average runs over the scored frames, as the scorer's)."""
    if cues is None:
        return np.full(len(seqs), math.nan)
    return smooth_nan(np.asarray([cue_value(float(c)) for c in cues[seqs]]), smoothing)


def _mode_note(mode: str, calibration: dict[str, Any]) -> str:
    if mode == "fused":
        fused = calibration["fused"]
        error = "whole-frame" if fused["error"] == "global" else f"top-{fused['top_k']} window"
        return (f" ({error} error x {fused['error_weight']:g} + motion cue at "
                f"{fused['cue_height']} rows x {fused['flow_weight']:g}, smoothing "
                f"{fused['smoothing']:g})")
    if mode != "patch":
        return " (whole-frame error)"
    patch = calibration["patch"]
    return (f" ({patch['patch']}x{patch['patch']} windows every {patch['stride']} px, "
            f"top {patch['top_k']}, smoothing {patch['smoothing']})")


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return value


def _plots(out_dir: Path, videos: Sequence[EvalVideo], results: dict[str, Any]) -> None:
    from forecaster.offline.report import Series, TimelinePanel, plot_roc, plot_timelines

    groups: dict[str, list[tuple[str, np.ndarray, np.ndarray, float]]] = {}
    labels = np.concatenate([v.labels for v in videos])
    if undefined_reason(labels) is None:
        for protocol in PROTOCOLS:
            curves = []
            for method in METHODS:
                scores = np.concatenate([v.scores[method][protocol] for v in videos])
                curve = roc_curve(labels, scores)
                curves.append((method, curve.fpr, curve.tpr, results[method][protocol]["micro_auc"]))
            groups[f"{protocol} protocol (micro, all frames)"] = curves
    plot_roc(out_dir / "roc.png", groups)
    panels = []
    for v in videos[:MAX_PANELS]:
        auc = results["model"]["paper"]["per_video_auc"].get(v.name)
        title = f"{v.name}: anomaly scores, paper protocol (per-video min-max)"
        if auc is not None:
            title += f"; model AUC {auc:.3f}"
        panels.append(TimelinePanel(
            title=title,
            series=[Series(m, v.seqs, v.scores[m]["paper"]) for m in METHODS],
            truth=v.all_labels,
            ylabel="anomaly score",
        ))
    title = f"first {MAX_PANELS} of {len(videos)} videos" if len(videos) > MAX_PANELS else ""
    plot_timelines(out_dir / "timelines.png", panels, title=title)
