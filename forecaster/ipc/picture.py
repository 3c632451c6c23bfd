"""The camera's picture for the live page: one JPEG per camera in shared memory.

The picture area sits at the end of the camera's frame ring (:mod:`forecaster.ipc.ring`),
so it lives as long as the ring and needs no name of its own. The web process asks for
pictures while a page is open: it sets ``picture_wanted_until_ms`` (wall-clock
milliseconds) a few seconds ahead, again and again, and ``picture_interval_ms``. The
capture process looks at that field once per frame; while it is in the future it encodes
the source frame (scaled to at most ``recording.max_width``) as a JPEG at most once per
interval and writes it here. Nobody watching: no encode, no write, no cost.

Layout of the area: ``version`` (int64, odd while a write is under way), ``seq`` (int64),
``ts`` (float64), ``length`` (int64), then the JPEG. A reader copies it and checks
``version`` before and after: a picture overwritten during the copy is detected, not
returned torn.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np

from forecaster.ipc.ring import HEADER_FIELD, FrameRing
from forecaster.sources.preprocess import scaled

META_BYTES = 32
#: how long one request for pictures lasts (the web process renews it while a page is open)
WANTED_S = 3.0
JPEG_QUALITY = 80


@dataclass(frozen=True, slots=True)
class Picture:
    seq: int
    ts: float
    jpeg: bytes


class PictureSlot:
    """A view of a ring's picture area: :meth:`offer` on the capture side, :meth:`want`
    and :meth:`read` on the web side."""

    def __init__(self, ring: FrameRing) -> None:
        self.ring = ring
        self.capacity = ring.picture_bytes - META_BYTES
        self._header = ring.header
        self._next_ms = 0
        if self.capacity <= 0:
            self._meta = np.zeros(4, np.int64)
            self._data = np.zeros(0, np.uint8)
            return
        offset = ring.picture_offset
        self._meta = np.ndarray((4,), np.int64, ring.buffer, offset)
        self._data = np.ndarray((self.capacity,), np.uint8, ring.buffer, offset + META_BYTES)

    # -- the web process ----------------------------------------------------------------

    def want(self, interval_s: float, now: float | None = None) -> None:
        """Ask for a picture every ``interval_s`` for the next :data:`WANTED_S` seconds."""
        now = time.time() if now is None else now
        self._header[HEADER_FIELD["picture_interval_ms"]] = int(interval_s * 1000)
        self._header[HEADER_FIELD["picture_wanted_until_ms"]] = int((now + WANTED_S) * 1000)

    def read(self, newer_than: int = -1) -> Picture | None:
        """The picture, when there is one of a frame after ``newer_than``; else None."""
        meta = self._meta
        version = int(meta[0])
        if version == 0 or version % 2 or int(meta[1]) <= newer_than:
            return None
        seq, ts, length = int(meta[1]), float(meta[2:3].view(np.float64)[0]), int(meta[3])
        if not 0 < length <= self.capacity:
            return None
        jpeg = self._data[:length].tobytes()
        if int(meta[0]) != version:
            return None
        return Picture(seq, ts, jpeg)

    # -- the capture process ------------------------------------------------------------

    def due(self, now: float) -> bool:
        """Whether a page wants a picture now (one integer read when nobody watches)."""
        now_ms = int(now * 1000)
        header = self._header
        if header[HEADER_FIELD["picture_wanted_until_ms"]] <= now_ms or now_ms < self._next_ms:
            return False
        self._next_ms = now_ms + int(header[HEADER_FIELD["picture_interval_ms"]])
        return True

    def write(self, jpeg: bytes, seq: int, ts: float) -> bool:
        """Store a JPEG of frame ``seq``; False (nothing written) when it does not fit."""
        length = len(jpeg)
        if length > self.capacity:
            return False
        meta = self._meta
        meta[0] += 1  # odd: being written
        meta[1] = seq
        meta[2:3].view(np.float64)[0] = ts
        meta[3] = length
        self._data[:length] = np.frombuffer(jpeg, np.uint8)
        meta[0] += 1
        return True

    def offer(self, image: np.ndarray | Callable[[], np.ndarray], seq: int, ts: float,
              max_width: int, now: float | None = None) -> bool:
        """Encode and store ``image`` (the source frame; or a function that makes it, called
        only then) when a page wants it now."""
        if self.capacity <= 0 or not self.due(time.time() if now is None else now):
            return False
        if callable(image):
            image = image()
        ok, data = cv2.imencode(".jpg", scaled(image, max_width),
                                [int(cv2.IMWRITE_JPEG_QUALITY), JPEG_QUALITY])
        return bool(ok) and self.write(data.tobytes(), seq, ts)

    def close(self) -> None:
        """Drop the views into the shared memory (before the ring closes)."""
        self._meta = np.zeros(4, np.int64)
        self._data = np.zeros(0, np.uint8)
