"""Frame sources: cameras, network streams, video files, image folders and the synthetic scene.

``open_source(uri)`` turns one source string into a :class:`FrameSource` (not yet opened).
Every source is used the same way::

    with open_source("synthetic:?seed=3&fps=0&frames=100") as source:
        while (frame := source.read()) is not None:
            ...

``read()`` returns None at the end of a file, folder or finite synthetic scene. Live sources
(cameras, network streams) raise :class:`SourceDisconnected` when frames stop coming and close
themselves; ``open()`` again reconnects.
"""

from __future__ import annotations

import abc
import logging
import math
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from urllib.parse import urlsplit, urlunsplit

import cv2
import numpy as np

from forecaster.errors import SourceDisconnected, SourceError
from forecaster.sources.files import special_file
from forecaster.sources.luma import BACKENDS, Decoded, Decoder, PacketTap, open_decoder
from forecaster.sources.preprocess import to_gray
from forecaster.sources.synthetic import SyntheticScene
from forecaster.sources.synthetic_uri import (
    SYNTHETIC_PREFIX,
    SyntheticParams,
    parse_synthetic_uri,
)

__all__ = [
    "IMAGE_EXTENSIONS",
    "CameraSource",
    "FileSource",
    "FolderSource",
    "FrameSource",
    "SourceFrame",
    "StreamSource",
    "SyntheticParams",
    "SyntheticSource",
    "image_files",
    "natural_key",
    "open_source",
    "parse_synthetic_uri",
    "redact",
]

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".pgm", ".ppm", ".pbm", ".webp", ".jp2"}
)
STREAM_SCHEMES = frozenset({"rtsp", "rtsps", "rtmp", "http", "https"})
_CAMERA_PATH = re.compile(r"^/dev/video\d+$")
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")


@dataclass(frozen=True, slots=True)
class SourceFrame:
    """One captured frame at source resolution."""

    image: np.ndarray  #: uint8, (h, w) gray or (h, w, 3) BGR
    ts: float  #: UNIX seconds when captured (time.time())
    label: int | None = None  #: ground truth 0/1 where known (synthetic)
    #: the first frame after a looped source went back to its start: it does not follow
    #: the frame before it
    cut: bool = False
    #: seconds from the start of the file or stream, where the source knows it
    pos_s: float | None = None
    #: the gray frame as decoded (a video's luma plane) where ``image`` is in colour
    gray: np.ndarray | None = None

    def gray_image(self) -> np.ndarray:
        """The gray frame the model and the cue see: the decoder's own where it gave one,
        else the image made gray."""
        return self.gray if self.gray is not None else to_gray(self.image)


class FrameSource(abc.ABC):
    """A source of frames: ``open()``, then ``read()`` until None, then ``close()``."""

    #: True for cameras and network streams (and the paced synthetic scene)
    live: bool = False

    def __init__(self, uri: str) -> None:
        self.uri = uri
        self.nominal_fps: float | None = None
        #: bad frames skipped and counted (e.g. an unreadable image in a folder)
        self.skipped = 0

    @abc.abstractmethod
    def open(self) -> None:
        """Open the source; SourceError when it cannot be used (missing, corrupt, unknown)."""

    @abc.abstractmethod
    def read(self) -> SourceFrame | None:
        """The next frame, or None at the end; live sources raise SourceDisconnected."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release the source; safe to call twice."""

    def __enter__(self) -> FrameSource:
        self.open()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({redact(self.uri)!r})"

    def _not_open(self) -> RuntimeError:
        return RuntimeError(f"source is not open, call open() first: {redact(self.uri)}")


# -- helpers -------------------------------------------------------------------------------


def redact(uri: str) -> str:
    """``uri`` with any password replaced by ``***`` (for messages and logs)."""
    try:
        parts = urlsplit(uri)
    except ValueError:
        return uri
    if not parts.scheme or parts.password is None:
        return uri
    netloc = parts.netloc.rsplit("@", 1)
    user = netloc[0].split(":", 1)[0]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc[1]}"))


def natural_key(name: str) -> tuple[object, ...]:
    """Sort key that orders digit runs by value: ``2.jpg`` before ``10.jpg``."""
    parts = re.split(r"(\d+)", name)
    return (*(int(p) if i % 2 else p.casefold() for i, p in enumerate(parts)), name)


def image_files(folder: Path) -> list[Path]:
    """Image files directly in ``folder`` in natural name order (hidden files ignored)."""
    found = [
        p for p in folder.iterdir()
        if p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".") and p.is_file()
    ]
    return sorted(found, key=lambda p: natural_key(p.name))


# -- cameras and network streams -----------------------------------------------------------


