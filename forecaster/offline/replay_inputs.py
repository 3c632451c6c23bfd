"""What a replay reads: the videos its sources name, with their labels checked before any
model is loaded."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from forecaster.errors import DataError
from forecaster.offline.datasets import (
    DEFAULT_SYNTHETIC_FRAMES,
    VideoRef,
    expand_videos,
    load_labels,
)
from forecaster.protocol import camera_safe
from forecaster.sources.readers import (
    SYNTHETIC_PREFIX,
    FileSource,
    FolderSource,
    SyntheticSource,
    image_files,
    open_source,
    parse_synthetic_uri,
)

log = logging.getLogger("forecaster.replay")


@dataclass
class ReplayVideo:
    """One video to replay."""

    name: str  #: video name (labels key)
    uri: str  #: source string
    camera: str  #: camera id on the wire (the name, made topic-safe and unique)
    labels: np.ndarray | None = None  #: from a labels file
    expected_frames: int | None = None  #: known before reading (folders, synthetic)


def camera_id(name: str) -> str:
    """A valid camera id (``[A-Za-z0-9_.-]+``) for a video name."""
    return camera_safe(name) or "video"


def _synthetic_uri(uri: str, realtime: bool) -> str:
    """A finite synthetic scene: unpaced (or its own rate with realtime), frames bounded."""
    params = parse_synthetic_uri(uri)
    frames = params.frames or DEFAULT_SYNTHETIC_FRAMES
    fps = params.fps if realtime else 0.0
    return replace(params, fps=fps, frames=frames).uri()


def count_frames(uri: str) -> int | None:
    """Frames a replay of ``uri`` will read, counted without decoding pixels where possible.

    Image folders: the image files (an unreadable image is skipped on reading, which the
    replay notices at the end). Video files: frames grabbed to the end (the header's count is
    never trusted). Synthetic scenes: their ``frames``.
    """
    if uri.lower().startswith(SYNTHETIC_PREFIX):
        return parse_synthetic_uri(uri).frames or DEFAULT_SYNTHETIC_FRAMES
    path = Path(uri)
    if path.is_dir():
        return len(image_files(path))
    import cv2

    capture = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
    try:
        count = 0
        while capture.grab():
            count += 1
    finally:
        capture.release()
    return count


def label_mismatch(name: str, frames: int, labels: int, *, at_least: bool = False) -> DataError:
    has = f"at least {frames}" if at_least else str(frames)
    return DataError(
        f"labels of video {name!r} do not match its frames: the video has {has} frames, "
        f"the labels file has {labels} labels"
    )


def plan(sources: Sequence[str], labels_path: str | None, realtime: bool = False) -> list[ReplayVideo]:
    """The videos ``sources`` name, checked before any model is loaded.

    Every source is opened once (a missing or corrupt file fails here), and every video's
    frame count is compared with its labels. DataError / SourceError otherwise.
    """
    refs: list[VideoRef] = expand_videos(list(sources))
    labels = load_labels(labels_path) if labels_path else None
    if labels is not None and not any(ref.name in labels for ref in refs):
        names = ", ".join(ref.name for ref in refs[:5])
        raise DataError(
            f"labels file {labels_path} names none of the videos ({names}"
            f"{', ...' if len(refs) > 5 else ''}); its keys must be the video names"
        )
    videos: list[ReplayVideo] = []
    taken: set[str] = set()
    for ref in refs:
        uri = _synthetic_uri(ref.uri, realtime) if ref.uri.lower().startswith(SYNTHETIC_PREFIX) else ref.uri
        source = open_source(uri)
        with source:  # opening reads the first frame: a corrupt file fails here
            pass
        camera = camera_id(ref.name)
        base, n = camera, 1
        while camera in taken:
            n += 1
            camera = f"{base}-{n}"
        taken.add(camera)
        video = ReplayVideo(name=ref.name, uri=uri, camera=camera)
        if isinstance(source, (SyntheticSource, FolderSource)):
            video.expected_frames = count_frames(uri)
        if labels is not None:
            if ref.name in labels:
                video.labels = labels[ref.name]
                frames = video.expected_frames
                if frames is None and isinstance(source, FileSource):
                    frames = video.expected_frames = count_frames(uri)
                if frames is not None and frames != len(video.labels):
                    raise label_mismatch(ref.name, frames, len(video.labels))
            else:
                log.warning("labels file %s has no labels for video %r", labels_path, ref.name)
        videos.append(video)
    return videos
