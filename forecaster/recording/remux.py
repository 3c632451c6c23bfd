"""The MP4 muxing of copied clips (:mod:`forecaster.recording.packets`), in the clip
writer's thread: the packets get timestamps of their own (frame ``n`` of the clip is shown at
``n / fps``), so a clip that spans a file's loop or a reconnect plays straight through; and
the snapshot is the peak frame decoded from the finished clip."""

from __future__ import annotations

import contextlib
from fractions import Fraction
from pathlib import Path
from typing import Any

import cv2

from forecaster.sources.luma import colour

#: frames a packet may come ahead of its showing order (B-frames): its decoding time is set
#: this many frames before the first frame's showing time
REORDER = 4
#: ticks per second of a copied clip's timestamps
TIMESCALE = 90_000


class CopyWriter:
    """An MP4 clip made of copied packets, with its index first.

    ``template``: a stream with the packets' codec parameters; ``size``: their frames'
    (width, height)."""

    codec = "avc1"

    def __init__(self, path: Path, template: Any, size: tuple[int, int], fps: float) -> None:
        import av

        self.path = path
        self.size = size
        self.tick = TIMESCALE / fps
        self.container = av.open(str(path), "w", format="mp4",
                                 options={"movflags": "+faststart"})
        try:
            self.stream = self.container.add_stream_from_template(template)
        except BaseException:
            self.container.close()
            raise
        self._first: tuple[int, int] | None = None

    def write_packet(self, packet: Any, index: int, frame: int) -> bool:
        """Mux ``packet``, ``index``-th in decoding order, whose frame is ``frame``-th in
        showing order (both counted over the source); False where it cannot be shown in this
        clip (a frame shown before the clip's first keyframe, or one further out of order than
        :data:`REORDER`)."""
        if self._first is None:
            self._first = (index, frame)
        first_index, first_frame = self._first
        shown = frame - first_frame
        decoded = index - first_index - REORDER
        if shown < 0 or decoded > shown:
            return False
        packet.stream = self.stream
        packet.time_base = Fraction(1, TIMESCALE)
        packet.pts = round(shown * self.tick)
        packet.dts = round(decoded * self.tick)
        packet.duration = round(self.tick)
        self.container.mux(packet)
        return True

    def write(self, image: Any) -> None:
        raise TypeError("a copied clip takes packets, not images")

    def close(self) -> None:
        self.container.close()

    def abort(self) -> None:
        with contextlib.suppress(Exception):  # a half-written file is deleted anyway
            self.container.close()


def copied_snapshot(path: Path, offset: int, fps: float, max_width: int, quality: int
                    ) -> bytes | None:
    """The JPEG of frame ``offset`` (showing order) of the copied clip ``path``, at most
    ``max_width`` wide: decoded from the keyframe before it."""
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "NONE"
        ticks = 1 / (fps * stream.time_base)  # a frame's duration in the stream's ticks
        base = stream.start_time or 0
        target = base + round(max(offset, 0) * ticks)
        if offset > 0:
            container.seek(target, stream=stream, backward=True)
        image = None
        for frame in container.decode(stream):
            image = frame
            if frame.pts is None or frame.pts >= target - ticks / 2:
                break
        if image is None:
            return None
        ok, data = cv2.imencode(".jpg", colour(image, max_width),
                                [int(cv2.IMWRITE_JPEG_QUALITY), quality])
        return data.tobytes() if ok else None
