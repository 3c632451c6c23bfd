"""Inference worker: one process for all cameras.

:class:`Worker` feeds the process-free :class:`~forecaster.detection.engine.InferenceEngine` (the
same one replay and evaluation run) from the cameras' rings: one step per new frame, the
missed frames in one call when behind (copied out of the ring into the worker's own
buffer every turn; a fast camera, whose ring spans less than :data:`BACKLOG_S`, runs no
more of them a turn than keeps the frames arriving meanwhile within about half the ring,
and may wait beyond the ring for up to :data:`BACKLOG_S`); further behind (the worker
cannot keep up), a skip to the newest half ring of frames plus
:data:`~forecaster.detection.engine.SKIP_WARMUP_FRAMES` with the state kept (the frames in between
are dropped and counted; those first frames after the gap only bring the state up to date
and are not scored), so an overloaded worker sheds frames instead of spending its time on
re-primes; a reset + re-prime from the ring after a reconnect or restart, a gap of more
than 4 rings (when the camera was not re-primed in the last minute: an overloaded worker
re-priming every camera every turn would never score again), or when the model returns
non-finite values. A re-prime uses only frames of the ring's current epoch, so the state
after a reconnect is built from the new frames alone, and starts no earlier than the
model's window before the first frame not counted yet, so it scores no frame twice. Each
frame counts once, as processed or as dropped.

The worker's progress and counters live in the shared :class:`~forecaster.ipc.health.Health`
block: the supervisor watches them (systemd watchdog, metrics), and a restarted worker
goes on from them (no frame published twice, drop counts kept).
"""

from __future__ import annotations

import gc
import logging
import math
import queue
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from forecaster.config import PublishConfig, ScorerConfig
from forecaster.detection.engine import (
    SKIP_WARMUP_FRAMES,
    InferenceEngine,
    StepResult,
    load,
    padded_batch,
)
from forecaster.errors import ForecasterError
from forecaster.ipc.channels import Flag, Outbox, start_child
from forecaster.ipc.health import CameraField, Health
from forecaster.ipc.ring import FrameRing, RingStats
from forecaster.protocol import Event, Message, Score, Status
from forecaster.recording.event_board import EventNotes
from forecaster.recording.recorder import RecordingSpec

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


@dataclass(frozen=True, slots=True)
class WorkerSpec:
    """Everything the worker process needs; picklable for the spawn start method."""

    cameras: tuple[tuple[str, str], ...]  # (camera id, ring name)
    model_path: str
    #: what runs the one-frame step (``model.runtime``)
    runtime: str
    size: tuple[int, int]
    publish: PublishConfig
    scorer: ScorerConfig
    throttle_ms: float = 0.0
    log_level: str = "info"
    #: the live page's private feed (``ipc://``), "" = no page
    feed_endpoint: str = ""
    #: event recordings (None: off): the board the captures read, the files' names
    recording: RecordingSpec | None = None
    batch_wait_ms: float = 0.0


@dataclass(slots=True)
class _Feed:
    """Per-camera bookkeeping of the worker (ring side)."""

    camera: str
    ring: FrameRing
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


