"""The capture loop of one camera (a capture process runs several, one thread each: see
:mod:`forecaster.daemon.capture_group`).

Reads the camera's source, turns each frame into the model's gray size, writes it into
the camera's shared-memory ring and notifies the worker. It never waits for the worker:
a wake-up the worker cannot take is simply dropped (the worker reads the ring's latest
seq). Live sources that drop out are reopened with capped exponential backoff. The first
frame after a reconnect, after a looped source went back to its start, or after this
process was restarted, starts a new ring epoch, so the worker rebuilds the camera's state
from the new frames only.
"""

from __future__ import annotations

import functools
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from forecaster.detection.flow import MotionCue, PlaceNorm
from forecaster.errors import SourceDisconnected, SourceError
from forecaster.ipc.health import CameraField, Health
from forecaster.ipc.picture import PictureSlot
from forecaster.ipc.ring import FrameRing
from forecaster.recording.packets import PacketTap
from forecaster.recording.recorder import LAG_S, RecordingSpec, open_recorder
from forecaster.recording.retention import MB
from forecaster.sources.latest import LatestFrameReader
from forecaster.sources.pacing import RateLimiter
from forecaster.sources.preprocess import to_gray_resized
from forecaster.sources.readers import FrameSource, open_source


@dataclass(frozen=True, slots=True)
class CaptureSpec:
    """Everything a capture process needs; picklable for the spawn start method."""

    camera: str
    index: int
    source: str
    ring: str
    size: tuple[int, int]
    fps: float = 0.0
    loop: bool = False
    max_frames: int | None = None
    reconnect_max_s: float = 30.0
    log_level: str = "info"
    #: rows of the frames the motion cue is computed on (the scorer's fused mode); None: no cue
    cue_height: int | None = None
    #: the normal motion per place the cue is divided by (the model card's; None: none)
    cue_place: PlaceNorm | None = None
    #: event recordings (None: off)
    recording: RecordingSpec | None = None
    #: the camera's lower-resolution stream that the model and the cue see (None: ``source``)
    detect_source: str | None = None
    #: the live page's picture of the camera is at most this wide (``recording.max_width``)
    picture_width: int = 640
    #: the frames of ``source`` are recorded or shown on the page: decode them in colour
    color: bool = False


class Backoff:
    """Capped exponential backoff: ``first``, 2 x ``first``, ... up to ``cap`` seconds.

    It is reset only once the source delivers a frame again, so a source that accepts
    the connection and then sends nothing backs off as one that refuses it.
    """

    def __init__(self, cap: float, first: float = 0.5) -> None:
        self.cap = cap
        self.first = min(first, cap)
        self.current = self.first

    def next(self) -> float:
        """The delay before the next attempt (and double the one after)."""
        delay = self.current
        self.current = min(self.current * 2, self.cap)
        return delay

    def reset(self) -> None:
        self.current = self.first


