"""Replay's clock: a frame's time is its place in the video, not the time of the run.

A frame's time is ``origin + position``. The position is the frame's index at the file's
nominal frame rate where the decoder knows one (containers such as AVI give B-frames no
usable time stamp of their own), else its time stamp in the file, else ``seq / fps`` (frame ``seq`` at ``fps`` frames
per second: image folders, the synthetic scene). The origin is the file's own start time
where its container names one (``creation_time``, as cameras and phones write it), else 0
(1970-01-01T00:00:00Z).
Scores, events, ``scores.csv`` and the clips' names and sidecars all use that time, so a
replay of the same footage gives the same times whenever it runs.
"""

from __future__ import annotations

import datetime
import logging
import math
from pathlib import Path

log = logging.getLogger("forecaster.replay")

#: a creation time before this (2000-01-01) is a placeholder, not the recording's time
#: (MP4's zero is 1904-01-01, many muxers write 1970-01-01)
EARLIEST_ORIGIN = 946_684_800.0


def parse_time(value: str) -> float | None:
    """UNIX seconds of an ISO 8601 time (``2024-05-01T12:00:00.000000Z``), or None."""
    text = value.strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    try:
        moment = datetime.datetime.fromisoformat(text)
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.timezone.utc)
    seconds = moment.timestamp()
    return seconds if math.isfinite(seconds) else None


def file_origin(path: Path) -> float | None:
    """The UNIX time a video file's container says its recording began (its
    ``creation_time``), or None when it names none that is plausible (or PyAV cannot read
    it)."""
    if not path.is_file():
        return None
    try:
        import av  # loaded only here: the containers' tags, which OpenCV does not give

        with av.open(str(path)) as container:
            tags = dict(container.metadata)
            for stream in container.streams.video[:1]:
                tags = {**stream.metadata, **tags}
    except Exception as error:  # PyAV missing, or a container it cannot read: no origin
        log.debug("no creation time read from %s: %s", path, error)
        return None
    value = tags.get("creation_time")
    origin = parse_time(value) if isinstance(value, str) else None
    if origin is None or origin < EARLIEST_ORIGIN:
        return None
    return origin


class VideoClock:
    """The time of each frame of one replayed video: ``origin + position``."""

    def __init__(self, uri: str, fps: float) -> None:
        self.fps = fps
        found = file_origin(Path(uri))
        #: the file's own start time (None: it has none; the times are its positions)
        self.file_time = found
        self.origin = found if found is not None else 0.0

    def ts(self, seq: int, pos_s: float | None = None) -> float:
        """Frame ``seq``'s time; ``pos_s``: its position in the file, where known."""
        if pos_s is None or not math.isfinite(pos_s):
            pos_s = seq / self.fps
        return self.origin + pos_s
