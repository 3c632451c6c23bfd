"""Per-camera shared-memory ring of the last N frames.

One writer (the camera's capture process), any number of readers (the inference worker).
The supervisor creates and unlinks every ring; children attach by name. The ring outlives
capture and worker restarts, so a restarted worker re-primes its state from it.

Layout (all little-endian, 8-byte fields):
    header   magic, version, height, width, slots, latest_seq, frames_captured,
             frames_skipped, connected, ended, epoch, writer_pid, frames_rate_limited,
             picture_bytes, picture_wanted_until_ms, picture_interval_ms
    slot[i]  seq (int64), ts (float64), cue (float64: the frame's motion cue, see
             :mod:`forecaster.detection.flow`; NaN when none is computed), 8 bytes of padding,
             pixels (height*width uint8, padded to 64 bytes)
    picture  the camera's picture for the live page (:mod:`forecaster.ipc.picture`):
             ``picture_bytes`` bytes after the last slot, untouched while no page is open

A slot is written as: seq := -1, pixels, ts, cue, seq := frame seq; then latest_seq. A reader
copies a slot and checks its seq before and after the copy, so a frame overwritten during
the read is detected rather than returned torn.
"""

from __future__ import annotations

import contextlib
import sys
from dataclasses import dataclass
from multiprocessing import shared_memory

import numpy as np

from forecaster.errors import ForecasterError

MAGIC = 0x46524E47  # "FRNG"
VERSION = 3
_HEADER_FIELDS = (
    "magic",
    "version",
    "height",
    "width",
    "slots",
    "latest_seq",
    "frames_captured",
    "frames_skipped",
    "connected",
    "ended",
    "epoch",
    "writer_pid",
    "frames_rate_limited",
    "picture_bytes",
    "picture_wanted_until_ms",
    "picture_interval_ms",
)
_H = {name: index for index, name in enumerate(_HEADER_FIELDS)}
#: index of each header field in :attr:`FrameRing.header`
HEADER_FIELD = _H
HEADER_BYTES = 128  # room for 16 int64 fields
SLOT_META_BYTES = 32
#: room for the live page's picture of the camera (a JPEG; pages of shared memory are
#: allocated only once written, so a camera that nobody watches costs none of it)
PICTURE_BYTES = 2 * 1024 * 1024


def ring_name(instance: str, camera: str) -> str:
    """Shared-memory name for one camera of one daemon instance."""
    return f"forecaster_{instance}_{camera}"


def _slot_bytes(height: int, width: int) -> int:
    pixels = height * width
    return SLOT_META_BYTES + (pixels + 63) // 64 * 64


class RingError(ForecasterError):
    """A ring that does not exist or does not have the expected layout."""


@dataclass(frozen=True, slots=True)
class RingStats:
    latest_seq: int
    frames_captured: int
    frames_skipped: int
    frames_rate_limited: int
    connected: bool
    ended: bool
    epoch: int


