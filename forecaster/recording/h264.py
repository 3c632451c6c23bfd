"""Clip video files that a browser plays: H.264 (``avc1``) in MP4, the index first.

:func:`open_video` opens a writer for one clip. It encodes with libx264 through PyAV
(the ``av`` package, whose wheels bundle FFmpeg and libx264) into an MP4 written with
``+faststart``: the index (``moov``) goes before the frames (``mdat``), so a browser starts
playing before the whole file has arrived. Where PyAV or its libx264 encoder is missing,
the writer falls back to OpenCV's MPEG-4 Part 2 (``mp4v``), which browsers do not play,
and says so once in the log (:func:`encoder_problem` gives the reason).

A write that fails (a full disk) raises :class:`OSError`; the caller discards the file.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
from fractions import Fraction
from pathlib import Path
from typing import Any, Protocol

import cv2
import numpy as np

from forecaster.config.outputs import RecordingConfig

log = logging.getLogger("forecaster.recording")

#: the browser-playable codec
CODEC = "avc1"
#: the fallback's codec (OpenCV, no PyAV)
FALLBACK_CODEC = "mp4v"
#: libx264's settings besides its preset (``recording.preset``): constant quality
X264_OPTIONS = {"crf": "23"}
#: the preset of a clip when none is given: ``recording.preset``'s default (the fastest, as
#: the writer thread shares the capture process's core with the decoding and the motion
#: cue: on 640x360 street footage it takes 0.55-0.7x the CPU of "superfast" for 1.9x the
#: bytes, benchmarks/clip_presets.py)
DEFAULT_PRESET: str = RecordingConfig.model_fields["preset"].default


class VideoWriter(Protocol):
    """One clip's video file, being written."""

    codec: str
    size: tuple[int, int]

    def write(self, image: np.ndarray) -> None:
        """Append one BGR frame of :attr:`size` (width, height)."""

    def close(self) -> None:
        """Finish the file; raises :class:`OSError` when it could not be written."""

    def abort(self) -> None:
        """Stop writing; the file is left as it is, for the caller to delete."""


def even_size(width: int, height: int) -> tuple[int, int]:
    """The frame size H.264 (4:2:0) takes: each side rounded down to even, at least 2."""
    return max(2, width - width % 2), max(2, height - height % 2)


@functools.lru_cache(maxsize=1)
def encoder_problem() -> str:
    """Why clips cannot be H.264 here ("" when they can)."""
    try:
        import av  # loaded only where clips are written
    except ImportError as error:
        return f"PyAV is not installed ({error})"
    try:
        av.codec.Codec("libx264", "w")
    except Exception as error:  # av raises its own UnknownCodecError
        return f"PyAV {av.__version__} has no libx264 encoder ({error})"
    return ""


class H264Writer:
    """libx264 through PyAV into an MP4 with its index first (``+faststart``)."""

    codec = CODEC

    def __init__(self, path: Path, fps: float, size: tuple[int, int],
                 preset: str = DEFAULT_PRESET) -> None:
        import av

        self._av: Any = av
        self.path = path
        self.size = even_size(*size)
        self.rate = Fraction(fps).limit_denominator(1001)
        self._index = 0
        try:
            self._container: Any = av.open(str(path), mode="w", format="mp4",
                                           options={"movflags": "+faststart"})
            stream: Any = self._container.add_stream("libx264", rate=self.rate)
            stream.width, stream.height = self.size
            stream.pix_fmt = "yuv420p"
            stream.options = {**X264_OPTIONS, "preset": preset}
            stream.codec_context.thread_count = 1
            self._stream = stream
        except av.FFmpegError as error:
            self.abort()
            raise OSError(f"cannot write {path}: {error}") from error

    def write(self, image: np.ndarray) -> None:
        av = self._av
        width, height = self.size
        if image.shape[1] != width or image.shape[0] != height:
            image = image[:height, :width]
        # OpenCV's BGR to I420 (BT.601, limited range, as swscale's) takes a third of the
        # CPU of PyAV's conversion at 640x360; the planes differ by at most 2 levels
        planes = cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_BGR2YUV_I420)
        frame = av.VideoFrame.from_ndarray(planes, format="yuv420p")
        frame.pts = self._index
        frame.time_base = 1 / self.rate
        self._index += 1
        try:
            for packet in self._stream.encode(frame):
                self._container.mux(packet)
        except av.FFmpegError as error:
            raise OSError(f"cannot write {self.path}: {error}") from error

    def close(self) -> None:
        av = self._av
        try:
            for packet in self._stream.encode():
                self._container.mux(packet)
            self._container.close()  # moves the index to the front (+faststart)
        except av.FFmpegError as error:
            self.abort()
            raise OSError(f"cannot write {self.path}: {error}") from error

    def abort(self) -> None:
        container = getattr(self, "_container", None)
        if container is not None:
            with contextlib.suppress(Exception):
                container.close()


