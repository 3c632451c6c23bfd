"""Training data and calibration: the videos a model is trained on, and the statistics of
its error (and of the motion cue) on held-out normal videos that its score is measured
against.

After training, the runner runs over the held-out videos frame by frame, as the daemon
does: the spread of ``ln(mse)`` on normal frames, the fused mode's terms and the patch
mode's per-window statistics become the model card's calibration, with the normal motion
per place the fused mode's cue is divided by (learned from the training videos).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from forecaster.detection.calibration import MSE_FLOOR, PatchSettings, patch_calibration
from forecaster.detection.flow import PlaceNorm, learn_place, place_cues
from forecaster.detection.fused import DEFAULT_FUSED, FusedSettings, fused_calibration
from forecaster.errors import DataError
from forecaster.model import WEAK_MODEL_RATIO
from forecaster.model.artifact import save_model
from forecaster.model.runners import Runner
from forecaster.model.step import make_runner
from forecaster.sources.preprocess import to_unit

log = logging.getLogger("forecaster.train")

# --- data ------------------------------------------------------------------------------------


@dataclass
class Video:
    """One video's frames (T, H, W) uint8 and per-frame labels (None = all normal)."""

    name: str
    frames: np.ndarray
    labels: np.ndarray | None = None
    #: each frame's motion cue (:class:`forecaster.detection.flow.MotionCue`), when read with one
    cues: np.ndarray | None = None
    #: each frame's window speeds of that cue (T, rows, cols), to learn the normal motion
    #: per place from (:func:`forecaster.detection.flow.learn_place`)
    windows: np.ndarray | None = None

    def normal(self) -> np.ndarray:
        """Boolean mask of the frames known or assumed normal."""
        if self.labels is None:
            return np.ones(len(self.frames), dtype=bool)
        return np.asarray(self.labels) == 0


def load_videos(
    data: Sequence[str], size: tuple[int, int], max_frames: int | None,
    record_seconds: float | None = None, cue_height: int | None = DEFAULT_FUSED.cue_height,
) -> list[Video]:
    """Read every video named by ``data`` (paths, data sets, synthetic: strings; with
    ``record_seconds`` also cameras and streams, recorded for that long), with each frame's
    motion cue at ``cue_height`` rows (None: without)."""
    from forecaster.offline.datasets import expand_videos, read_video_cues

    videos = []
    for ref in expand_videos(list(data), live=record_seconds is not None):
        windows: list[np.ndarray] = []
        frames, labels, cues = read_video_cues(ref.uri, size, max_frames, record_seconds,
                                               cue_height, windows_out=windows)
        log.info("read %s: %d frames", ref.name, len(frames))
        videos.append(Video(ref.name, np.asarray(frames, dtype=np.uint8), labels, cues,
                            windows[0] if windows else None))
    return videos


def split_videos(
    videos: Sequence[Video], val_fraction: float, clip: int, seed: int
) -> tuple[list[Video], list[Video]]:
    """Hold out whole videos for validation; a single video gives up its tail instead.

    Videos of ``clip`` frames or fewer are left out (too short for one training clip).
    """
    usable = [v for v in videos if len(v.frames) > clip]
    for video in videos:
        if len(video.frames) <= clip:
            log.warning("video %s: %d frames, too short for clips of %d frames; skipped",
                        video.name, len(video.frames), clip)
    if not usable:
        longest = max((len(v.frames) for v in videos), default=0)
        raise DataError(
            f"no video has more than {clip} frames, the training clip length "
            f"(longest has {longest}); use longer videos or a shorter clip"
        )
    if len(usable) == 1:
        video = usable[0]
        cut = round(len(video.frames) * (1.0 - val_fraction))
        cut = min(cut, len(video.frames) - (clip + 1))
        if cut <= clip:
            raise DataError(
                f"video {video.name} has {len(video.frames)} frames: too few to split into "
                f"training and validation clips of {clip} frames"
            )
        labels = video.labels
        cues = video.cues
        windows = video.windows
        head = Video(video.name, video.frames[:cut], None if labels is None else labels[:cut],
                     None if cues is None else cues[:cut],
                     None if windows is None else windows[:cut])
        tail = Video(
            f"{video.name}[{cut}:]", video.frames[cut:], None if labels is None else labels[cut:],
            None if cues is None else cues[cut:], None if windows is None else windows[cut:],
        )
        return [head], [tail]
    order = np.random.default_rng(seed).permutation(len(usable))
    n_val = min(len(usable) - 1, max(1, round(len(usable) * val_fraction)))
    val = [usable[i] for i in sorted(order[:n_val])]
    train = [usable[i] for i in sorted(order[n_val:])]
    return train, val


# --- calibration -----------------------------------------------------------------------------


