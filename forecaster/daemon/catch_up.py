"""The worker's ring side: each camera's buffer of frames read from its ring.

Every turn the worker copies a camera's new frames out of its ring, catches up, skips or
sheds when behind, and reads the frames a re-prime rebuilds the state from; each frame
counts once, as processed or as dropped. :class:`~forecaster.daemon.worker.Worker` runs
the model on what is chosen here and publishes.

One step per new frame; the missed frames in one call when behind (copied out of the
ring into the worker's own buffer every turn; a fast camera, whose ring spans less than
:data:`BACKLOG_S`, runs no more of them a turn than keeps the frames arriving meanwhile
within about half the ring, and may wait beyond the ring for up to :data:`BACKLOG_S`).
Further behind (the worker cannot keep up), a skip to the newest half ring of frames plus
:data:`~forecaster.detection.engine.SKIP_WARMUP_FRAMES` with the state kept (the frames
in between are dropped and counted; those first frames after the gap only bring the state
up to date and are not scored), so an overloaded worker sheds frames instead of spending
its time on re-primes. A reset + re-prime from the ring after a reconnect, a restart or a
looped source's wrap (each starts a new ring epoch), a gap of more than 4 rings (when the
camera was not re-primed in the last minute: an overloaded worker re-priming every camera
every turn would never score again), or when the model returns non-finite values. A re-prime uses only frames of the ring's current
epoch, so the state after a reconnect is built from the new frames alone, and starts no
earlier than the model's window before the first frame not counted yet, so it scores no
frame twice.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field

import numpy as np

from forecaster.detection.engine import SKIP_WARMUP_FRAMES, InferenceEngine
from forecaster.ipc.health import CameraField, Health
from forecaster.ipc.ring import FrameRing, RingStats
from forecaster.protocol import Message

#: a camera further behind than this many rings of frames is re-primed; a camera less far
#: behind skips to its newest frames and keeps its state
WARM_GAP_RINGS = 4
#: ... unless its last re-prime was less than this many seconds ago: an overloaded worker
#: whose turns outlast 4 rings of frames would otherwise re-prime every camera every turn
#: (a re-prime scores nothing) and never score again
REPRIME_MIN_INTERVAL_S = 60.0
#: a camera whose frames come faster than the worker runs them keeps its frames in the
#: worker's own buffer (copied out of the ring every turn, before the capture overwrites
#: them) while they span at most this many seconds, or fit in a ring; only then are the
#: oldest shed. Each skip costs SKIP_WARMUP_FRAMES unscored frames, so an overloaded
#: worker that sheds rarely and in large steps scores more of what it runs than one that
#: sheds a few frames every turn.
BACKLOG_S = 0.05
#: ... and never more than this many rings of frames
BACKLOG_RINGS = 8
#: a fast camera (its ring spans less than BACKLOG_S) runs at most so many of its waiting
#: frames in one turn that, at its frame rate and the worker's time per frame, the frames
#: coming in meanwhile fill about 1 / RUN_MARGIN of its ring (the rest wait in the
#: worker's buffer for the next turns)
RUN_MARGIN = 2.0


def run_cap(slots: int, frame_interval_s: float, seconds_per_frame: float) -> int:
    """The most waiting frames a camera may run in one turn: a turn of ``n`` frames takes
    about ``n * seconds_per_frame``, while frames come every ``frame_interval_s``; the
    frames that arrive meanwhile must fit in ``slots / RUN_MARGIN`` ring slots (rounded
    up: a cap that only ever rounds down sticks at 1 where a turn has a fixed cost), or the
    capture overwrites some before the next turn copies them out. A camera whose ring spans
    BACKLOG_S or more never waits beyond its ring, so it runs whatever waits."""
    if (frame_interval_s <= 0 or seconds_per_frame <= 0
            or slots * frame_interval_s >= BACKLOG_S):
        return slots
    arriving = RUN_MARGIN * seconds_per_frame / frame_interval_s  # per frame run
    return max(1, min(slots, math.ceil(slots / arriving)))


@dataclass(slots=True)
class Feed:
    """Per-camera bookkeeping of the worker (ring side)."""

    camera: str
    ring: FrameRing
    #: the camera's source string (for the misfit warning's remedy; "": not known)
    source: str = ""
    epoch: int = 0
    #: frames skipped because the worker was behind (this process)
    dropped: int = 0
    processed: int = 0
    processed_at_status: int = 0
    ended_sent: bool = False
    #: position of the camera in the shared health block
    index: int = 0
    #: the state was reset and waits for frames to be rebuilt from
    awaiting: bool = False
    #: first seq a re-prime may use (frames before it gave a non-finite output)
    floor: int = 0
    #: a re-prime waits for a frame >= need (older ones were published before a restart)
    need: int = 0
    #: counters already added to the shared health block
    synced_dropped: int = 0
    synced_processed: int = 0
    synced_resets: int = 0
    non_finite_logged: bool = False
    #: the worker's buffer of this camera: frames read from the ring and not run yet,
    #: their time stamps and cues (it grows up to BACKLOG_RINGS rings when behind)
    frames: np.ndarray = field(default_factory=lambda: np.empty((0, 0, 0), np.uint8))
    stamps: np.ndarray = field(default_factory=lambda: np.empty((0,), np.float64))
    cues: np.ndarray = field(default_factory=lambda: np.empty((0,), np.float64))
    #: seqs first..last of the frames waiting in the buffer (count = last - first + 1;
    #: none when last < first): after a re-prime, the frames that followed it, in order
    first: int = 0
    last: int = -1
    #: how many of them (from ``first``) the turn's model call takes
    run: int = 0
    #: frames left in the buffer after the last model call (not new since then)
    carried: int = 0
    #: every frame up to this seq is counted, as processed or as dropped, and counts once
    #: (a re-prime runs frames already counted again); None before the first re-prime
    counted: int | None = None
    #: seconds of the worker's turns per frame this camera ran in them (smoothed; 0:
    #: not measured yet), and the interval between its frames (from their stamps)
    turn_s_per_frame: float = 0.0
    frame_interval_s: float = 0.0
    #: the last model call of this camera took several frames: its frames come faster than
    #: one call per frame, so new frames are held until a chunk of them waits
    hot: bool = False
    #: monotonic time the frames now held started waiting (None: none held)
    held_since: float | None = None
    #: frames per second coming in, as of the last model call of this camera, and when
    #: that call's frames were read
    rate: float = 0.0
    read_at: float | None = None
    #: monotonic time the camera's last re-prime completed (None: never)
    primed_at: float | None = None


class RingReader:
    """The worker's bookkeeping of its cameras' buffers (a base of the worker, which owns
    the engine, the health block and the publishing)."""

    engine: InferenceEngine
    health: Health
    log: logging.Logger
    batch_wait_s: float
    #: earliest monotonic time a held camera should have a chunk waiting, or its wait
    #: run out (None: none held)
    _hold_until: float | None

    def _send(self, message: Message) -> None:
        raise NotImplementedError

    def _consume(self, feed: Feed) -> None:
        """Take the frames the model call ran out of the camera's buffer."""
        count, left = feed.run, feed.last - feed.first + 1 - feed.run
        if left > 0:  # numpy copies overlapping slices as if through a temporary
            feed.frames[:left] = feed.frames[count : count + left]
            feed.stamps[:left] = feed.stamps[count : count + left]
            feed.cues[:left] = feed.cues[count : count + left]
        feed.first += count
        feed.carried = max(0, left)
        feed.run = 0

    @staticmethod
    def _count_processed(feed: Feed) -> None:
        """Count the frames the model call ran (``feed.run`` from ``feed.first``) as
        processed, but for those already counted."""
        last = feed.first + feed.run - 1
        start = feed.first if feed.counted is None else max(feed.first, feed.counted + 1)
        feed.processed += max(0, last - start + 1)
        feed.counted = last if feed.counted is None else max(feed.counted, last)

    @staticmethod
    def _count_dropped(feed: Feed, before: int) -> None:
        """Count every frame before seq ``before`` not counted yet as dropped (none before
        the camera's first re-prime: the frames before it are not the worker's)."""
        if feed.counted is None:
            return
        feed.dropped += max(0, before - 1 - feed.counted)
        feed.counted = max(feed.counted, before - 1)

    def _prime_read(self, feed: Feed, stats: RingStats) -> bool:
        """Reset the camera's state and read the frames to rebuild it from into its buffer
        (True: they wait in ``feed.first..feed.last``, all of them ``feed.run``, for a
        model call, which :meth:`~forecaster.daemon.worker.Worker._primed` completes;
        cameras re-primed in one turn share that call).

        Only frames of the ring's current epoch are used; when there is none yet (a
        camera just reconnected), the state stays reset until the first ones arrive.
        """
        ring = feed.ring
        feed.epoch = stats.epoch
        feed.first, feed.run, feed.carried = feed.last + 1, 0, 0  # the buffer is dropped
        if not feed.awaiting:
            end = self.engine.reset(feed.camera)
            if end is not None:
                self._send(end)
            feed.awaiting = True
        # from this epoch, and from no earlier than a window before the first frame not
        # counted yet (by this worker or, after a restart, the previous one): a frame scored,
        # or counted as dropped, is not scored again, however much longer the ring is
        window = self.engine.window
        start = max(feed.floor, int(self.health.get(feed.index, CameraField.EPOCH_START)),
                    feed.need - window)
        if feed.counted is not None:
            start = max(start, feed.counted + 1 - window)
        for _ in range(3):
            latest = ring.latest_seq
            first = max(0, latest - ring.slots + 1, start)
            if latest < max(first, feed.need):
                return False  # nothing new of this epoch yet
            if ring.read(first, latest, feed.frames, feed.stamps, feed.cues):
                break
        else:
            self.log.warning("camera %s: ring overwritten while re-priming", feed.camera)
            return False
        self._count_dropped(feed, first)  # frames this re-prime starts after, never run
        feed.first, feed.last, feed.run = first, latest, latest - first + 1
        return True

    def _collect(self, feed: Feed) -> bool:
        """Copy the camera's new frames from its ring into its buffer, or the frames to
        re-prime it from, and choose the ones the turn's batched model call takes (True),
        or none (False)."""
        stats = feed.ring.stats()
        latest = stats.latest_seq
        cam = self.engine.cameras[feed.camera]
        if latest < 0:
            return False
        if (
            stats.epoch != feed.epoch
            or feed.awaiting
            or cam.last_seq is None
            or cam.state is None
        ):
            return self._prime_read(feed, stats)  # re-primes of one turn share a call
        slots = feed.ring.slots
        keep = min(slots, max(1, slots // 2) + SKIP_WARMUP_FRAMES)
        nxt = feed.last + 1
        if latest >= nxt:
            arrived = latest - nxt + 1
            room = BACKLOG_RINGS * slots
            if (arrived > slots or feed.last - feed.first + 1 + arrived > room
                    or not self._append(feed, nxt, latest)):
                # Further behind than the ring holds: the frames in between are gone.
                # Skip to the newest ones and go on with the state as it is: a reset
                # would re-prime from a whole ring of frames, none of them scored, and
                # fall further behind under load. Only after a long gap is the old
                # state worth less than a re-prime.
                recently = (feed.primed_at is not None
                            and time.monotonic() - feed.primed_at < REPRIME_MIN_INTERVAL_S)
                # (the gap: the frames never copied, not those waiting in the buffer)
                if arrived > WARM_GAP_RINGS * slots and not recently:
                    return self._prime_read(feed, stats)
                skip_to = latest - keep + 1
                if not feed.ring.read(skip_to, latest, feed.frames, feed.stamps, feed.cues):
                    return self._prime_read(feed, stats)
                self._count_dropped(feed, skip_to)
                self.engine.skip(feed.camera)
                feed.first, feed.last, feed.carried = skip_to, latest, 0
        pending = feed.last - feed.first + 1
        if pending < 1:
            return False
        if pending > 1:
            feed.frame_interval_s = max(
                0.0, float(feed.stamps[pending - 1] - feed.stamps[0]) / (pending - 1))
        if self._hold(feed, pending, stats.ended):
            return False
        if pending > slots and float(feed.stamps[pending - 1] - feed.stamps[0]) > BACKLOG_S:
            # behind by more than a ring and by more than BACKLOG_S: shed the oldest
            self._shed(feed, pending - keep)
            pending = keep
        feed.run = min(pending, run_cap(slots, feed.frame_interval_s, feed.turn_s_per_frame))
        return True

    def _append(self, feed: Feed, first: int, latest: int) -> bool:
        """Copy frames ``first..latest`` of the ring to the end of the camera's buffer
        (False: some were overwritten before they were copied)."""
        have = feed.last - feed.first + 1
        need = have + latest - first + 1
        if need > len(feed.frames):  # grow the buffer (a camera falling behind)
            size = min(max(need, 2 * len(feed.frames)), (BACKLOG_RINGS + 1) * feed.ring.slots)
            frames = np.empty((size, *feed.frames.shape[1:]), dtype=feed.frames.dtype)
            stamps = np.empty((size,), dtype=np.float64)
            cues = np.empty((size,), dtype=np.float64)
            frames[:have], stamps[:have], cues[:have] = (
                feed.frames[:have], feed.stamps[:have], feed.cues[:have])
            feed.frames, feed.stamps, feed.cues = frames, stamps, cues
        if not feed.ring.read(first, latest, feed.frames[have:], feed.stamps[have:],
                              feed.cues[have:]):
            return False
        feed.last = latest
        return True

    def _shed(self, feed: Feed, count: int) -> None:
        """Drop the camera's ``count`` oldest waiting frames; its state goes on from the
        last frame it ran (:meth:`InferenceEngine.skip`)."""
        self._count_dropped(feed, feed.first + count)
        feed.run = count
        self._consume(feed)
        feed.carried = 0
        self.engine.skip(feed.camera)

    def _hold(self, feed: Feed, pending: int, ended: bool) -> bool:
        """Whether to leave the camera's ``pending`` waiting frames for a later turn.

        A camera whose last model call took several frames gets frames faster than the
        worker runs one call per frame; its frames are then run as chunks of at least half
        the ring (one call costs much less than as many one-frame calls): they wait for
        that many, at most ``batch_wait_s`` from the first one held, as long as the
        camera's rate can make up the chunk in that time. A camera fed slower than that is
        never held (its frames run as they come).
        """
        wanted = max(2, feed.ring.slots // 2)
        now = time.monotonic()
        if self.batch_wait_s > 0 and feed.hot and pending < wanted and not ended:
            if feed.held_since is None:
                feed.held_since = now
            until = feed.held_since + self.batch_wait_s
            # only while the frames come fast enough to make up the chunk in time
            if now < until and pending + feed.rate * (until - now) >= wanted:
                ready = min(until, now + (wanted - pending) / feed.rate)
                self._hold_until = ready if self._hold_until is None else min(
                    self._hold_until, ready)
                return True
        feed.held_since = None
        feed.hot = pending >= 2
        if feed.read_at is not None:
            feed.rate = (pending - feed.carried) / max(now - feed.read_at, 1e-6)
        feed.read_at = now
        return False