class CameraSource(FrameSource):
    """A local camera through V4L2: ``"0"`` or ``"/dev/video0"``."""

    live = True

    def __init__(self, uri: str) -> None:
        super().__init__(uri)
        self._capture: cv2.VideoCapture | None = None

    @property
    def device(self) -> int | str:
        return int(self.uri) if self.uri.isdigit() else self.uri

    def open(self) -> None:
        self.close()
        path = f"/dev/video{self.uri}" if self.uri.isdigit() else self.uri
        if not os.path.exists(path):
            raise SourceError(f"camera not found: {self.uri} ({path} does not exist)")
        capture = cv2.VideoCapture(self.device, cv2.CAP_V4L2)
        if not capture.isOpened():
            capture.release()
            raise SourceError(f"cannot open camera {self.uri}: busy, not a capture device "
                              f"or no permission to {path}")
        fps = capture.get(cv2.CAP_PROP_FPS)
        self.nominal_fps = float(fps) if fps and math.isfinite(fps) and fps > 0 else None
        self._capture = capture

    def read(self) -> SourceFrame | None:
        if self._capture is None:
            raise self._not_open()
        ok, image = self._capture.read()
        if not ok or image is None:
            self.close()
            raise SourceDisconnected(f"camera {self.uri} stopped delivering frames")
        return SourceFrame(image, time.time())

    def close(self) -> None:
        if self._capture is not None:
            self._capture.release()
            self._capture = None


class StreamSource(FrameSource):
    """A network stream (``rtsp://``, ``http(s)://`` MJPEG, ...), decoded by PyAV to its luma
    plane (:mod:`forecaster.sources.luma`), or by OpenCV where PyAV cannot open it.

    Connecting gives up after ``open_timeout_s`` and a read after ``read_timeout_s``; both
    raise :class:`SourceDisconnected` (a stream that is down now may come back).
    """

    live = True

    def __init__(self, uri: str, *, open_timeout_s: float = 10.0,
                 read_timeout_s: float = 5.0, color: bool = False,
                 color_width: int | None = None, tap: PacketTap | None = None) -> None:
        super().__init__(uri)
        #: decode to BGR (frames recorded or shown), not to the luma plane
        self.color = color
        #: colour frames at most this wide (None: the stream's own size)
        self.color_width = color_width
        #: told of what PyAV demuxes and decodes (clips copied from the stream)
        self.tap = tap
        if open_timeout_s <= 0 or read_timeout_s <= 0:
            raise SourceError(f"stream timeouts must be > 0, got open={open_timeout_s} "
                              f"read={read_timeout_s} for {redact(uri)}")
        self.open_timeout_s = open_timeout_s
        self.read_timeout_s = read_timeout_s
        self._decoder: Decoder | None = None
        #: the backend that opened the stream last (a reconnect tries it first)
        self.backend: str | None = None

    def open(self) -> None:
        self.close()
        try:
            decoder = open_decoder(self.uri, timeout_s=(self.open_timeout_s, self.read_timeout_s),
                                   backend=self.backend, color=self.color,
                                   color_width=self.color_width, tap=self.tap)
        except ValueError:
            raise SourceDisconnected(
                f"cannot connect to stream {redact(self.uri)}: refused, not a video stream "
                f"or no answer within {self.open_timeout_s:g} s") from None
        self.nominal_fps = decoder.nominal_fps
        self.backend = decoder.backend
        self._decoder = decoder

    def read(self) -> SourceFrame | None:
        if self._decoder is None:
            raise self._not_open()
        try:
            decoded = self._decoder.read()
        except Exception:  # PyAV raises on a reset connection or a read timeout
            decoded = None
        if decoded is None:
            self.close()
            raise SourceDisconnected(
                f"stream {redact(self.uri)} stopped delivering frames (closed, or nothing "
                f"within {self.read_timeout_s:g} s)")
        return SourceFrame(decoded[0], time.time(), pos_s=decoded[1], gray=decoded[2])

    def close(self) -> None:
        if self._decoder is not None:
            self._decoder.close()
            self._decoder = None


# -- files and folders ---------------------------------------------------------------------


