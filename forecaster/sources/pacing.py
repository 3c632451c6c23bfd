"""Pacing a source: at most so many frames a second.

The capture loop of a live camera and a ``--realtime`` replay of a file share this rule.
"""

from __future__ import annotations


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
