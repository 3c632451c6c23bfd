"""Data sets on disk: which videos a path names, reading a video's frames, frame labels.

A data set is a folder of videos; each video is a folder of images or a video file. Labels
are JSON: ``{"<video name>": [0, 1, 1, ...]}``, one 0/1 per frame in file-name order.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from forecaster.detection.flow import MotionCue, PlaceNorm
from forecaster.errors import DataError
from forecaster.protocol import camera_safe
from forecaster.sources.files import special_file
from forecaster.sources.preprocess import to_gray_resized
from forecaster.sources.readers import (
    SYNTHETIC_PREFIX,
    FolderSource,
    FrameSource,
    SyntheticSource,
    image_files,
    natural_key,
    open_source,
    parse_synthetic_uri,
)

__all__ = ["DEFAULT_SYNTHETIC_FRAMES", "VIDEO_EXTENSIONS", "VideoRef", "expand_videos",
           "is_live", "load_labels", "read_video", "read_video_cues"]

VIDEO_EXTENSIONS = frozenset(
    {".avi", ".mp4", ".m4v", ".mkv", ".mov", ".webm", ".mpg", ".mpeg", ".wmv", ".flv", ".ts",
     ".mjpg", ".mjpeg", ".3gp", ".ogv"}
)
log = logging.getLogger(__name__)

#: frames read from a synthetic: string without frames= and without max_frames
DEFAULT_SYNTHETIC_FRAMES = 1000


@dataclass(frozen=True)
class VideoRef:
    """One video of a data set: its name (the labels key) and its source string."""

    name: str
    uri: str


def expand_videos(paths: Sequence[str], *, live: bool = False) -> list[VideoRef]:
    """The videos named by ``paths``, in order.

    Each path is a video file (name = file stem), a folder of images (one video, name = folder
    name), a data-set folder (its child image folders and video files in natural order, name =
    child name) or a ``synthetic:`` string (name ``synthetic-<seed>``); with ``live`` also a
    camera or stream (name ``live-<source>``), to be recorded for a while.
    """
    if isinstance(paths, str):
        raise TypeError("expand_videos takes a list of paths, not one string")
    videos: list[VideoRef] = []
    for text in paths:
        videos.extend(_expand_one(text, live))
    return videos


def is_live(text: str) -> bool:
    """Whether a source string names a camera or a network stream."""
    return "://" in text or text.isdigit() or text.startswith("/dev/video")


def _expand_one(text: str, live: bool) -> list[VideoRef]:
    if text.lower().startswith(SYNTHETIC_PREFIX):
        params = parse_synthetic_uri(text)
        return [VideoRef(f"synthetic-{params.seed}", text)]
    if is_live(text):
        if not live:
            raise DataError(f"a data set must be files or folders, not a live source: {text} "
                            f"(forecaster train --minutes N records N minutes of it)")
        return [VideoRef("live-" + camera_safe(text, 48), text)]
    path = Path(text).expanduser()
    if not path.exists():
        raise DataError(f"data path not found: {text}")
    if path.is_file():
        return [VideoRef(path.stem, str(path))]
    if not path.is_dir():
        what = special_file(path) or "not a regular file"
        raise DataError(f"not a video file or a folder: {text} is {what}")
    if image_files(path):
        return [VideoRef(path.name, str(path))]
    videos: list[VideoRef] = []
    for child in sorted(path.iterdir(), key=lambda p: natural_key(p.name)):
        if child.name.startswith("."):
            continue
        if child.is_dir() and image_files(child):
            videos.append(VideoRef(child.name, str(child)))
        elif child.is_file() and child.suffix.lower() in VIDEO_EXTENSIONS:
            videos.append(VideoRef(child.stem, str(child)))
    if not videos:
        raise DataError(f"no videos in {text}: expected image files, video files "
                        f"({', '.join(sorted(VIDEO_EXTENSIONS))}) or folders of images")
    return videos


def read_video(uri: str, size: tuple[int, int], max_frames: int | None = None,
               max_seconds: float | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """All frames of one video as ``(T, H, W) uint8`` at ``size``, and its labels or None
    (see :func:`read_video_cues`)."""
    frames, labels, _ = read_video_cues(uri, size, max_frames, max_seconds)
    return frames, labels


def stack_windows(windows: Sequence[np.ndarray | None]) -> np.ndarray:
    """Per-frame window maps as one (T, rows, cols) stack, NaN where a frame has none (a
    frame of another grid, after a change of size, counts as none)."""
    shapes = [w.shape for w in windows if w is not None]
    grid = max(set(shapes), key=shapes.count) if shapes else (1, 1)
    out = np.full((len(windows), *grid), np.nan, dtype=np.float32)
    for index, window in enumerate(windows):
        if window is not None and window.shape == grid:
            out[index] = window
    return out


def read_video_cues(
    uri: str, size: tuple[int, int], max_frames: int | None = None,
    max_seconds: float | None = None, cue_height: int | None = None,
    place: PlaceNorm | None = None, windows_out: list[np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """All frames of one video as ``(T, H, W) uint8`` at ``size``, its labels or None, and
    with ``cue_height`` each frame's motion cue (:class:`forecaster.detection.flow.MotionCue`, made
    from the full-size frame as the capture process makes it, divided by ``place`` where
    given), else None. ``windows_out``: a list that gets the cue's window speeds of every
    frame, before any place's divisors, as one (T, rows, cols) float32 stack (NaN for a
    frame without them).

    Labels come from the source (the synthetic scene); other sources give None. A
    ``synthetic:`` string is read unpaced; without ``frames=`` it gives ``max_frames`` or
    ``DEFAULT_SYNTHETIC_FRAMES`` frames. A live source (camera, stream) is recorded for
    ``max_seconds`` of wall-clock time or ``max_frames`` frames, whichever comes first
    (one of them is needed); ``max_seconds`` does not apply to other sources.
    """
    if max_frames is not None and max_frames < 1:
        raise DataError(f"max_frames must be >= 1, got {max_frames} for {uri}")
    if max_seconds is not None and not max_seconds > 0:
        raise DataError(f"recording time must be above 0 s, got {max_seconds} for {uri}")
    source: FrameSource
    if uri.lower().startswith(SYNTHETIC_PREFIX):
        params = parse_synthetic_uri(uri)
        frames = params.frames or max_frames or DEFAULT_SYNTHETIC_FRAMES
        source = SyntheticSource(replace(params, fps=0.0, frames=frames).uri())
    else:
        source = open_source(uri)
        if source.live and max_frames is None and max_seconds is None:
            raise DataError(f"reading a live source needs a length: {uri} (forecaster "
                            f"train --minutes N records N minutes of it)")
    deadline = (time.monotonic() + max_seconds
                if max_seconds is not None and source.live else math.inf)
    if source.live and math.isfinite(deadline):
        log.info("recording %s for %.0f s", uri, max_seconds)
    height, width = size
    images: list[np.ndarray] = []
    labels: list[int | None] = []
    cue = None if cue_height is None else MotionCue(cue_height, place)
    cues: list[float] = []
    windows: list[np.ndarray | None] = []
    with source:
        while (max_frames is None or len(images) < max_frames) and time.monotonic() < deadline:
            frame = source.read()
            if frame is None:
                break
            gray = frame.gray_image()  # once, for the model's size and the cue's
            images.append(to_gray_resized(gray, (height, width)))
            labels.append(frame.label)
            if cue is not None:
                cues.append(cue(gray))
                if windows_out is not None:
                    windows.append(None if cue.windows is None
                                   else cue.windows.astype(np.float32))
    if not images:
        raise DataError(f"no frames read from {uri}")
    stack = np.stack(images)
    if isinstance(source, FolderSource) and source.skipped:
        log.warning("%d image(s) skipped in %s: frames no longer line up with labels counted "
                    "per image file", source.skipped, uri)
    cue_array = None if cue is None else np.asarray(cues, dtype=np.float64)
    if windows_out is not None and cue is not None:
        windows_out.append(stack_windows(windows))
    if any(label is None for label in labels):
        return stack, None, cue_array
    return stack, np.asarray(labels, dtype=np.uint8), cue_array


def load_labels(path: str | Path) -> dict[str, np.ndarray]:
    """``{"<video name>": uint8 array of 0/1 per frame}`` from a labels JSON file; DataError."""
    path = Path(path)
    special = special_file(path)
    if special is not None:
        raise DataError(f"labels file {path} is {special}, not a file")
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataError(f"labels file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as error:
        raise DataError(f"cannot read labels file {path}: {error}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise DataError(f"labels file is not valid JSON: {path}: {error}") from None
    except RecursionError:
        raise DataError(f"labels file is nested too deeply to be labels: {path}") from None
    if not isinstance(data, dict) or not data:
        raise DataError(f"labels file must hold a non-empty JSON object "
                        f'{{"<video name>": [0, 1, ...]}}, got {type(data).__name__}: {path}')
    labels: dict[str, np.ndarray] = {}
    for name, values in data.items():
        if not isinstance(values, list) or not values:
            raise DataError(f"labels of video {name!r} must be a non-empty list of 0/1, got "
                            f"{_short(values)}: {path}")
        for index, value in enumerate(values):
            if value not in (0, 1) or not isinstance(value, (int, bool)):
                raise DataError(f"label {index} of video {name!r} must be 0 or 1, got "
                                f"{_short(value)}: {path}")
        labels[name] = np.asarray(values, dtype=np.uint8)
    return labels


def _short(value: object) -> str:
    text = json.dumps(value) if not isinstance(value, str) else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
