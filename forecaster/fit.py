"""Does the model fit the camera? The first scores of a camera against the calibration.

A model's score is calibrated on normal footage of the scenes it was trained on: about 0
there, "standard deviations above normal" elsewhere. On a camera whose scene the model has
never seen (another place, another light, another lens) nearly every frame scores high, and
the anomaly flag stays on for good. That is not an anomaly but a misfit, and the remedy is
a model trained on that camera's footage.

:class:`FitCheck` collects a camera's first :data:`FIT_FRAMES` scores and compares their
median with ``threshold_off`` (the score under which an anomaly episode ends): a median at
or above it means that most of those frames would hold an episode open, so the model does
not fit. A short video (replay) is judged at its end on what it had, from
:data:`MIN_FIT_FRAMES` scores on. The median ignores a few anomalous frames; footage that is
anomalous from start to end looks like a misfit too, which the message says.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np

#: scored frames a verdict is made on (a minute at 10 fps)
FIT_FRAMES = 600
#: fewest scored frames for a verdict at the end of a finite source
MIN_FIT_FRAMES = 50

Fit = Literal["checking", "ok", "misfit"]


class FitCheck:
    """The model-fit verdict of one camera, from its first scores."""

    def __init__(self, threshold_off: float, frames: int = FIT_FRAMES) -> None:
        self.threshold_off = float(threshold_off)
        self.frames = frames
        self._scores: list[float] = []
        self.verdict: Fit = "checking"
        self.median = math.nan
        #: scores the verdict was made on
        self.decided_on = 0

    def add(self, score: float) -> bool:
        """Count one frame's score; True when this frame settles the verdict."""
        if self.verdict != "checking" or math.isnan(score):
            return False
        self._scores.append(score)
        if len(self._scores) < self.frames:
            return False
        return self._decide()

    def finish(self) -> bool:
        """The source ended: decide on the scores so far (if enough); True if decided now."""
        if self.verdict != "checking" or len(self._scores) < MIN_FIT_FRAMES:
            return False
        return self._decide()

    def _decide(self) -> bool:
        self.median = float(np.median(self._scores))
        self.decided_on = len(self._scores)
        self.verdict = "misfit" if self.median >= self.threshold_off else "ok"
        self._scores = []
        return True

    def message(self, where: str, model: str) -> str:
        """The warning for a misfit (one line); ``where``: "camera cam0", "video v1"."""
        return (
            f"{where}: model {model} does not fit this camera: the median score of "
            f"its first {self.decided_on} scored frames is {self.median:.1f}, at or above threshold_off ({self.threshold_off:g}), so most "
            f"frames count as anomalous (unless the footage is anomalous throughout). Train "
            f"a model on normal footage of this camera (forecaster train SOURCE --minutes N "
            f"--out MODEL.keras) and set [model] path"
        )
