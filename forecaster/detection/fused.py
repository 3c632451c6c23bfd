"""The scorer's "fused" mode: the model's prediction error fused with a motion cue.

Two terms, each smoothed by a causal exponential moving average and standardised by its
mean and spread on normal frames (one normalisation for the whole frame):

- ``error``: how wrong the prediction made from frame t-1 was about frame t: ``ln`` of the
  whole frame's mean squared error (``error = "global"``), or the mean of the ``top_k``
  largest ``ln`` window errors (``"worst"``: ``patch`` x ``patch`` windows ``stride``
  pixels apart, so a small fast object counts however many people walk elsewhere);
- ``flow``: ``ln(0.001 + cue)``, the frame's motion cue (:class:`forecaster.detection.flow.MotionCue`:
  the speed of the fastest places, from dense optical flow at ``cue_height`` rows, a size
  above the model's). Where the entry has a ``place``
  (:class:`forecaster.detection.flow.PlaceNorm`, learned by ``forecaster train`` from its
  normal footage), each window's speed is first divided by the fourth root of that
  place's usual top speed, so a speed usual where people walk fast counts for less there
  than where nothing moves that fast. A window's divisor is never under the median
  window's: a place where nothing moved in the footage is weighed as the median place,
  not as one where any motion is unheard of (on Ped2 the divisors span about 1.3x, mostly
  the camera's perspective: walkers near it move more pixels a frame).

The statistic ``error_weight * z_error + flow_weight * z_flow`` is standardised once more
on the same normal frames, so the score reads "standard deviations above normal", as in
the other modes. With ``flow_weight = 0`` no cue is needed; with ``error_weight = 0`` the
score is the model-free flow alone. A frame without a cue (the first of a stream) keeps
the flow term's moving average where it was (0 when none yet). Everything is causal.

The calibration lives in the model card under ``calibration["fused"]``
(:func:`fused_calibration`, run by ``forecaster train`` on held-out normal videos).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal, TypeGuard

import numpy as np

from forecaster.detection.calibration import (
    MSE_FLOOR,
    STAT_STD_FLOOR,
    PatchPooler,
    log_mse,
    log_window_errors,
    top_k_mean,
)
from forecaster.detection.flow import PlaceNorm

#: added to the cue before its logarithm (a still frame has a cue of about 0)
CUE_FLOOR = 1e-3
ERROR_KINDS = ("global", "worst")


@dataclass(frozen=True, slots=True)
class FusedSettings:
    """How the two terms are made and weighed."""

    #: the error term: "global" (whole frame) or "worst" (mean of the worst windows)
    error: Literal["global", "worst"] = "global"
    patch: int = 8
    stride: int = 4
    top_k: int = 5
    #: weight of the past in the causal moving averages, in [0, 1)
    smoothing: float = 0.7
    error_weight: float = 1.0
    flow_weight: float = 1.0
    #: rows of the frames the motion cue is computed on
    cue_height: int = 120

    def __post_init__(self) -> None:
        if self.error not in ERROR_KINDS:
            raise ValueError(f"fused setting error must be one of {ERROR_KINDS}, got "
                             f"{self.error!r}")
        for name in ("patch", "stride", "top_k", "cue_height"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"fused setting {name} must be an integer >= 1, got {value!r}")
        if self.cue_height < 8:
            raise ValueError(f"fused setting cue_height must be at least 8, got "
                             f"{self.cue_height}")
        if not _number(self.smoothing) or not 0.0 <= self.smoothing < 1.0:
            raise ValueError(f"fused setting smoothing must be in [0, 1), got "
                             f"{self.smoothing!r}")
        for name in ("error_weight", "flow_weight"):
            value = getattr(self, name)
            if not _number(value) or not math.isfinite(value) or value < 0:
                raise ValueError(f"fused setting {name} must be a finite number >= 0, got "
                                 f"{value!r}")
        if self.error_weight == 0 and self.flow_weight == 0:
            raise ValueError("fused settings need error_weight or flow_weight above 0")

    @property
    def needs_cue(self) -> bool:
        return self.flow_weight > 0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _number(value: Any) -> TypeGuard[int | float]:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


#: the settings ``forecaster train`` calibrates every model with (``scorer.mode = "auto"``
#: then scores with them): within the spread of the seeds of the best candidates of
#: benchmarks/ped2.py on Ped2, and better than those on the synthetic scenes
#: (docs/detection-ped2.md)
DEFAULT_FUSED = FusedSettings()


def cue_value(cue: float) -> float:
    """The flow term's raw value of a cue: ``ln(0.001 + cue)``; NaN stays NaN."""
    return math.log(CUE_FLOOR + cue) if math.isfinite(cue) and cue >= 0 else math.nan