def error_maps(stepper: Runner, video: Video) -> tuple[np.ndarray, np.ndarray]:
    """Squared error maps of the stepper's prediction (made at t-1) vs frame t, for t >= 1.

    Returns (T - 1, H, W) float32 maps and the per-frame mse of the trivial forecast
    "frame t equals frame t-1" for comparison. Runs one frame per call with the state
    carried, as the daemon does.
    """
    frames = to_unit(video.frames)[..., None]
    state = stepper.initial_state(1)
    maps = np.empty((max(len(frames) - 1, 0), *frames.shape[1:3]), dtype=np.float32)
    copy_mse = np.empty(len(maps))
    previous = None
    for t in range(len(frames)):
        actual = frames[t, :, :, 0]
        if previous is not None:
            np.square(previous - actual, out=maps[t - 1])
            copy_mse[t - 1] = np.mean(
                np.square(frames[t - 1, :, :, 0] - actual, dtype=np.float64)
            )
        prediction, state = stepper.run(frames[None, t : t + 1], state)
        previous = prediction[0, 0, :, :, 0].astype(np.float32)
    return maps, copy_mse


def frame_errors(stepper: Runner, video: Video) -> tuple[np.ndarray, np.ndarray]:
    """Per-frame mse of the stepper's prediction (made at t-1) vs frame t, for t >= 1.

    Runs one frame per call with the state carried, as the daemon does. Also returns the
    mse of the trivial forecast "frame t equals frame t-1" for comparison.
    """
    maps, copy_mse = error_maps(stepper, video)
    return maps.reshape(len(maps), -1).mean(axis=1, dtype=np.float64), copy_mse


def learned_place(source: Sequence[Video]) -> PlaceNorm | None:
    """The normal motion per place of the normal frames of ``source``; None when a video
    was read without its window speeds."""
    if not source or any(v.windows is None for v in source):
        return None
    try:
        norm = learn_place([v.windows[v.normal()] for v in source if v.windows is not None])
    except ValueError as error:
        log.warning("no normal motion per place: %s", error)
        return None
    low, high = float(norm.divisors.min()), float(norm.divisors.max())
    log.info("normal motion per place: %dx%d windows from %d videos, divisors %.2f to %.2f",
             *norm.divisors.shape, len(source), low, high)
    return norm


def calibrate(
    stepper: Runner,
    videos: Sequence[Video],
    window: int,
    patch: PatchSettings | None = None,
    motion_videos: Sequence[Video] | None = None,
    fused: FusedSettings | None = None,
    place: bool = True,
    place_videos: Sequence[Video] | None = None,
) -> dict[str, Any]:
    """The scorer's calibration from normal frames with at least ``window`` frames of context.

    ``"fused"`` (with ``fused`` settings; the videos' motion cues are needed when its flow
    term has a weight): :func:`forecaster.detection.fused.fused_calibration` on the same frames.
    With ``place``, and the window speeds of every video at hand, the cue is divided by the
    normal motion per place, learned by :func:`forecaster.detection.flow.learn_place` from
    the normal frames of ``place_videos`` (best: the training videos, so the frames it is
    learned from are not the ones it is calibrated on; default ``motion_videos``, else
    ``videos``).

    Global: mean and spread of ln(mse). ``"patch"``: the statistics of the scorer's patch
    mode (:func:`forecaster.detection.calibration.patch_calibration`, settings ``patch``, default
    :class:`~forecaster.detection.calibration.PatchSettings`), measured on the same frames, each
    video's moving averages starting at its first scored frame as they do live. The motion
    term does not depend on the model: its per-window statistics come from
    ``motion_videos`` when given (best: every normal video at hand, training ones included;
    a few videos give a too narrow picture of where people walk).
    """
    logs, models, copies = [], [], []
    scored_maps, scored_frames, scored_normal, scored_cues = [], [], [], []
    norm = None
    if place and fused is not None and fused.needs_cue:
        norm = learned_place(place_videos if place_videos is not None
                             else motion_videos if motion_videos is not None else videos)
        if norm is not None and any(v.windows is None for v in videos):
            raise DataError("fused calibration: a video was read without its motion cue's "
                            "window speeds")
    for video in videos:
        maps, copy_mse = error_maps(stepper, video)
        model_mse = maps.reshape(len(maps), -1).mean(axis=1, dtype=np.float64)
        # frame t (t >= 1) is predicted from t frames of context; maps[t - 1] scores it
        first = max(window - 1, 0)
        keep = video.normal()[1:].copy()
        keep[:first] = False
        models.append(model_mse[keep])
        copies.append(copy_mse[keep])
        logs.append(np.log(np.maximum(model_mse[keep], MSE_FLOOR)))
        if len(maps) > first:
            scored_maps.append(maps[first:])
            scored_frames.append(to_unit(video.frames[first + 1 :]))
            scored_normal.append(keep[first:])
            video_cues = video.cues
            if norm is not None and video.windows is not None:
                video_cues = place_cues(video.windows, norm)
            scored_cues.append(None if video_cues is None else video_cues[first + 1 :])
    log_mse = np.concatenate(logs) if logs else np.empty(0)
    if len(log_mse) < 2:
        raise DataError(
            f"calibration needs at least 2 normal validation frames after {window} frames of "
            f"context, got {len(log_mse)}; use longer or more videos"
        )
    motion_frames = motion_normal = None
    if motion_videos is not None:
        first = max(window - 1, 0)
        usable = [v for v in motion_videos if len(v.frames) > first + 2]
        motion_frames = [to_unit(v.frames[first + 1 :]) for v in usable]
        motion_normal = [v.normal()[first + 1 :] for v in usable]
    try:
        per_location = patch_calibration(scored_maps, scored_frames, patch, normal=scored_normal,
                                         motion_frames=motion_frames,
                                         motion_normal=motion_normal)
    except ValueError as error:
        raise DataError(f"per-location calibration: {error}") from None
    extra: dict[str, Any] = {}
    if fused is not None:
        present = [c for c in scored_cues if c is not None]
        cues = present if len(present) == len(scored_cues) else None
        if fused.needs_cue and cues is None:
            raise DataError("fused calibration: the videos were read without motion cues")
        try:
            extra["fused"] = fused_calibration(scored_maps, cues, fused, normal=scored_normal,
                                               place=norm)
        except ValueError as error:
            raise DataError(f"fused calibration: {error}") from None
    return {
        "log_mse_mean": float(np.mean(log_mse)),
        "log_mse_std": float(np.std(log_mse, ddof=1)),
        "frames": len(log_mse),
        "mse_mean": float(np.mean(np.concatenate(models))),
        "copy_last_mse_mean": float(np.mean(np.concatenate(copies))),
        "videos": [v.name for v in videos],
        "patch": {**per_location, "motion_videos": [v.name for v in motion_videos or videos]},
        **extra,
    }