class FrameRing:
    """A view of one shared-memory ring. Use :meth:`create` or :meth:`attach`."""

    def __init__(self, shm: shared_memory.SharedMemory, owner: bool) -> None:
        self._shm = shm
        self._owner = owner
        self.header = np.ndarray((16,), dtype=np.int64, buffer=shm.buf)
        if self.header[_H["magic"]] != MAGIC or self.header[_H["version"]] != VERSION:
            shm.close()
            raise RingError(f"shared memory {shm.name} is not a forecaster ring (v{VERSION})")
        self.height = int(self.header[_H["height"]])
        self.width = int(self.header[_H["width"]])
        self.slots = int(self.header[_H["slots"]])
        #: where the picture area starts, and its size (see :mod:`forecaster.ipc.picture`)
        self.picture_offset = HEADER_BYTES + self.slots * _slot_bytes(self.height, self.width)
        self.picture_bytes = int(self.header[_H["picture_bytes"]])
        expected = self.picture_offset + self.picture_bytes
        if shm.size < expected:
            shm.close()
            raise RingError(f"shared memory {shm.name} is {shm.size} bytes, expected {expected}")
        slot_bytes = _slot_bytes(self.height, self.width)
        self._meta: list[np.ndarray] = []
        self._ts: list[np.ndarray] = []
        self._cue: list[np.ndarray] = []
        self._pixels: list[np.ndarray] = []
        for index in range(self.slots):
            start = HEADER_BYTES + index * slot_bytes
            self._meta.append(np.ndarray((1,), dtype=np.int64, buffer=shm.buf, offset=start))
            self._ts.append(np.ndarray((1,), dtype=np.float64, buffer=shm.buf, offset=start + 8))
            self._cue.append(np.ndarray((1,), dtype=np.float64, buffer=shm.buf, offset=start + 16))
            self._pixels.append(
                np.ndarray(
                    (self.height, self.width),
                    dtype=np.uint8,
                    buffer=shm.buf,
                    offset=start + SLOT_META_BYTES,
                )
            )

    # -- construction -------------------------------------------------------------------

    @classmethod
    def create(cls, name: str, height: int, width: int, slots: int = 10,
               picture_bytes: int = PICTURE_BYTES) -> FrameRing:
        """Create (or replace a stale) ring; the caller owns it and must :meth:`unlink`."""
        size = HEADER_BYTES + slots * _slot_bytes(height, width) + picture_bytes
        try:
            shm = shared_memory.SharedMemory(name=name, create=True, size=size)
        except FileExistsError:
            stale = shared_memory.SharedMemory(name=name)
            stale.close()
            stale.unlink()
            shm = shared_memory.SharedMemory(name=name, create=True, size=size)
        header = np.ndarray((16,), dtype=np.int64, buffer=shm.buf)
        header[:] = 0
        header[_H["height"]] = height
        header[_H["width"]] = width
        header[_H["slots"]] = slots
        header[_H["picture_bytes"]] = picture_bytes
        header[_H["latest_seq"]] = -1
        header[_H["version"]] = VERSION
        header[_H["magic"]] = MAGIC
        del header
        ring = cls(shm, owner=True)
        for meta in ring._meta:
            meta[0] = -1
        return ring

    @classmethod
    def attach(cls, name: str) -> FrameRing:
        """Attach to an existing ring created by another process."""
        # Children of the supervisor share its resource tracker, where the ring is already
        # registered by its creator, so attaching changes nothing there; the creator's
        # unlink() unregisters it. (Unregistering here would drop the creator's entry.)
        try:
            if sys.version_info >= (3, 13):
                shm = shared_memory.SharedMemory(name=name, track=False)  # type: ignore[call-arg]
            else:
                shm = shared_memory.SharedMemory(name=name)
        except FileNotFoundError:
            raise RingError(f"frame ring {name} does not exist") from None
        return cls(shm, owner=False)

    @property
    def name(self) -> str:
        return self._shm.name

    @property
    def buffer(self) -> memoryview:
        """The whole shared memory (for :mod:`forecaster.ipc.picture`)."""
        buf = self._shm.buf
        assert buf is not None
        return buf

    def close(self) -> None:
        """Release this process's mapping (views into it must be gone)."""
        self._meta.clear()
        self._ts.clear()
        self._cue.clear()
        self._pixels.clear()
        del self.header
        with contextlib.suppress(BufferError):
            self._shm.close()

    def unlink(self) -> None:
        """Remove the ring from the system (owner only)."""
        if self._owner:
            with contextlib.suppress(FileNotFoundError):
                self._shm.unlink()

    # -- writer ---------------------------------------------------------------------------

    def write(self, frame: np.ndarray, ts: float, cue: float = float("nan")) -> int:
        """Store the next frame (uint8 (height, width)) with its capture time and motion
        cue; return its seq."""
        seq = int(self.header[_H["latest_seq"]]) + 1
        slot = seq % self.slots
        self._meta[slot][0] = -1
        self._pixels[slot][...] = frame
        self._ts[slot][0] = ts
        self._cue[slot][0] = cue
        self._meta[slot][0] = seq
        self.header[_H["latest_seq"]] = seq
        self.header[_H["frames_captured"]] += 1
        return seq

    def set_connected(self, connected: bool) -> None:
        self.header[_H["connected"]] = int(connected)

    def set_ended(self) -> None:
        self.header[_H["ended"]] = 1

    def new_epoch(self) -> None:
        """Mark a discontinuity (reconnect, restart): readers reset their state."""
        self.header[_H["epoch"]] += 1

    def count_skipped(self, n: int = 1) -> None:
        self.header[_H["frames_skipped"]] += n

    def count_rate_limited(self, n: int = 1) -> None:
        self.header[_H["frames_rate_limited"]] += n

    def set_writer(self, pid: int) -> None:
        self.header[_H["writer_pid"]] = pid
        self.header[_H["ended"]] = 0

    # -- readers --------------------------------------------------------------------------

    @property
    def latest_seq(self) -> int:
        return int(self.header[_H["latest_seq"]])

    def latest_ts(self) -> float | None:
        """Capture time of the newest frame (None before the first, or when it is being
        overwritten at this moment)."""
        seq = self.latest_seq
        if seq < 0:
            return None
        slot = seq % self.slots
        ts = float(self._ts[slot][0])
        return ts if self._meta[slot][0] == seq else None

    def stats(self) -> RingStats:
        h = self.header
        return RingStats(
            latest_seq=int(h[_H["latest_seq"]]),
            frames_captured=int(h[_H["frames_captured"]]),
            frames_skipped=int(h[_H["frames_skipped"]]),
            frames_rate_limited=int(h[_H["frames_rate_limited"]]),
            connected=bool(h[_H["connected"]]),
            ended=bool(h[_H["ended"]]),
            epoch=int(h[_H["epoch"]]),
        )

    def read(self, first: int, last: int, out: np.ndarray, ts_out: np.ndarray,
             cue_out: np.ndarray | None = None) -> bool:
        """Copy frames ``first..last`` (inclusive) into ``out[:n]`` and ``ts_out[:n]`` (and
        their motion cues into ``cue_out[:n]``).

        Returns False if any of them is no longer (or not yet) in the ring; ``out`` is then
        partly written and must not be used.
        """
        count = last - first + 1
        if count < 1 or count > self.slots:
            return False
        for index, seq in enumerate(range(first, last + 1)):
            slot = seq % self.slots
            if self._meta[slot][0] != seq:
                return False
            out[index] = self._pixels[slot]
            ts_out[index] = self._ts[slot][0]
            if cue_out is not None:
                cue_out[index] = self._cue[slot][0]
            if self._meta[slot][0] != seq:
                return False
        return True