class FileSource(FrameSource):
    """A video file, decoded by PyAV to its luma plane (:mod:`forecaster.sources.luma`), or by
    OpenCV where PyAV cannot open it, until the last decodable frame.

    The header's frame count is never used. ``open()`` decodes the first frame so that an
    unreadable or truncated file fails there. ``loop=True`` restarts at the end; the first
    frame again comes with ``cut`` set. Each frame carries its position in the file.
    """

    def __init__(self, path: str | Path, *, loop: bool = False, color: bool = False,
                 color_width: int | None = None, tap: PacketTap | None = None) -> None:
        super().__init__(str(path))
        self.path = Path(path)
        self.loop = loop
        #: decode to BGR (frames recorded or shown), not to the luma plane
        self.color = color
        #: colour frames at most this wide (None: the file's own size)
        self.color_width = color_width
        #: told of what PyAV demuxes and decodes (clips copied from the file)
        self.tap = tap
        self._decoder: Decoder | None = None
        self._pending: Decoded | None = None
        #: the backend that opened the file
        self.backend: str | None = None

    def open(self) -> None:
        self.close()
        if not self.path.exists():
            raise SourceError(f"video file not found: {self.path}")
        if not self.path.is_file():
            raise SourceError(f"not a video file: {self.path}")
        self._decoder, self._pending = self._start()
        self.nominal_fps = self._decoder.nominal_fps

    def _start(self) -> tuple[Decoder, Decoded]:
        opened = False
        for backend in [self.backend] if self.backend else list(BACKENDS):
            try:
                decoder = open_decoder(str(self.path), backend=backend, color=self.color,
                                       color_width=self.color_width, tap=self.tap)
            except ValueError:
                continue
            opened = True
            first = self._read(decoder)
            if first is not None:
                self.backend = backend
                return decoder, first
            decoder.close()  # PyAV found no frame: OpenCV may still decode one
        if not opened:
            raise SourceError(f"cannot open video file (not a video, unsupported or corrupt): "
                              f"{self.path}")
        raise SourceError(f"video file has no decodable frame (truncated or corrupt): "
                          f"{self.path}")

    @staticmethod
    def _read(decoder: Decoder) -> Decoded | None:
        try:
            return decoder.read()
        except Exception:  # PyAV raises where a file is cut short or corrupt: its end
            return None

    def read(self) -> SourceFrame | None:
        if self._decoder is None:
            raise self._not_open()
        if self._pending is not None:
            (image, pos, gray), self._pending = self._pending, None
            return SourceFrame(image, time.time(), pos_s=pos, gray=gray)
        decoded = self._read(self._decoder)
        if decoded is not None:
            return SourceFrame(decoded[0], time.time(), pos_s=decoded[1], gray=decoded[2])
        if not self.loop:
            return None
        self._decoder.close()
        self._decoder, (image, pos, gray) = self._start()
        return SourceFrame(image, time.time(), cut=True, pos_s=pos, gray=gray)

    def close(self) -> None:
        self._pending = None
        if self._decoder is not None:
            self._decoder.close()
            self._decoder = None


class FolderSource(FrameSource):
    """Images of one folder in natural name order (``2.jpg`` before ``10.jpg``).

    Images may differ in size and colour: each is returned as decoded, and the reader
    converts and resizes each on its own to the model's frame size. An unreadable image is
    skipped and counted in ``skipped`` (once per file); the first ``WARN_SKIPPED`` are
    logged one by one, the rest in one summary at the end of the folder. ``loop=True``
    restarts at the end; the first image again comes with ``cut`` set.
    """

    #: unreadable images logged one line each; later ones are summed up in one line
    WARN_SKIPPED = 3

    def __init__(self, path: str | Path, *, loop: bool = False) -> None:
        super().__init__(str(path))
        self.path = Path(path)
        self.loop = loop
        self.files: list[Path] = []
        self._next = 0
        self._bad: set[int] = set()
        self._unreported = 0
        self._pending: np.ndarray | None = None
        self._open = False

    def open(self) -> None:
        self.close()
        if not self.path.is_dir():
            raise SourceError(f"image folder not found: {self.path}")
        self.files = image_files(self.path)
        if not self.files:
            raise SourceError(f"image folder has no images ({', '.join(sorted(IMAGE_EXTENSIONS))})"
                              f": {self.path}")
        self._next, self._bad, self.skipped, self._unreported = 0, set(), 0, 0
        first = self._scan(len(self.files))
        if first is None:
            raise SourceError(f"image folder has no readable image ({len(self.files)} tried): "
                              f"{self.path}")
        self._pending = first
        self._open = True

    def _scan(self, stop: int) -> np.ndarray | None:
        """The next good image among files ``_next .. stop - 1``, or None."""
        while self._next < stop:
            index = self._next
            self._next += 1
            if index in self._bad:
                continue
            path = self.files[index]
            image = cv2.imread(str(path), cv2.IMREAD_ANYCOLOR)
            if image is None or image.dtype != np.uint8 or image.size == 0:
                self._skip(index, path)
                continue
            return image
        if self._unreported:
            log.warning("%d more unreadable image(s) skipped in %s (%d in all)",
                        self._unreported, self.path, self.skipped)
            self._unreported = 0
        return None

    def _skip(self, index: int, path: Path) -> None:
        self._bad.add(index)
        self.skipped += 1
        if self.skipped <= self.WARN_SKIPPED:
            log.warning("unreadable image skipped: %s", path)
        else:
            self._unreported += 1

    def read(self) -> SourceFrame | None:
        if not self._open:
            raise self._not_open()
        if self._pending is not None:
            pending, self._pending = self._pending, None
            return SourceFrame(pending, time.time())
        image = self._scan(len(self.files))
        cut = image is None and self.loop
        if cut:
            self._next = 0
            image = self._scan(len(self.files))
        return None if image is None else SourceFrame(image, time.time(), cut=cut)

    def close(self) -> None:
        self._pending = None
        self._open = False