class Worker:
    """Reads the rings, drives the engine and publishes."""

    def __init__(
        self,
        engine: InferenceEngine,
        feeds: list[_Feed],
        publisher: Any,
        notify: Any,
        stop: Any,
        status_interval_s: float,
        throttle_s: float = 0.0,
        health: Health | None = None,
        model_name: str = "in use",
        notes: EventNotes | None = None,
        batch_wait_s: float = 0.0,
    ) -> None:
        self.engine = engine
        self.notes = notes
        self.batch_wait_s = batch_wait_s
        #: earliest monotonic time a held camera should have a chunk waiting, or its wait
        #: run out (None: none held)
        self._hold_until: float | None = None
        self.model_name = model_name
        self.feeds = feeds
        self.publisher = publisher
        self.notify = notify
        self.stop = stop
        self.status_interval_s = status_interval_s
        self.throttle_s = throttle_s
        self.health = health if health is not None else Health(len(feeds))
        self.log = logging.getLogger("forecaster.worker")
        for feed in feeds:
            ring = feed.ring
            feed.frames = np.empty((ring.slots, ring.height, ring.width), dtype=np.uint8)
            feed.stamps = np.empty((ring.slots,), dtype=np.float64)
            feed.cues = np.empty((ring.slots,), dtype=np.float64)
        self._last_status = time.monotonic()
        for index, feed in enumerate(feeds):
            feed.index = index
            cam = engine.add_camera(feed.camera)
            done = int(self.health.get(index, CameraField.WORKER_SEQ))
            if done >= 0:  # a previous worker process got this far: go on from there
                cam.last_seq = done
                feed.need = done + 1
            counted = int(self.health.get(index, CameraField.COUNTED))
            if counted >= 0:  # and counted every frame up to here
                feed.counted = counted
            if notes is not None:  # an event the previous worker left open ends here
                notes.close_stale(feed.camera, done)

    # -- publishing -----------------------------------------------------------------------

    def _send(self, message: Message) -> None:
        if self.notes is not None:
            message = self.notes.note(message)
        sent = self.publisher.send(message)
        self.health.count_message(message.kind, sent is not False)

    def _report_fit(self, feed: _Feed) -> None:
        """Log the camera's model-fit verdict, just made: a warning for a misfit."""
        fit = self.engine.cameras[feed.camera].fit
        if fit.verdict == "misfit":
            self.log.warning("%s", fit.message(f"camera {feed.camera}", self.model_name))
        else:
            self.log.info("camera %s: the model fits (median score of the first %d scored "
                          "frames %.2f)", feed.camera, fit.decided_on, fit.median)

    def _publish(self, feed: _Feed, result: StepResult) -> None:
        if result.fit_decided:
            self._report_fit(feed)
        for message in result.messages:
            if isinstance(message, Score):
                self.health.set(feed.index, CameraField.LAST_SCORE, message.score)
            elif isinstance(message, Event) and message.state == "start":
                self.health.add(feed.index, CameraField.ANOMALY_EVENTS)
            self._send(message)

    def _sync(self, feed: _Feed) -> None:
        """Add what changed since the last call to the shared counters."""
        health, index = self.health, feed.index
        cam = self.engine.cameras[feed.camera]
        health.add(index, CameraField.DROPPED, feed.dropped - feed.synced_dropped)
        health.add(index, CameraField.PROCESSED, feed.processed - feed.synced_processed)
        health.add(index, CameraField.PRIMES, cam.resets - feed.synced_resets)
        feed.synced_dropped, feed.synced_processed = feed.dropped, feed.processed
        feed.synced_resets = cam.resets
        if cam.last_seq is not None:
            health.set(index, CameraField.WORKER_SEQ, cam.last_seq)
        if feed.counted is not None:
            health.set(index, CameraField.COUNTED, feed.counted)

    # -- model ----------------------------------------------------------------------------

    def _process(self, feed: _Feed) -> StepResult:
        """Run the camera's ``feed.run`` oldest waiting frames alone."""
        count = feed.run
        began = time.perf_counter()
        result = self.engine.process(
            feed.camera, feed.frames[:count], range(feed.first, feed.first + count),
            feed.stamps[:count], feed.cues[:count]
        )
        self.health.observe_inference(time.perf_counter() - began)
        return result

    def _consume(self, feed: _Feed) -> None:
        """Take the frames the model call ran out of the camera's buffer."""
        count, left = feed.run, feed.last - feed.first + 1 - feed.run
        if left > 0:  # numpy copies overlapping slices as if through a temporary
            feed.frames[:left] = feed.frames[count : count + left]
            feed.stamps[:left] = feed.stamps[count : count + left]
            feed.cues[:left] = feed.cues[count : count + left]
        feed.first += count
        feed.carried = max(0, left)
        feed.run = 0

    def _process_batch(self, feeds: list[_Feed]) -> None:
        """Run the waiting frames of several cameras: one model call per frame count, or,
        where cameras wait different counts and the runner steps chunks as one-frame ticks
        anyway (a lean runtime), one call per step across every camera with a frame at
        that step."""
        turn_began = time.perf_counter()
        counts = {feed.run for feed in feeds}
        if len(counts) > 1 and getattr(self.engine.stepper, "prefers_ticks", False):
            pairs = list(zip(feeds, self._run_by_step(feeds), strict=True))
        else:
            groups: dict[int, list[_Feed]] = {}
            for feed in feeds:
                groups.setdefault(feed.run, []).append(feed)
            pairs = []
            for count, group in groups.items():
                began = time.perf_counter()
                results = self.engine.process_many(
                    [
                        (f.camera, f.frames[:count], range(f.first, f.first + count),
                         f.stamps[:count], f.cues[:count])
                        for f in group
                    ]
                )
                self.health.observe_inference(time.perf_counter() - began)
                pairs += list(zip(group, results, strict=True))
        turn_s = time.perf_counter() - turn_began
        for feed in feeds:  # what the turn cost per frame of each camera
            per_frame = turn_s / max(1, feed.run)
            feed.turn_s_per_frame = (per_frame if feed.turn_s_per_frame <= 0
                                     else 0.7 * feed.turn_s_per_frame + 0.3 * per_frame)
        for feed, result in pairs:
            if feed.awaiting:  # a re-prime (its state was reset before the call)
                self._primed(feed, result)
                continue
            if result.non_finite:
                self.log.warning("camera %s: non-finite model output; re-priming", feed.camera)
                self._prime(feed, feed.ring.stats())
                continue
            self._count_processed(feed)
            self._publish(feed, result)
            self._consume(feed)

    @staticmethod
    def _count_processed(feed: _Feed) -> None:
        """Count the frames the model call ran (``feed.run`` from ``feed.first``) as
        processed, but for those already counted."""
        last = feed.first + feed.run - 1
        start = feed.first if feed.counted is None else max(feed.first, feed.counted + 1)
        feed.processed += max(0, last - start + 1)
        feed.counted = last if feed.counted is None else max(feed.counted, last)

    @staticmethod
    def _count_dropped(feed: _Feed, before: int) -> None:
        """Count every frame before seq ``before`` not counted yet as dropped (none before
        the camera's first re-prime: the frames before it are not the worker's)."""
        if feed.counted is None:
            return
        feed.dropped += max(0, before - 1 - feed.counted)
        feed.counted = max(feed.counted, before - 1)

    def _run_by_step(self, feeds: list[_Feed]) -> list[StepResult]:
        """The cameras' waiting frames one step at a time: call k takes the k-th waiting
        frame of every camera that has one (40 cameras one frame behind and 20 two behind:
        calls of 60 and 20 cameras, instead of 40 and two of 20). The result of each
        camera is that of one call over its frames: every frame scored, a forecast from
        its newest frame only; a camera whose output turns non-finite takes no further
        step."""
        counts = [feed.run for feed in feeds]
        merged = [StepResult() for _ in feeds]
        live = set(range(len(feeds)))
        for step in range(max(counts)):
            active = [i for i in range(len(feeds)) if i in live and counts[i] > step]
            if not active:
                break
            began = time.perf_counter()
            results = self.engine.process_many([
                (feeds[i].camera, feeds[i].frames[step : step + 1], [feeds[i].first + step],
                 feeds[i].stamps[step : step + 1], feeds[i].cues[step : step + 1])
                for i in active
            ], no_forecast={feeds[i].camera for i in active if step < counts[i] - 1})
            self.health.observe_inference(time.perf_counter() - began)
            for i, result in zip(active, results, strict=True):
                into = merged[i]
                if result.non_finite:
                    into.non_finite = True
                    live.discard(i)
                    continue
                into.fit_decided = into.fit_decided or result.fit_decided
                into.messages += result.messages
        return merged

    def _prime(self, feed: _Feed, stats: RingStats) -> None:
        """Reset the camera's state and rebuild it from the frames in the ring, now."""
        if self._prime_read(feed, stats):
            self._primed(feed, self._process(feed))

    def _prime_read(self, feed: _Feed, stats: RingStats) -> bool:
        """Reset the camera's state and read the frames to rebuild it from into its buffer
        (True: they wait in ``feed.first..feed.last``, all of them ``feed.run``, for a
        model call, which
        :meth:`_primed` completes; cameras re-primed in one turn share that call).

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

    def _primed(self, feed: _Feed, result: StepResult) -> None:
        """Complete a re-prime with the result of its model call."""
        cam = self.engine.cameras[feed.camera]
        if result.non_finite:
            if not feed.non_finite_logged:
                self.log.error("camera %s: model output not finite after re-prime; "
                               "waiting for new frames", feed.camera)
                feed.non_finite_logged = True
            self.engine.reset(feed.camera)
            cam.last_seq = feed.last
            feed.floor = feed.last + 1
            feed.run = feed.last - feed.first + 1
            if feed.counted is None:  # the camera's first re-prime: counting starts here
                feed.counted = feed.first - 1
            self._count_dropped(feed, feed.last + 1)  # none of them could be scored
            self._consume(feed)
            return
        feed.awaiting = False
        feed.primed_at = time.monotonic()
        feed.non_finite_logged = False
        self._count_processed(feed)
        self._publish(feed, result)
        self._consume(feed)

    def service(self, feed: _Feed) -> None:
        """Bring one camera up to the newest frame in its ring."""
        self.service_all([feed])

    def service_all(self, feeds: list[_Feed]) -> None:
        """Bring every camera up to its newest frame; cameras that are one or more frames
        behind, or re-primed from their rings (all of them at start-up), share one batched
        model call per frame count."""
        waiting = []
        self._hold_until = None
        try:
            for feed in feeds:
                # progress for the watchdog: a turn that re-primes many cameras (all of
                # them at start-up) can take longer than the stall timeout on a busy box
                self.health.beat_worker()
                if self._collect(feed):
                    waiting.append(feed)
            if waiting:
                self._process_batch(waiting)
        finally:
            for feed in feeds:
                self._sync(feed)

    def _collect(self, feed: _Feed) -> bool:
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

    def _append(self, feed: _Feed, first: int, latest: int) -> bool:
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

    def _shed(self, feed: _Feed, count: int) -> None:
        """Drop the camera's ``count`` oldest waiting frames; its state goes on from the
        last frame it ran (:meth:`InferenceEngine.skip`)."""
        self._count_dropped(feed, feed.first + count)
        feed.run = count
        self._consume(feed)
        feed.carried = 0
        self.engine.skip(feed.camera)

    def _hold(self, feed: _Feed, pending: int, ended: bool) -> bool:
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

    # -- status ---------------------------------------------------------------------------

    def status(self, feed: _Feed, elapsed: float, ended: bool = False) -> Status:
        self._sync(feed)
        stats = feed.ring.stats()
        cam = self.engine.cameras[feed.camera]
        fps = (feed.processed - feed.processed_at_status) / elapsed if elapsed > 0 else 0.0
        feed.processed_at_status = feed.processed
        dropped = int(self.health.get(feed.index, CameraField.DROPPED))
        resets = int(self.health.get(feed.index, CameraField.PRIMES))
        if ended:
            reason: str | None = "end of stream"
        elif not stats.connected:
            reason = "source disconnected; reconnecting"
        else:
            reason = None
        return Status(
            camera=feed.camera,
            seq=cam.last_seq if cam.last_seq is not None else -1,
            ts=time.time(),
            fps=fps,
            frames_captured=stats.frames_captured,
            frames_dropped=dropped + stats.frames_skipped,
            state_resets=max(resets - 1, 0),
            connected=stats.connected,
            ended=ended,
            reason=reason,
            model_fit=cam.fit.verdict,
        )

    def _finished(self, feed: _Feed) -> bool:
        stats = feed.ring.stats()
        cam = self.engine.cameras[feed.camera]
        done = stats.latest_seq < 0 or (cam.last_seq is not None and cam.last_seq >= stats.latest_seq)
        return stats.ended and done

    def run(self) -> None:
        while not self.stop.is_set():
            self.health.beat_worker()
            try:
                if self._hold_until is not None:
                    # frames are held: sleep until they should make up a chunk (or their
                    # wait runs out) rather than wake up for each one
                    left = self._hold_until - time.monotonic()
                    if left > 0:
                        self.stop.wait(left)
                elif not any(feed.last >= feed.first for feed in self.feeds):
                    self.notify.get(timeout=0.1)  # else frames wait in the buffers: no wait
                while True:
                    self.notify.get_nowait()
            except queue.Empty:
                pass
            self.service_all([feed for feed in self.feeds if not feed.ended_sent])
            self.publisher.log_refusals()  # a poll with no wait
            now = time.monotonic()
            elapsed = now - self._last_status
            if elapsed >= self.status_interval_s:
                self._last_status = now
                for feed in self.feeds:
                    if not feed.ended_sent:
                        self._send(self.status(feed, elapsed))
            if self.stop.is_set():
                break  # captures mark their rings ended when stopped: that is no end of stream
            for feed in self.feeds:
                if not feed.ended_sent and self._finished(feed):
                    feed.ended_sent = True
                    end = self.engine.end_of_stream(feed.camera)
                    if end is not None:
                        self._publish(feed, StepResult(messages=[end]))
                    if self.engine.cameras[feed.camera].fit.finish():  # a short stream
                        self._report_fit(feed)
                    self._send(self.status(feed, elapsed, ended=True))
                    self.log.info("camera %s: stream ended", feed.camera)
            if all(feed.ended_sent for feed in self.feeds):
                break
            if self.throttle_s:
                self.stop.wait(self.throttle_s)


def worker_main(
    spec: WorkerSpec, wakeup_address: str, control: Outbox, stop: Flag, health: Health
) -> None:
    """Entry point of the worker process (spawned, and restarted, by the supervisor)."""
    start_child("fc-worker", stop, spec.log_level)
    log = logging.getLogger("forecaster.worker")
    role = "worker"
    rings: list[FrameRing] = []
    publisher: Any = None
    inbox = None
    try:
        from forecaster.ipc.channels import Inbox

        try:
            inbox = Inbox(wakeup_address)
        except OSError as error:
            raise ForecasterError(f"cannot bind the worker's wake-up socket: {error}") from None
        loaded = load(Path(spec.model_path), expect_size=spec.size, runtime=spec.runtime)
        from forecaster.ipc.publisher import publisher_from_config

        stepper = loaded.runner
        engine = loaded.engine(spec.scorer)
        feeds = []
        for camera, name in spec.cameras:
            ring = FrameRing.attach(name)
            rings.append(ring)
            feeds.append(_Feed(camera=camera, ring=ring))
        publish = spec.publish
        publisher = publisher_from_config(publish)
        if spec.feed_endpoint:
            from forecaster.web.process import Tee, feed_publisher

            publisher = Tee(publisher, feed_publisher(spec.feed_endpoint))
        worker = Worker(
            engine,
            feeds,
            publisher,
            inbox,
            stop,
            publish.status_interval_s,
            throttle_s=spec.throttle_ms / 1000.0,
            health=health,
            model_name=spec.model_path,
            notes=None if spec.recording is None else EventNotes(
                [camera for camera, _ in spec.cameras], spec.recording.board),
            batch_wait_s=spec.batch_wait_ms / 1000.0,
        )
        # compile before declaring readiness, so the first frames are not late: one frame
        # (a tick) and several (a re-prime or catch-up) may take different compiled paths
        for count in (1, 2):
            stepper.run(np.zeros((1, count, *spec.size, 1), np.float32), stepper.initial_state(1))
        rows = 2
        while rows <= padded_batch(len(feeds)):  # every batch size a tick of all cameras uses
            stepper.run(np.zeros((rows, 1, *spec.size, 1), np.float32), stepper.initial_state(rows))
            rows *= 2
    except ForecasterError as error:
        control.put(("error", role, error.exit_code, str(error)))
        if publisher is not None:
            publisher.close()
        return
    # Everything made so far (TensorFlow, Keras, the runtimes: about 400,000 objects) lives
    # as long as the process: out of the garbage collector's sight, a full collection no
    # longer walks it (about 240 ms each here, a stall of every camera at once)
    gc.collect()
    gc.freeze()
    health.beat_worker()
    control.put(("ready", role, 0, ""))
    log.info(
        "serving %d camera(s) on %s; model %s on %s, one-frame steps on %s",
        len(feeds),
        spec.publish.endpoint,
        spec.model_path,
        loaded.device,
        getattr(stepper, "runtime", "TensorFlow"),
    )
    try:
        worker.run()
    finally:
        publisher.close()
        inbox.close()
        for ring in rings:
            ring.close()