def recalibrate(
    model_path: str | Path,
    out: str | Path,
    *,
    patch: PatchSettings | None = None,
    data: Sequence[str] | None = None,
    motion_data: Sequence[str] | None = None,
    fused: FusedSettings | None = DEFAULT_FUSED,
    place: bool = True,
) -> dict[str, Any]:
    """Calibrate a trained model again and write it with the new calibration to ``out``.

    The footage is the card's validation videos (re-read from ``training.data``), or every
    video of ``data`` when given (normal footage the model was not trained on). ``patch``:
    the per-location settings; ``motion_data``: normal footage for the motion term's
    per-window statistics (may include the training videos; default the same footage);
    ``fused``: the fused mode's settings (None: no fused calibration); ``place``: learn the
    normal motion per place for the fused mode's cue, from ``motion_data`` when given, else
    from the card's training videos (with the validation videos, re-read from
    ``training.data``), else from the same footage. Returns the new calibration.
    """
    from forecaster.model.artifact import load_model

    model, card = load_model(model_path)
    training = card.training
    if data is None:
        names = set(training.get("val_videos", []))
        sources = training.get("data", [])
        if not names or not sources:
            raise DataError(f"model {model_path} names no validation videos; give data")
        every = load_videos(sources, card.size, training.get("max_frames"))
        videos = [v for v in every if v.name in names]
        trained = set(training.get("train_videos", []))
        place_videos = [v for v in every if v.name in trained] or None
        if not videos:
            raise DataError(f"validation videos {sorted(names)} of model {model_path} not found "
                            f"in {', '.join(sources)}; give data")
    else:
        videos = load_videos(data, card.size, None)
        place_videos = None
    motion_videos = None
    if motion_data is not None:
        motion_videos = place_videos = load_videos(motion_data, card.size,
                                                   training.get("max_frames"))
    calibration = calibrate(make_runner(model), videos, card.window, patch,
                            motion_videos, fused, place, place_videos)
    card.calibration = calibration
    save_model(model, out, card)
    return calibration


def error_ratio(calibration: dict[str, Any]) -> float:
    """The model's mean error on held-out normal frames over that of repeating the last frame."""
    copy = float(calibration.get("copy_last_mse_mean", math.nan))
    model = float(calibration.get("mse_mean", math.nan))
    return model / copy if copy > 0 else math.nan


def ratio_report(calibration: dict[str, Any]) -> tuple[str, str | None]:
    """A line giving the model's error as a ratio of copy-last's, and a warning or None."""
    ratio = error_ratio(calibration)
    line = (f"error on held-out normal frames: {ratio:.2f}x that of repeating the last frame "
            f"(mse {calibration.get('mse_mean', math.nan):.3g} vs "
            f"{calibration.get('copy_last_mse_mean', math.nan):.3g})")
    if math.isfinite(ratio) and ratio <= WEAK_MODEL_RATIO:
        return line, None
    return line, (
        f"the model barely beats repeating the last frame ({ratio:.2f}x its error, over "
        f"{WEAK_MODEL_RATIO}): it has learned little, and its scores will mostly measure "
        f"motion. Try more footage of the camera (minutes, not seconds), more epochs "
        f"(--epochs), the mse loss (--loss mse), or a lower learning rate (--learning-rate)"
    )