# -- synthetic scene -----------------------------------------------------------------------


class SyntheticSource(FrameSource):
    """The built-in synthetic scene; ``read()`` returns gray frames with their labels.

    With ``fps > 0`` reads are paced on a monotonic schedule like a camera (a late reader gets
    the next frame at once and the schedule restarts from then, with no burst); ``fps=0`` is
    unpaced. ``frames=N`` ends after N frames (``loop=True`` restarts at frame 0, which
    then comes with ``cut`` set).
    """

    def __init__(self, uri: str = SYNTHETIC_PREFIX, *, loop: bool = False) -> None:
        super().__init__(uri)
        self.params = parse_synthetic_uri(uri)
        self.loop = loop
        self.live = self.params.fps > 0
        self.nominal_fps = self.params.fps or None
        self.scene: SyntheticScene | None = None
        #: index of the next frame of the scene
        self.index = 0
        self._due = 0.0

    def open(self) -> None:
        self.scene = self.params.scene()
        self.index = 0
        self._due = time.monotonic()

    def read(self) -> SourceFrame | None:
        if self.scene is None:
            raise self._not_open()
        frames = self.params.frames
        cut = frames is not None and self.index >= frames
        if cut:
            if not self.loop:
                return None
            self.index = 0
        if self.params.fps > 0:
            period = 1.0 / self.params.fps
            now = time.monotonic()
            if now < self._due:
                time.sleep(self._due - now)
            elif now - self._due > period:
                self._due = now  # late by more than a frame: restart the schedule
            self._due += period
        i = self.index
        self.index += 1
        return SourceFrame(self.scene.frame(i), time.time(), self.scene.label(i), cut)

    def close(self) -> None:
        self.scene = None


# -- parsing -------------------------------------------------------------------------------


def is_live_source(uri: str) -> bool:
    """Does ``uri`` name a camera or a network stream (not a file, folder or synthetic
    scene)?"""
    if uri.lower().startswith(SYNTHETIC_PREFIX):
        return False
    return bool(_SCHEME.match(uri)) or (uri.isascii() and uri.isdigit()) or bool(
        _CAMERA_PATH.match(uri))


def open_source(uri: str, *, loop: bool = False, color: bool = False,
                color_width: int | None = None, tap: PacketTap | None = None) -> FrameSource:
    """The source for a source string (not opened); SourceError for a string that names none.

    ``color``: a video file or stream keeps its colours (its frames are recorded or shown),
    at most ``color_width`` wide where its decoder can shrink them cheaply (the width they
    are kept at); without it, it is decoded to its luma plane, the cheapest gray frame.
    ``tap``: a video file or stream that PyAV decodes tells it of its packets and frames."""
    if not isinstance(uri, str) or not uri.strip():
        raise SourceError(f"empty source string: {uri!r}")
    if uri.lower().startswith(SYNTHETIC_PREFIX):
        return SyntheticSource(uri, loop=loop)
    scheme = _SCHEME.match(uri)
    if scheme:
        name = scheme.group(1).lower()
        if name not in STREAM_SCHEMES:
            raise SourceError(f"unsupported source scheme {name!r} in {redact(uri)} (use one of "
                              f"{', '.join(sorted(STREAM_SCHEMES))}, a camera, a path or "
                              f"synthetic:)")
        return StreamSource(uri, color=color, color_width=color_width, tap=tap)
    if (uri.isascii() and uri.isdigit()) or _CAMERA_PATH.match(uri):
        return CameraSource(uri)
    if "\0" in uri:
        raise SourceError(f"source {uri!r}: a path cannot hold a NUL character")
    try:
        path = Path(uri).expanduser()
    except RuntimeError:
        raise SourceError(f"source {uri!r}: {uri.split('/', 1)[0]}: no such user (or no home "
                          f"folder)") from None
    if path.is_dir():
        return FolderSource(path, loop=loop)
    if path.is_file():
        return FileSource(path, loop=loop, color=color, color_width=color_width, tap=tap)
    special = special_file(path)
    if special is not None:
        raise SourceError(f"not a video file or an image folder: {uri} is {special} (a "
                          f"camera is 0 or /dev/videoN)")
    raise SourceError(f"video file or image folder not found: {uri}")
