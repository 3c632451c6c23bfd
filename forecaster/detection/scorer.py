"""Per-camera scoring: prediction error, calibrated anomaly score, hysteresis events.

The score of frame t compares it with the prediction made from frame t-1. Always published:
``mse`` of the whole frame (float64 accumulation) and ``psnr = 10 log10(1 / max(mse,
1e-10))``. The calibrated score comes from one of two modes:

- ``global``: ``(ln(max(mse, 1e-10)) - mu) / sigma``, with ``mu`` and ``sigma`` the mean
  and standard deviation of ``ln(mse)`` on normal frames (the model card's calibration);
- ``patch``: what happens where (see :mod:`forecaster.detection.calibration`): the frame's
  statistic adds the whole frame's prediction error and, per window of a few pixels, the
  motion energy (and optionally the prediction error) judged against that window's own
  behaviour on normal footage, the worst windows counting; all smoothed by a causal moving
  average. The score is that statistic standardised by its mean and spread on normal
  frames (``calibration["patch"]``), so both modes read "standard deviations above normal".

- ``fused``: the prediction error fused with a motion cue (dense optical flow at a size
  above the model's), each smoothed and under one normalisation for the whole frame (see
  :mod:`forecaster.detection.fused`; ``calibration["fused"]``).

``auto`` (the default) is ``fused`` when the calibration has a ``"fused"`` entry, else
``patch`` when it has a ``"patch"`` one, else ``global``. Everything is causal: a frame's
result depends only on it and earlier frames (and their cues).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, Literal, cast

import numpy as np

from forecaster.detection.calibration import MSE_FLOOR, PatchStatistic, parse_patch_calibration
from forecaster.detection.flow import PlaceNorm
from forecaster.detection.fused import FusedStatistic, parse_fused_calibration
from forecaster.detection.region import BoxFinder

SIGMA_FLOOR = 1e-3

EventKind = Literal["start", "end"]


@dataclass(frozen=True, slots=True)
class ScoreResult:
    """The scoring of one frame.

    ``event`` is "start" on the frame that turns the anomaly flag on and "end" on the
    frame that turns it off. ``peak_score`` is the highest score of the current episode
    (at "end": of the episode just ended); NaN outside an episode.
    """

    mse: float
    psnr: float
    score: float
    anomaly: bool
    event: EventKind | None
    peak_score: float
    #: where the error was largest, (x0, y0, x1, y1) in frame pixels, on frames scoring at
    #: or above ``threshold_off`` (see :mod:`forecaster.detection.region`); else None
    box: tuple[int, int, int, int] | None = None


def _check_pair(predicted: np.ndarray, actual: np.ndarray) -> None:
    if predicted.shape != actual.shape:
        raise ValueError(
            f"predicted and actual frames differ in shape: {predicted.shape} vs {actual.shape}"
        )
    if predicted.dtype.kind != "f" or actual.dtype.kind != "f":
        raise ValueError(
            f"frames must be float arrays in [0, 1], got {predicted.dtype} and {actual.dtype}"
        )
    if predicted.size == 0:
        raise ValueError(f"frames must not be empty, got shape {predicted.shape}")


def _mse(predicted: np.ndarray, actual: np.ndarray, buffer: np.ndarray) -> float:
    np.subtract(predicted, actual, out=buffer)
    np.multiply(buffer, buffer, out=buffer)
    return float(buffer.sum(dtype=np.float64)) / buffer.size


def psnr_from_mse(mse: float) -> float:
    """``10 log10(1 / max(mse, 1e-10))`` for frames in [0, 1] (at most 100 dB)."""
    return -10.0 * math.log10(max(mse, MSE_FLOOR)) if not math.isnan(mse) else math.nan


def frame_errors(predicted: np.ndarray, actual: np.ndarray) -> tuple[float, float]:
    """Return ``(mse, psnr)`` of two float frames in [0, 1] of the same shape."""
    predicted = np.asarray(predicted)
    actual = np.asarray(actual)
    _check_pair(predicted, actual)
    mse = _mse(predicted, actual, np.empty(predicted.shape, dtype=np.float32))
    return mse, psnr_from_mse(mse)


def _calibration_value(calibration: Mapping[str, Any], key: str) -> float:
    if key not in calibration:
        raise ValueError(f"calibration is missing {key!r} (keys: {sorted(calibration)})")
    value = calibration[key]
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"calibration[{key!r}] must be a number, got {value!r}") from None
    if not math.isfinite(number):
        raise ValueError(f"calibration[{key!r}] must be finite, got {value!r}")
    return number


SCORER_MODES: tuple[str, ...] = ("auto", "global", "patch", "fused")
Mode = Literal["global", "patch", "fused"]


def resolve_mode(mode: str, calibration: Mapping[str, Any]) -> Mode:
    """The mode a Scorer with ``mode`` uses for ``calibration`` (``auto`` picks)."""
    if mode not in SCORER_MODES:
        raise ValueError(f"scorer mode must be one of {', '.join(SCORER_MODES)}, got {mode!r}")
    if mode != "auto":
        return cast(Mode, mode)  # one of SCORER_MODES other than "auto"
    for candidate in ("fused", "patch"):
        if candidate in calibration:
            return candidate
    return "global"


def cue_height(mode: str, calibration: Mapping[str, Any]) -> int | None:
    """Rows of the frames the motion cue is computed on for a scorer with ``mode`` and
    ``calibration``; None when that scorer needs no cue."""
    if resolve_mode(mode, calibration) != "fused":
        return None
    settings = parse_fused_calibration(calibration.get("fused")).settings
    return settings.cue_height if settings.needs_cue else None


def cue_place(mode: str, calibration: Mapping[str, Any]) -> PlaceNorm | None:
    """The normal motion per place the motion cue is divided by for a scorer with ``mode``
    and ``calibration``; None when that scorer needs no cue or its card has none."""
    if cue_height(mode, calibration) is None:
        return None
    return parse_fused_calibration(calibration.get("fused")).place


class Scorer:
    """Scores one camera's frames and tracks its anomaly episodes (not thread-safe).

    ``mode``: ``"global"``, ``"patch"`` or ``"auto"`` (see the module). In both modes the
    score is a statistic of the frame (global: ``ln(mse)``; patch: the weighted sum of the
    standardised terms) minus its mean on normal frames, over its standard deviation:
    :attr:`mu` and :attr:`sigma`. In patch mode the scorer keeps the previous frame and
    moving averages: call :meth:`reset` whenever the frames stop being consecutive.

    The anomaly flag turns on once the score is ``>= threshold_on`` for ``min_on_frames``
    consecutive frames (event "start") and off once it is ``< threshold_off`` for
    ``min_off_frames`` consecutive frames and then stays so for ``merge_gap_s`` seconds of
    the frames' time (event "end"): an episode that starts again within that gap goes on
    as the same one (events closer than ``merge_gap_s`` merge), and the flag stays on
    meanwhile. Frames scored without a time (``ts`` NaN) merge nothing. A NaN score leaves
    both counts and the flag unchanged. With ``adapt_rate > 0`` the calibration follows the scene:
    after each frame that is neither flagged anomalous nor at or above ``threshold_on``,
    ``mu`` and the variance of the statistic move by an exponential moving update.
    """

    def __init__(
        self,
        calibration: Mapping[str, Any],
        *,
        mode: str = "auto",
        threshold_on: float = 3.0,
        threshold_off: float = 2.0,
        min_on_frames: int = 2,
        min_off_frames: int = 5,
        adapt_rate: float = 0.0,
        merge_gap_s: float = 0.0,
    ) -> None:
        self.mode = resolve_mode(mode, calibration)
        #: the statistic of the patch and fused modes (None: global, ln(mse))
        self._statistic: PatchStatistic | FusedStatistic | None = None
        if self.mode != "global":
            if self.mode not in calibration:
                raise ValueError(
                    f"scorer mode {self.mode!r} needs calibration[{self.mode!r}] in the model "
                    f"card; calibrate the model again (forecaster train), or use mode 'auto'"
                )
            if self.mode == "fused":
                fused = parse_fused_calibration(calibration["fused"])
                self._statistic = FusedStatistic(fused)
                mu, sigma = fused.score_mean, fused.score_std
            else:
                patch = parse_patch_calibration(calibration["patch"])
                self._statistic = PatchStatistic(patch)
                mu, sigma = patch.score_mean, patch.score_std
        else:
            mu = _calibration_value(calibration, "log_mse_mean")
            sigma = _calibration_value(calibration, "log_mse_std")
            if sigma < 0:
                raise ValueError(f"calibration['log_mse_std'] must be >= 0, got {sigma}")
        for name, value in (("threshold_on", threshold_on), ("threshold_off", threshold_off)):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"{name} must be a number, got {value!r}")
            if not math.isfinite(value):
                raise ValueError(f"{name} must be finite, got {value!r}")
        if threshold_off > threshold_on:
            raise ValueError(
                f"threshold_off must be <= threshold_on ({threshold_on}), got {threshold_off}"
            )
        for name, count in (("min_on_frames", min_on_frames), ("min_off_frames", min_off_frames)):
            if isinstance(count, bool) or not isinstance(count, int) or count < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {count!r}")
        if (
            isinstance(adapt_rate, bool)
            or not isinstance(adapt_rate, (int, float))
            or not 0.0 <= adapt_rate < 1.0
        ):
            raise ValueError(f"adapt_rate must be in [0, 1), got {adapt_rate!r}")
        if (isinstance(merge_gap_s, bool) or not isinstance(merge_gap_s, (int, float))
                or not 0.0 <= merge_gap_s < math.inf):
            raise ValueError(f"merge_gap_s must be a finite number >= 0, got {merge_gap_s!r}")
        self.threshold_on = float(threshold_on)
        self.threshold_off = float(threshold_off)
        self.min_on_frames = min_on_frames
        self.min_off_frames = min_off_frames
        self.adapt_rate = float(adapt_rate)
        self.merge_gap_s = float(merge_gap_s)
        self._mu = mu
        self._var = sigma * sigma
        self._sigma = max(sigma, SIGMA_FLOOR)
        self._buffer: np.ndarray | None = None
        self._boxes = BoxFinder()
        self._terms_log: list[tuple[float, float]] | None = None  # see terms_log
        self.reset()

    @property
    def terms_log(self) -> list[tuple[float, float]] | None:
        """When a list: each scored frame's two fused terms alone, (the model's error, the
        motion cue), each standardised on normal frames; (NaN, NaN) in the other modes.
        Setting one makes the fused statistic measure a term of weight 0 too."""
        return self._terms_log

    @terms_log.setter
    def terms_log(self, log: list[tuple[float, float]] | None) -> None:
        self._terms_log = log
        if isinstance(self._statistic, FusedStatistic):
            self._statistic.all_terms = log is not None

    @property
    def mu(self) -> float:
        """Current mean of the statistic on normal frames (global mode: of ``ln(mse)``)."""
        return self._mu

    @property
    def sigma(self) -> float:
        """Current standard deviation of the statistic (floored at 1e-3)."""
        return self._sigma

    @property
    def anomaly(self) -> bool:
        """True while an anomaly episode is open."""
        return self._anomaly

    @property
    def peak_score(self) -> float:
        """Highest score of the open episode; NaN when none is open."""
        return self._peak if self._anomaly else math.nan

    def calibration(self) -> dict[str, float]:
        """The current (possibly adapted) calibration of the statistic.

        Global mode: ``log_mse_mean`` and ``log_mse_std``; patch and fused modes:
        ``score_mean`` and ``score_std`` (the terms' own statistics never adapt).
        """
        if self.mode != "global":
            return {"score_mean": self._mu, "score_std": math.sqrt(self._var)}
        return {"log_mse_mean": self._mu, "log_mse_std": math.sqrt(self._var)}

    def reset(self) -> None:
        """Forget the hysteresis state (open episode, counts) and the patch mode's moving
        averages and previous frame; keep the calibration."""
        self._anomaly = False
        self._on_count = 0
        self._off_count = 0
        self._run_peak = -math.inf
        self._peak = -math.inf
        #: time of the frame the open episode settled at (off for min_off_frames), while it
        #: waits merge_gap_s for a new start; None when it has not settled
        self._settled_ts: float | None = None
        if self._statistic is not None:
            self._statistic.reset()

    def score_mse(self, mse: float, ts: float = math.nan) -> ScoreResult:
        """Score a frame whose mean squared error is already known (global mode only)."""
        if self.mode != "global":
            raise ValueError(
                f"a scorer in {self.mode} mode needs the frames, not their mse: use "
                f"score(predicted, actual)"
            )
        log_mse = math.log(max(mse, MSE_FLOOR)) if not math.isnan(mse) else math.nan
        return self._judge(mse, log_mse, ts)

    def score(self, predicted: np.ndarray, actual: np.ndarray, cue: float = math.nan,
              ts: float = math.nan) -> ScoreResult:
        """Score ``actual`` (frame t) against ``predicted`` (made from frame t-1).

        Both are float arrays in [0, 1] of the same shape, normally float32 (H, W); ``cue``
        is frame t's motion cue (fused mode; NaN: none); ``ts`` its time in seconds (for
        ``merge_gap_s``; NaN: none).
        """
        _check_pair(predicted, actual)
        buffer = self._buffer
        if buffer is None or buffer.shape != predicted.shape:
            buffer = self._buffer = np.empty(predicted.shape, dtype=np.float32)
        mse = _mse(predicted, actual, buffer)  # leaves the squared errors in buffer
        if self._statistic is None:
            result = self.score_mse(mse, ts)
            if result.score >= self.threshold_off and predicted.ndim == 2:
                result = replace(result, box=self._boxes(buffer))
            if self._terms_log is not None:
                self._terms_log.append((math.nan, math.nan))
            return result
        if predicted.ndim != 2:
            raise ValueError(f"{self.mode} mode scores (H, W) frames, got shape "
                             f"{predicted.shape}")
        result = self._judge(mse, self._statistic(buffer, actual, cue), ts)
        if result.score >= self.threshold_off:
            result = replace(result, box=self._boxes(buffer))
        if self._terms_log is not None:
            terms = (self._statistic.last_terms if isinstance(self._statistic, FusedStatistic)
                     else (math.nan, math.nan))
            self._terms_log.append(terms)
        return result

    def _judge(self, mse: float, statistic: float, ts: float = math.nan) -> ScoreResult:
        psnr = psnr_from_mse(mse)
        score = (statistic - self._mu) / self._sigma
        event: EventKind | None = None
        if not self._anomaly:
            if score >= self.threshold_on:
                self._on_count += 1
                self._run_peak = max(self._run_peak, score)
                if self._on_count >= self.min_on_frames:
                    self._anomaly = True
                    self._peak = self._run_peak
                    self._off_count = 0
                    event = "start"
            elif not math.isnan(score):
                self._on_count = 0
                self._run_peak = -math.inf
        elif self._settled_ts is not None:
            event = self._settled(score, ts)
        else:
            if score > self._peak:
                self._peak = score
            if score < self.threshold_off:
                self._off_count += 1
                if self._off_count >= self.min_off_frames:
                    if self.merge_gap_s > 0.0 and math.isfinite(ts):
                        self._settled_ts = ts  # ends unless it starts again within the gap
                        self._on_count = 0
                        self._run_peak = -math.inf
                    else:
                        event = self._end()
            elif not math.isnan(score):
                self._off_count = 0
        peak = self._peak if self._anomaly or event == "end" else math.nan
        if self.adapt_rate > 0.0 and not self._anomaly and score < self.threshold_on:
            self._adapt(statistic)
        return ScoreResult(mse, psnr, score, self._anomaly, event, peak)

    def _end(self) -> EventKind:
        self._anomaly = False
        self._settled_ts = None
        self._on_count = 0
        self._run_peak = -math.inf
        return "end"

    def _settled(self, score: float, ts: float) -> EventKind | None:
        """A frame of an episode that settled: a new start within ``merge_gap_s`` goes on
        with the episode; the gap passed without one ends it (a run over ``threshold_on``
        under way goes on counting towards the next start)."""
        if score >= self.threshold_on:
            self._on_count += 1
            self._run_peak = max(self._run_peak, score)
            if self._on_count >= self.min_on_frames:  # it starts again: the same episode
                self._peak = max(self._peak, self._run_peak)
                self._settled_ts = None
                self._off_count = 0
                return None
        elif not math.isnan(score):
            self._on_count = 0
            self._run_peak = -math.inf
        settled = self._settled_ts
        assert settled is not None
        if ts < settled:  # the clock went back: the gap counts from here
            self._settled_ts = ts
        elif not ts - settled < self.merge_gap_s:  # NaN ts too: nothing to wait for
            self._anomaly = False
            self._settled_ts = None
            return "end"
        return None

    def _adapt(self, statistic: float) -> None:
        rate = self.adapt_rate
        delta = statistic - self._mu
        self._mu += rate * delta
        self._var = (1.0 - rate) * (self._var + rate * delta * delta)
        self._sigma = max(math.sqrt(self._var), SIGMA_FLOOR)