class _ErrorTerm:
    """The error term's raw value of a squared error map (H, W) or stack (T, H, W)."""

    def __init__(self, settings: FusedSettings, height: int, width: int) -> None:
        self.settings = settings
        self.pooler = (PatchPooler(height, width, settings.patch, settings.stride)
                       if settings.error == "worst" else None)

    def __call__(self, squared: np.ndarray) -> Any:
        if self.pooler is None:
            return log_mse(squared)
        return top_k_mean(log_window_errors(self.pooler, squared), self.settings.top_k)


@dataclass(frozen=True)
class FusedCalibration:
    """The parsed ``calibration["fused"]`` of a model card."""

    settings: FusedSettings
    height: int
    width: int
    error_mean: float
    error_std: float
    flow_mean: float
    flow_std: float
    score_mean: float
    score_std: float
    #: the normal motion per place the cue is divided by (None: the plain cue)
    place: PlaceNorm | None = None


def parse_fused_calibration(data: Any) -> FusedCalibration:
    """Check and parse ``calibration["fused"]``; ValueError naming the bad field."""
    if not isinstance(data, Mapping):
        raise ValueError(f"calibration['fused'] must be an object, got {data!r}")
    names = FusedSettings.__dataclass_fields__
    try:
        settings = FusedSettings(**{k: data[k] for k in names if k in data})
    except (TypeError, ValueError) as error:
        raise ValueError(f"calibration['fused']: {error}") from None

    def number(key: str, positive: bool = False) -> float:
        value = data.get(key)
        if not _number(value) or not math.isfinite(value) or (positive and value < 0):
            raise ValueError(f"calibration['fused'][{key!r}] must be a finite number"
                             f"{' >= 0' if positive else ''}, got {value!r}")
        return float(value)

    def integer(key: str) -> int:
        value = data.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or value < 8:
            raise ValueError(f"calibration['fused'][{key!r}] must be an integer >= 8, got "
                             f"{value!r}")
        return value

    terms = data.get("terms")
    if not isinstance(terms, Mapping):
        raise ValueError(f"calibration['fused']['terms'] must be an object, got {terms!r}")
    stats = {}
    for term in ("error", "flow"):
        entry = terms.get(term)
        if not isinstance(entry, Mapping):
            raise ValueError(f"calibration['fused']['terms'][{term!r}] must be an object")
        for key in ("mean", "std"):
            value = entry.get(key)
            if not _number(value) or not math.isfinite(value):
                raise ValueError(f"calibration['fused']['terms'][{term!r}][{key!r}] must be "
                                 f"a finite number, got {value!r}")
            stats[f"{term}_{key}"] = float(value)
    place = data.get("place")
    return FusedCalibration(
        place=None if place is None else PlaceNorm.from_dict(place, "calibration['fused']['place']"),
        settings=settings, height=integer("height"), width=integer("width"),
        error_mean=stats["error_mean"], error_std=max(stats["error_std"], STAT_STD_FLOOR),
        flow_mean=stats["flow_mean"], flow_std=max(stats["flow_std"], STAT_STD_FLOOR),
        score_mean=number("score_mean"), score_std=number("score_std", positive=True),
    )


class FusedStatistic:
    """The fused statistic of one camera's frames, in order (keeps the moving averages)."""

    def __init__(self, calibration: FusedCalibration) -> None:
        self.calibration = calibration
        self.settings = calibration.settings
        self._error = _ErrorTerm(self.settings, calibration.height, calibration.width)
        self._averages: dict[str, float] = {}
        #: the two standardised terms of the last frame, (error, flow); NaN: not measured
        self.last_terms: tuple[float, float] = (math.nan, math.nan)
        #: measure both terms whatever their weights (set while the terms are logged)
        self.all_terms = False

    def reset(self) -> None:
        self._averages.clear()

    def _average(self, term: str, value: float) -> float:
        previous = self._averages.get(term)
        if math.isnan(value):
            return math.nan if previous is None else previous
        smoothing = self.settings.smoothing
        if previous is not None:
            value = (1.0 - smoothing) * value + smoothing * previous
        self._averages[term] = value
        return value

    def __call__(self, squared_errors: np.ndarray, actual: np.ndarray, cue: float) -> float:
        """The statistic of a frame: its squared error map (H, W), the frame itself (not
        used: the cue stands for the motion) and its motion cue (NaN: none)."""
        cal, settings = self.calibration, self.settings
        if squared_errors.shape != (cal.height, cal.width):
            raise ValueError(f"frames of shape {squared_errors.shape} scored with a fused "
                             f"calibration made for {cal.height}x{cal.width} frames")
        # a term of weight 0 is measured only when each term is to be reported alone
        # (forecaster eval's model-term and cue rows): the daemon's frames skip it
        error = flow = math.nan
        if settings.error_weight > 0 or self.all_terms:
            error = (self._average("error", float(self._error(squared_errors)))
                     - cal.error_mean) / cal.error_std
        if settings.flow_weight > 0 or self.all_terms:
            flow = (self._average("flow", cue_value(cue)) - cal.flow_mean) / cal.flow_std
        self.last_terms = (error, flow)
        total = 0.0
        if settings.error_weight > 0:
            total += settings.error_weight * error
        if settings.flow_weight > 0 and not math.isnan(flow):
            total += settings.flow_weight * flow
        return total