class Capture:
    """The capture loop, independent of process plumbing so tests can drive it."""

    def __init__(
        self,
        spec: CaptureSpec,
        ring: FrameRing,
        notify: Any,
        stop: Any,
        health: Health | None = None,
    ) -> None:
        self.spec = spec
        self.ring = ring
        self.notify = notify
        self.stop = stop
        self.health = health if health is not None else Health(spec.index + 1)
        self.log = logging.getLogger(f"forecaster.capture.{spec.camera}")
        self.limiter = RateLimiter(spec.fps)
        self.cue = None if spec.cue_height is None else MotionCue(spec.cue_height, spec.cue_place)
        self.backoff = Backoff(spec.reconnect_max_s)
        self.frames = 0
        self._skipped_seen = 0
        self._down: str | None = None
        self._reconnected = False
        recording = spec.recording
        #: the source's packets, where its video is copied into the clips
        self.tap = None if (recording is None or not recording.config.enabled
                            or not recording.config.copy_video or spec.detect_source is not None) else (
            PacketTap(recording.config.pre_s + LAG_S, int(recording.config.preroll_max_mb * MB)))
        self.source: FrameSource = open_source(
            spec.detect_source or spec.source, loop=spec.loop,
            color=spec.color and spec.detect_source is None and self.tap is None,
            color_width=spec.picture_width, tap=self.tap)
        self.recorder = open_recorder(recording, spec.camera, spec.index, self.tap)
        #: with a detection stream, the main source, read for the recordings only
        self.main = None if spec.detect_source is None or spec.recording is None else (
            LatestFrameReader(spec.source, name=f"main:{spec.camera}", loop=spec.loop,
                              fps=spec.fps, reconnect_max_s=spec.reconnect_max_s, color=spec.color,
                              color_width=spec.picture_width))
        #: the source frame for the live page, written only while a page is open
        self.picture = PictureSlot(ring)

    def beat(self) -> None:
        self.health.beat_capture(self.spec.index)

    def _new_epoch(self) -> None:
        """The frames from the next one on do not continue the ones in the ring."""
        self.health.set(self.spec.index, CameraField.EPOCH_START, self.ring.latest_seq + 1)
        self.ring.new_epoch()

    def open(self) -> None:
        """Open the source. A live source that is down starts disconnected and retried.

        A ring that already holds frames means this process replaces one that died: the
        next frames start a new epoch, ``max_frames`` counts the frames already captured,
        and a finite source (file, folder) resumes after them.
        """
        stats = self.ring.stats()
        if stats.latest_seq >= 0:
            self._new_epoch()
            self.frames = stats.frames_captured
        try:
            self.source.open()
        except SourceDisconnected as error:
            if not self.source.live:
                raise
            self._down = str(error)
            self.log.warning("source not reachable at start-up: %s; retrying", error)
            if self.main is not None:
                self.main.open()
            return
        if stats.latest_seq >= 0 and not self.source.live and not self.spec.loop:
            self._resume(stats.frames_captured)
        self.ring.set_connected(True)
        if self.main is not None:
            self.main.open()

    def _resume(self, frames: int) -> None:
        for _ in range(frames):
            if self.source.read() is None:
                break
        self._skipped_seen = self.source.skipped
        self.log.info("restarted: resuming after the %d frames already captured", frames)

    def _signal(self) -> None:
        # A wake-up the worker cannot take is dropped: it reads the ring's latest seq anyway.
        self.notify.put_nowait(self.spec.index)

    def _reconnect(self, reason: str) -> bool:
        """Reopen a live source with capped exponential backoff; False if stopping."""
        self.ring.set_connected(False)
        self._signal()
        self.log.warning("source disconnected: %s; reconnecting", reason)
        down_since = time.monotonic()
        attempts = 0
        while not self.stop.is_set():
            delay = self.backoff.next()
            if self._pause(delay):
                return False
            attempts += 1
            try:
                self.source.close()
                self.source.open()
            except (SourceError, SourceDisconnected) as error:
                self.log.info(
                    "reconnect attempt %d failed (%s); next in %.1f s",
                    attempts, error, self.backoff.current,
                )
                continue
            self._new_epoch()
            self.ring.set_connected(True)
            self._signal()
            self._reconnected = True
            self.log.info(
                "source reconnected after %.1f s (%d attempt(s))",
                time.monotonic() - down_since, attempts,
            )
            return True
        return False

    def _pause(self, seconds: float) -> bool:
        """Wait ``seconds`` while beating; True if asked to stop meanwhile."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            self.beat()
            if self.stop.wait(min(left, 1.0)):
                return True
        return self.stop.is_set()

    def run(self) -> None:
        """Read until end of stream, ``max_frames`` or the stop event.

        The ring is marked ended only on a normal end: a process that fails is restarted
        by the supervisor and goes on writing into the same ring.
        """
        spec = self.spec
        live = self.source.live
        try:
            if self._down is not None and not self._reconnect(self._down):
                return
            while not self.stop.is_set():
                self.beat()
                if spec.max_frames is not None and self.frames >= spec.max_frames:
                    break
                if not live:
                    wait = self.limiter.wait_time(time.monotonic())
                    if wait > 0 and self.stop.wait(wait):
                        break
                try:
                    frame = self.source.read()
                except SourceDisconnected as error:
                    if live and self._reconnect(str(error)):
                        continue
                    raise
                if frame is None:
                    self.log.info("end of stream after %d frames", self.frames)
                    break
                if self._reconnected:
                    self._reconnected = False
                    self.backoff.reset()
                    if self.cue is not None:  # no motion across the outage
                        self.cue.reset()
                if frame.cut:  # a looped source restarted: as after a reconnect
                    self._new_epoch()
                    if self.cue is not None:
                        self.cue.reset()
                now = time.monotonic()
                if live and self.limiter.wait_time(now) > 0:
                    self.ring.count_rate_limited()
                    continue
                self.limiter.admit(now)
                gray = frame.gray_image()  # once, for the model's size and the cue's
                image = to_gray_resized(gray, spec.size)
                cue = math.nan if self.cue is None else self.cue(gray)
                seq = self.ring.write(image, frame.ts, cue)
                self.frames += 1
                self._signal()
                picture: np.ndarray | Callable[[], np.ndarray] | None = frame.image
                tap = self.tap
                if self.main is not None:  # clips from the main source, at its own size
                    main = self.main.latest()
                    picture = None if main is None else main.image
                elif tap is not None and tap.take():  # decoded by PyAV to its luma plane
                    colour = functools.partial(tap.colour, spec.picture_width)
                    if tap.copying:  # the clips copy its packets: colour for the page only
                        self.recorder.on_copied(seq, frame.ts)
                        picture = colour
                    else:
                        picture = colour()
                if isinstance(picture, np.ndarray):
                    self.recorder.on_frame(picture, seq, frame.ts)
                if picture is not None:
                    self.picture.offer(picture, seq, frame.ts, spec.picture_width,
                                       now=time.time())
                skipped = self.source.skipped
                if skipped != self._skipped_seen:
                    self.ring.count_skipped(skipped - self._skipped_seen)
                    self._skipped_seen = skipped
        finally:
            self.source.close()
            if self.main is not None:
                self.main.close()
            self.picture.close()
        self.ring.set_ended()
        self._signal()
        self.recorder.close(self.stop, self._worker_caught_up)

    def _worker_caught_up(self) -> bool:
        """Has the worker scored every frame? (Asked while the recorder waits at the end.)"""
        self.beat()
        return self.health.get(self.spec.index, CameraField.WORKER_SEQ) >= self.ring.latest_seq

