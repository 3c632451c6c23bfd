"""A source read in a thread of its own, keeping only its latest frame.

A camera with a ``detect_source`` scores the low-resolution stream and records from its
main ``source``: the capture loop reads the detection stream, and this reader keeps the
main stream's newest frame at hand for each of the loop's frames. A live source that
drops out is reopened with capped exponential backoff; a file is paced at ``fps`` (its
own rate where 0) and, with ``loop``, starts again at its end.
"""

from __future__ import annotations

import logging
import threading
import time

from forecaster.errors import SourceDisconnected, SourceError
from forecaster.sources.pacing import RateLimiter
from forecaster.sources.readers import FrameSource, SourceFrame, open_source, redact

#: the longest wait between two reconnection attempts of a live source
RECONNECT_MAX_S = 30.0


class LatestFrameReader:
    """Reads ``uri`` in a thread named ``name``; :meth:`latest` is its newest frame."""

    def __init__(self, uri: str, *, name: str, loop: bool = False, fps: float = 0.0,
                 reconnect_max_s: float = RECONNECT_MAX_S, color: bool = False,
                 color_width: int | None = None) -> None:
        self.source: FrameSource = open_source(uri, loop=loop, color=color,
                                               color_width=color_width)
        self.fps = fps
        self.reconnect_max_s = reconnect_max_s
        self.log = logging.getLogger(f"forecaster.capture.{name}")
        self._latest: SourceFrame | None = None
        self._stop = threading.Event()
        #: frames read so far
        self.frames = 0
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def open(self) -> None:
        """Open the source (a SourceError for a file that cannot be read; a live source that
        is down is retried in the thread) and start reading."""
        try:
            self.source.open()
        except SourceDisconnected as error:
            if not self.source.live:
                raise
            self.log.warning("main source not reachable at start-up: %s; retrying", error)
        self._thread.start()

    def latest(self) -> SourceFrame | None:
        return self._latest

    def _reopen(self) -> bool:
        delay = 0.5
        while not self._stop.is_set():
            try:
                self.source.close()
                self.source.open()
                return True
            except (SourceError, SourceDisconnected) as error:
                self.log.info("main source %s: %s; next attempt in %.1f s",
                              redact(self.source.uri), error, delay)
            if self._stop.wait(delay):
                return False
            delay = min(delay * 2, self.reconnect_max_s)
        return False

    def _run(self) -> None:
        source = self.source
        fps = self.fps or (0.0 if source.live else (source.nominal_fps or 0.0))
        limiter = RateLimiter(0.0 if source.live else fps)
        while not self._stop.is_set():
            wait = limiter.wait_time(time.monotonic())
            if wait > 0 and self._stop.wait(wait):
                break
            try:
                frame = source.read()
            except (SourceDisconnected, RuntimeError) as error:
                self._latest = None  # no stale picture in clips while the source is down
                if not source.live:
                    self.log.error("main source failed: %s", error)
                    break
                self.log.warning("main source disconnected: %s; reconnecting", error)
                if not self._reopen():
                    break
                continue
            except SourceError as error:
                self._latest = None
                self.log.error("main source failed: %s", error)
                break
            except Exception as error:  # an unforeseen decoder error: said, not silent
                self._latest = None
                self.log.error("main source failed: %s: %s", type(error).__name__, error)
                break
            if frame is None:
                break  # the end of a file that does not loop: the last frame stays
            limiter.admit(time.monotonic())
            self._latest = frame
            self.frames += 1

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5.0)
        if not self._thread.is_alive():
            self.source.close()


__all__ = ["LatestFrameReader"]
