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
        #: the source's showing order of the clip's first frame
        self._first: int | None = None
        #: packets muxed so far
        self.muxed = 0

    def write_packet(self, packet: Any, frame: int) -> bool | None:
        """Mux ``packet`` (the next in decoding order), whose frame is ``frame``-th in showing
        order over the source. None: not for this clip (a frame shown before its first
        keyframe); False: decoded further ahead of its showing than :data:`REORDER`."""
        if self._first is None:
            self._first = frame
        shown = frame - self._first
        if shown < 0:
            return None
        decoded = self.muxed - REORDER
        if decoded > shown:
            return False
        packet.stream = self.stream
        packet.time_base = Fraction(1, TIMESCALE)
        packet.pts = round(shown * self.tick)
        packet.dts = round(decoded * self.tick)
        packet.duration = round(self.tick)
        self.container.mux(packet)
        self.muxed += 1
        return True

    def write(self, image: Any) -> None:
        raise TypeError("a copied clip takes packets, not images")

    def close(self) -> None:
        self.container.close()

    def abort(self) -> None:
        with contextlib.suppress(Exception):  # a half-written file is deleted anyway
            self.container.close()


def copy_packet(writer: CopyWriter | None, clip: Any, kept: Any, temp: Path) -> CopyWriter:
    """``kept`` (a :class:`~forecaster.recording.packets.Kept`) muxed into ``clip``'s MP4 at
    ``temp``, the writer opened at the clip's first packet (a keyframe); the clip's counts
    and bounds updated. FFmpeg's refusal is an OSError naming the file (the clip writer
    discards the clip and says so in one line)."""
    fresh = writer is None
    try:
        if writer is None:
            temp.parent.mkdir(parents=True, exist_ok=True)
            segment = clip.copied
            writer = CopyWriter(temp, segment.template, (segment.width, segment.height),
                                clip.fps)
            clip.size, clip.codec = writer.size, writer.codec
        written = writer.write_packet(kept.packet, kept.frame)
    except Exception as error:
        if fresh and writer is not None:
            writer.abort()  # not handed back: closed here
        if isinstance(error, OSError):
            raise
        # PyAV's errors of the muxer (FFmpegError)
        raise OSError(f"cannot copy the camera's video into {temp}: {error}") from error
    if written is None:  # shown before the clip's first keyframe: not for this clip
        return writer
    if not written:  # too far out of order for the clip's timestamps: counted
        clip.dropped += 1
        return writer
    clip.frames += 1
    if clip.first_frame is None:
        clip.first_frame = kept.frame
    if kept.seq >= 0:
        if clip.first_seq is None or kept.seq < clip.first_seq:
            clip.first_seq, clip.first_ts = kept.seq, kept.ts
        if clip.last_seq is None or kept.seq > clip.last_seq:
            clip.last_seq, clip.last_ts = kept.seq, kept.ts
    return writer

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
