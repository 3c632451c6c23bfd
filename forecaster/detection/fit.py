"""Does the model fit the camera? The first scores of a camera against the calibration.

A model is calibrated on normal footage of the scenes it was trained on: there its
prediction error is about its calibration mean. On a camera whose scene the model has
never seen (another place, another light, another lens) it predicts badly on nearly every
frame, the scores stay high and the anomaly flag stays on for good. That is not an anomaly
but a misfit, and the remedy is a model trained on that camera's footage.

:class:`FitCheck` takes the whole-frame prediction error of a camera's first
:data:`FIT_FRAMES` scored frames in standard deviations of the model's calibration
(``(ln mse - log_mse_mean) / log_mse_std``, the global score, whatever the scorer's mode)
and compares their median with ``threshold_off`` (the score under which an anomaly episode
ends): at or above it, most of those frames are predicted as badly as anomalies are, so the
model does not fit. The motion cue plays no part: a busy scene is no misfit. A short video
(replay) is judged at its end on what it had, from :data:`MIN_FIT_FRAMES` frames on. The
median ignores a few anomalous frames; footage that is anomalous from start to end looks
like a misfit too, which the message says.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np

from forecaster.detection.scorer import MSE_FLOOR, SIGMA_FLOOR
from forecaster.sources.readers import is_live_source, redact

#: scored frames a verdict is made on (a minute at 10 fps)
FIT_FRAMES = 600
#: fewest scored frames for a verdict at the end of a finite source
MIN_FIT_FRAMES = 50

Fit = Literal["checking", "ok", "misfit"]


class FitCheck:
    """The model-fit verdict of one camera, from the prediction error of its first frames
    against the calibration's ``log_mse_mean`` and ``log_mse_std``."""

    def __init__(self, threshold_off: float, log_mse_mean: float, log_mse_std: float,
                 frames: int = FIT_FRAMES) -> None:
        self.threshold_off = float(threshold_off)
        self.mu = float(log_mse_mean)
        self.sigma = max(float(log_mse_std), SIGMA_FLOOR)
        self.frames = frames
        self._scores: list[float] = []
        self.verdict: Fit = "checking"
        self.median = math.nan
        #: scores the verdict was made on
        self.decided_on = 0

    def add(self, mse: float) -> bool:
        """Count one scored frame's mean squared error; True when it settles the verdict."""
        if self.verdict != "checking" or math.isnan(mse):
            return False
        self._scores.append((math.log(max(mse, MSE_FLOOR)) - self.mu) / self.sigma)
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

    def message(self, where: str, model: str, source: str = "") -> str:
        """The warning for a misfit (one line); ``where``: "camera cam0", "video v1";
        ``source``: the camera's source string ("": not known), for the remedy's command."""
        return (
            f"{where}: model {model} does not fit this camera: over its first "
            f"{self.decided_on} scored frames the median prediction error is "
            f"{self.median:.1f} standard deviations above the model's normal error, at or "
            f"above threshold_off ({self.threshold_off:g}), so most frames look anomalous "
            f"(unless the footage is anomalous throughout). Train "
            f"a model on normal footage of this camera ({train_hint(source)}) and set "
            f"[model] path"
        )


def train_hint(source: str) -> str:
    """The command that trains a model on ``source``'s footage: ``--minutes`` records a
    live camera or stream; a file or folder is read whole."""
    if not source:
        return ("forecaster train FILE_OR_FOLDER --out MODEL.keras; for a live camera or "
                "stream, forecaster train SOURCE --minutes N --out MODEL.keras")
    if is_live_source(source):
        return f"forecaster train {redact(source)} --minutes N --out MODEL.keras"
    return f"forecaster train {source} --out MODEL.keras"
