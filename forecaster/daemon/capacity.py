"""Over capacity: the cameras offer more frames than the box scores, said once in the log.

The supervisor looks every :data:`WINDOW_S` seconds (the first window, the start-up's, is
not judged). What the cameras offer is each camera's ``fps`` where it has one (a file or a
camera paced at that rate; a capture process short of CPU delivers fewer frames than
that, which counts as the box's shortfall too), else the rate its capture delivered.
What the box scores is what the worker fed to the model. Below :data:`SHORT_OF` of the
offer, the log says so once, in plain words, with the figures and what to do about it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from forecaster.ipc.health import CameraField, Health
from forecaster.ipc.ring import FrameRing

log = logging.getLogger("forecaster.daemon")

#: seconds over which the offer and the scored rate are compared
WINDOW_S = 10.0
#: the box is over capacity when it scores less than this share of what is offered
SHORT_OF = 0.9


class CapacityWatch:
    """Compares what the cameras offer with what the worker scores; logs once when short."""

    def __init__(self, fps: Sequence[float], rings: Sequence[FrameRing], health: Health,
                 start: float, window_s: float = WINDOW_S) -> None:
        self.fps = list(fps)
        self.rings = rings
        self.health = health
        self.window_s = window_s
        self._at = start
        self._judge = False  # the first window (the start-up) is not judged
        self._counts = self._read()
        #: the line logged (None: not yet over capacity)
        self.said: str | None = None

    def _read(self) -> list[tuple[float, float, bool]]:
        """Per camera: frames captured, frames fed to the model, whether it is running."""
        counts = []
        for index, ring in enumerate(self.rings):
            stats = ring.stats()
            counts.append((float(stats.frames_captured),
                           self.health.get(index, CameraField.PROCESSED),
                           stats.connected and not stats.ended))
        return counts

    def check(self, now: float) -> str | None:
        """Judge the window ending ``now`` if it is complete; the line logged, if any."""
        if self.said is not None or now - self._at < self.window_s:
            return None
        counts = self._read()
        seconds = now - self._at
        before, self._counts, self._at = self._counts, counts, now
        judge, self._judge = self._judge, True
        if not judge:
            return None
        offered = scored = 0.0
        rates = []
        for fps, (captured0, processed0, _), (captured1, processed1, running) in zip(
                self.fps, before, counts, strict=True):
            if not running:
                continue
            if captured1 < captured0 or processed1 < processed0:
                return None  # a restarted worker or capture counts from 0: no judgement
            delivered = (captured1 - captured0) / seconds
            offered += fps if fps > 0 else delivered
            rate = (processed1 - processed0) / seconds
            scored += rate
            rates.append(rate)
        if not rates or offered <= 0 or scored >= SHORT_OF * offered:
            return None
        self.said = (
            f"over capacity: the {len(rates)} cameras offer {offered:.0f} frames/s and this "
            f"box scores {scored:.0f}/s, {scored / offered:.0%} of them (it would need "
            f"{offered / max(scored, 1e-9):.1f}x its speed). Every camera keeps a share: "
            f"the slowest scores {min(rates):.1f}/s, the mean is {sum(rates) / len(rates):.1f}"
            f"/s; the other frames are not scored. Lower the cameras' fps, give them a "
            f"detect_source (a substream), or set scorer.mode = \"global\" (no motion cue)"
        )
        log.warning("%s", self.said)
        return self.said


__all__ = ["CapacityWatch"]