class Mp4vWriter:
    """The fallback: OpenCV's MPEG-4 Part 2, which browsers do not play."""

    codec = FALLBACK_CODEC

    def __init__(self, path: Path, fps: float, size: tuple[int, int]) -> None:
        self.path = path
        self.size = size
        self._writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*FALLBACK_CODEC), fps,
                                       size)
        if not self._writer.isOpened():
            raise OSError(f"cannot write {path} (OpenCV has no {FALLBACK_CODEC} encoder)")

    def write(self, image: np.ndarray) -> None:
        self._writer.write(image)

    def close(self) -> None:
        self._writer.release()

    def abort(self) -> None:
        with contextlib.suppress(cv2.error):
            self._writer.release()


_warned = False


def open_video(path: Path, fps: float, size: tuple[int, int],
               preset: str = DEFAULT_PRESET) -> VideoWriter:
    """A writer of ``path`` at ``fps`` frames per second, frames ``size`` = (width,
    height): H.264 with libx264's ``preset`` where PyAV has libx264, else ``mp4v`` (said
    once in the log)."""
    global _warned  # one line per process
    problem = encoder_problem()
    if not problem:
        return H264Writer(path, fps, size, preset)
    if not _warned:
        _warned = True
        log.warning("clips are written as MPEG-4 Part 2 (mp4v), which browsers do not play: "
                    "%s; `pip install av` gives H.264", problem)
    return Mp4vWriter(path, fps, size)


def top_level_boxes(path: Path) -> list[bytes] | None:
    """The types of an MP4 file's top-level boxes in order (``ftyp``, ``moov``, ``mdat``,
    ...), or None when they do not fill the file exactly (a write cut short)."""
    types: list[bytes] = []
    try:
        with path.open("rb") as file:
            size = os.fstat(file.fileno()).st_size
            offset = 0
            while offset < size:
                file.seek(offset)
                header = file.read(16)
                if len(header) < 8:
                    return None
                length = int.from_bytes(header[:4], "big")
                if length == 1 and len(header) == 16:
                    length = int.from_bytes(header[8:16], "big")
                elif length == 0:
                    length = size - offset
                if length < 8 or offset + length > size:
                    return None
                types.append(header[4:8])
                offset += length
    except OSError:
        return None
    return types


def faststart(path: Path) -> bool:
    """Does the MP4 file's index (``moov``) come before its frames (``mdat``)?"""
    boxes = top_level_boxes(path) or []
    return b"moov" in boxes and b"mdat" in boxes and boxes.index(b"moov") < boxes.index(b"mdat")


def mp4_complete(path: Path) -> bool:
    """Is ``path`` a whole MP4 file: top-level boxes that fill it exactly, a ``moov`` (the
    index, written last) among them? A write cut short by a full disk leaves it out."""
    boxes = top_level_boxes(path)
    return boxes is not None and b"moov" in boxes and b"mdat" in boxes
