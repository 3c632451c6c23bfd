"""Capture process: one per camera.

Reads the camera's source, turns each frame into the model's gray size, writes it into
the camera's shared-memory ring and notifies the worker. It never waits for the worker:
a full notification queue is simply skipped (the worker reads the ring's latest seq).
Live sources that drop out are reopened with capped exponential backoff.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import signal
import time
from dataclasses import dataclass
from typing import Any

from forecaster.errors import ForecasterError, SourceDisconnected, SourceError
from forecaster.logs import setup_child_logging
from forecaster.preprocess import to_gray_resized
from forecaster.ring import FrameRing
from forecaster.sources import FrameSource, open_source


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


class RateLimiter:
    """Admit at most ``fps`` frames per second (0 = all).

    Live sources drop the frames that come too early; files are paced (the caller waits).
    """

    def __init__(self, fps: float) -> None:
        self.interval = 1.0 / fps if fps > 0 else 0.0
        self.next_due = 0.0

    def wait_time(self, now: float) -> float:
        """Seconds until the next frame is due (<= 0: due now)."""
        return self.next_due - now if self.interval else 0.0

    def admit(self, now: float) -> None:
        if self.interval:
            # Schedule from the due time, not from now, so the average rate is exact;
            # but never build up a backlog after a stall.
            self.next_due = max(self.next_due + self.interval, now)


class Capture:
    """The capture loop, independent of process plumbing so tests can drive it."""

    def __init__(self, spec: CaptureSpec, ring: FrameRing, notify: Any, stop: Any) -> None:
        self.spec = spec
        self.ring = ring
        self.notify = notify
        self.stop = stop
        self.log = logging.getLogger(f"forecaster.capture.{spec.camera}")
        self.limiter = RateLimiter(spec.fps)
        self.frames = 0
        self._skipped_seen = 0
        self._down: str | None = None
        self.source: FrameSource = open_source(spec.source, loop=spec.loop)

    def open(self) -> None:
        """Open the source. A live source that is down starts disconnected and retried."""
        try:
            self.source.open()
        except SourceDisconnected as error:
            if not self.source.live:
                raise
            self._down = str(error)
            self.log.warning("source not reachable at start-up: %s; retrying", error)
            return
        self.ring.set_connected(True)

    def _signal(self) -> None:
        # A full queue means the worker is behind; it reads the ring's latest seq anyway.
        with contextlib.suppress(queue.Full):
            self.notify.put_nowait(self.spec.index)

    def _reconnect(self, reason: str) -> bool:
        """Reopen a live source with capped exponential backoff; False if stopping."""
        self.ring.set_connected(False)
        self._signal()
        self.log.warning("source disconnected: %s; reconnecting", reason)
        delay = 0.5
        while not self.stop.is_set():
            if self.stop.wait(delay):
                return False
            try:
                self.source.close()
                self.source.open()
            except (SourceError, SourceDisconnected) as error:
                self.log.info("reconnect failed (%s); next try in %.1f s", error, delay)
                delay = min(delay * 2, self.spec.reconnect_max_s)
                continue
            self.ring.new_epoch()
            self.ring.set_connected(True)
            self._signal()
            self.log.info("source reconnected")
            return True
        return False

    def run(self) -> None:
        """Read until end of stream, ``max_frames`` or the stop event."""
        spec = self.spec
        live = self.source.live
        try:
            if self._down is not None and not self._reconnect(self._down):
                return
            while not self.stop.is_set():
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
                now = time.monotonic()
                if live and self.limiter.wait_time(now) > 0:
                    self.ring.count_rate_limited()
                    continue
                self.limiter.admit(now)
                image = to_gray_resized(frame.image, spec.size)
                self.ring.write(image, frame.ts)
                self.frames += 1
                self._signal()
                skipped = self.source.skipped
                if skipped:
                    self.ring.count_skipped(skipped - self._skipped_seen)
                    self._skipped_seen = skipped
        finally:
            self.ring.set_ended()
            self._signal()
            self.source.close()


def capture_main(spec: CaptureSpec, notify: Any, control: Any, stop: Any, go: Any) -> None:
    """Entry point of a capture process (spawned by the supervisor).

    Opens the source (reporting errors), reports ready, then waits for ``go`` (every
    process ready) before reading frames.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    setup_child_logging(spec.log_level)
    log = logging.getLogger(f"forecaster.capture.{spec.camera}")
    role = f"capture:{spec.camera}"
    ring: FrameRing | None = None
    try:
        ring = FrameRing.attach(spec.ring)
        ring.set_writer(os.getpid())
        capture = Capture(spec, ring, notify, stop)
        capture.open()
    except ForecasterError as error:
        control.put(("error", role, error.exit_code, str(error)))
        if ring is not None:
            ring.set_ended()
            ring.close()
        return
    notify.cancel_join_thread()  # never hang at exit on notifications nobody reads
    control.put(("ready", role, 0, ""))
    while not go.wait(0.1):
        if stop.is_set():
            ring.set_ended()
            ring.close()
            return
    try:
        capture.run()
    except ForecasterError as error:
        log.error("%s", error)
        control.put(("error", role, error.exit_code, str(error)))
        raise SystemExit(error.exit_code) from None
    finally:
        ring.close()