# --- calibration ---------------------------------------------------------------------------


def smooth_nan(values: np.ndarray, smoothing: float) -> np.ndarray:
    """As the scorer: a causal moving average that holds its value over NaN."""
    out = np.empty(len(values))
    state = math.nan
    for t, value in enumerate(values):
        if not math.isnan(value):
            state = value if math.isnan(state) else (1.0 - smoothing) * value + smoothing * state
        out[t] = state
    return out


def fused_calibration(
    error_maps: Sequence[np.ndarray],
    cues: Sequence[np.ndarray] | None,
    settings: FusedSettings,
    *,
    normal: Sequence[np.ndarray] | None = None,
    place: PlaceNorm | None = None,
) -> dict[str, Any]:
    """The ``calibration["fused"]`` entry from normal footage, as the daemon scores it.

    Per video: ``error_maps`` (T, H, W), the squared errors of its consecutive scored frames
    (from the first frame the daemon scores); ``cues`` (T,) those frames' motion cues
    (needed when ``settings.flow_weight > 0``), made with ``place`` (the normal motion per
    place, kept in the entry for the daemon's cues; None: the plain cue); ``normal`` the
    frames to count (default all; the moving averages run over every frame, as live).
    """
    maps = [np.asarray(m, dtype=np.float32) for m in error_maps]
    if not maps:
        raise ValueError("fused calibration needs at least one video")
    height, width = (int(n) for n in maps[0].shape[-2:])
    masks = ([np.ones(len(m), dtype=bool) for m in maps] if normal is None
             else [np.asarray(k, dtype=bool) for k in normal])
    if settings.needs_cue:
        if cues is None or len(cues) != len(maps):
            raise ValueError("fused calibration with a flow term needs the cues of every video")
        cue_list = [np.asarray(c, dtype=np.float64) for c in cues]
    else:
        cue_list = [np.full(len(m), math.nan) for m in maps]
    for video, mask, cue in zip(maps, masks, cue_list, strict=True):
        if video.ndim != 3 or video.shape[1:] != (height, width):
            raise ValueError(f"error maps must be (T, {height}, {width}), got {video.shape}")
        if len(mask) != len(video) or len(cue) != len(video):
            raise ValueError(f"{len(video)} error maps with {len(mask)} normal flags and "
                             f"{len(cue)} cues")
    term = _ErrorTerm(settings, height, width)
    errors = [smooth_nan(np.asarray(term(m), dtype=np.float64), settings.smoothing)
              for m in maps]
    flows = [smooth_nan(np.array([cue_value(c) for c in cue]), settings.smoothing)
             for cue in cue_list]

    def stats(series: list[np.ndarray]) -> tuple[float, float]:
        kept = np.concatenate([s[k] for s, k in zip(series, masks, strict=True)])
        kept = kept[np.isfinite(kept)]
        if len(kept) < 2:
            return 0.0, 1.0
        return float(np.mean(kept)), float(np.std(kept, ddof=1))

    count = int(sum(int(k.sum()) for k in masks))
    if count < 2:
        raise ValueError(f"fused calibration needs at least 2 normal frames, got {count}")
    error_mean, error_std = stats(errors)
    flow_mean, flow_std = stats(flows)
    totals = []
    for error, flow in zip(errors, flows, strict=True):
        total = np.zeros(len(error))
        if settings.error_weight > 0:
            total += settings.error_weight * (error - error_mean) / max(error_std, STAT_STD_FLOOR)
        if settings.flow_weight > 0:
            total += settings.flow_weight * np.nan_to_num(
                (flow - flow_mean) / max(flow_std, STAT_STD_FLOOR), nan=0.0)
        totals.append(total)
    score_mean, score_std = stats(totals)
    return {
        **settings.as_dict(),
        "height": height,
        "width": width,
        "frames": count,
        "terms": {"error": {"mean": error_mean, "std": error_std},
                  "flow": {"mean": flow_mean, "std": flow_std}},
        "score_mean": score_mean,
        "score_std": max(score_std, STAT_STD_FLOOR),
        **({} if place is None or not settings.needs_cue else {"place": place.as_dict()}),
    }


__all__ = [
    "CUE_FLOOR",
    "DEFAULT_FUSED",
    "MSE_FLOOR",
    "FusedCalibration",
    "FusedSettings",
    "FusedStatistic",
    "PlaceNorm",
    "cue_value",
    "fused_calibration",
    "parse_fused_calibration",
    "smooth_nan",
]
