"""Per-location calibration for the scorer's "patch" mode.

A global error (the mse of the whole frame) is dominated by how many people are in view,
and a small anomaly (a bike among pedestrians, a few pixels at 64x96) hardly moves it. The
patch mode adds what happens where: every frame is cut into overlapping ``patch`` x ``patch``
windows ``stride`` pixels apart (the last row and column of windows aligned with the frame's
edges, so every pixel is covered), and each window is judged against that window's own
behaviour on normal footage — movement where nothing normally moves stands out, busy places
need more.

The frame's statistic is a weighted sum of up to three terms, each standardised by its
mean and standard deviation on normal frames:

- ``global``: ``ln(mse)`` of the prediction error over the whole frame;
- ``motion``: per window, ``ln`` of the mean squared difference between the frame and the
  previous one (motion energy), standardised per window: ``z = (v - mean) / max(std,
  0.05)``; the term is the mean of the ``top_k`` largest ``z`` (the worst places);
- ``error``: the same per-window treatment of the prediction's squared error.

Every per-frame value (``ln(mse)``, each window's ``ln``) first goes through a causal
exponential moving average ``s_t = (1 - smoothing) v_t + smoothing s_{t-1}``, which starts
afresh at the first scored frame (after a start or a reset). The motion term needs the
previous frame: on the first scored frame it is 0 (its normal mean).

The published score standardises the statistic once more by its mean and standard
deviation on the same normal frames, so it reads like the global score: about 0 on normal
footage, "standard deviations above normal" otherwise. Everything is causal.

The calibration is made once by running the model over normal held-out footage exactly as
the daemon does (:func:`patch_calibration`) and stored in the model card under
``calibration["patch"]`` (grids as nested lists, rounded; a few kB).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import cv2
import numpy as np

MSE_FLOOR = 1e-10
#: per-window spread floor: a window that never changes on normal footage (a wall) still
#: gives finite values
PATCH_STD_FLOOR = 0.05
#: spread floor of a term and of the statistic
STAT_STD_FLOOR = 1e-3
#: decimals of the grids kept in the card
DECIMALS = 4
#: the terms of the statistic, in the order they are summed
TERMS = ("global", "motion", "error")
#: terms judged per window (with a grid in the card)
WINDOW_TERMS = ("motion", "error")


@dataclass(frozen=True, slots=True)
class PatchSettings:
    """How frames are cut into windows and how the terms are combined.

    The defaults are those measured best on the Ped2 dev set (see the benchmark).
    """

    #: window side in pixels
    patch: int = 8
    #: pixels between window starts
    stride: int = 4
    #: a window term is the mean of this many largest window scores
    top_k: int = 5
    #: weight of the past in the causal moving averages, in [0, 1)
    smoothing: float = 0.5
    #: weight of the whole frame's prediction error
    global_weight: float = 1.0
    #: weight of the per-window motion energy
    motion_weight: float = 1.0
    #: weight of the per-window prediction error
    error_weight: float = 0.0

    def __post_init__(self) -> None:
        for name in ("patch", "stride", "top_k"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"patch setting {name} must be an integer >= 1, got {value!r}")
        if not _is_number(self.smoothing) or not 0.0 <= self.smoothing < 1.0:
            raise ValueError(f"patch setting smoothing must be in [0, 1), got {self.smoothing!r}")
        for term in TERMS:
            weight = self.weight(term)
            if not _is_number(weight) or not math.isfinite(weight) or weight < 0:
                raise ValueError(
                    f"patch setting {term}_weight must be a finite number >= 0, got {weight!r}"
                )
        if not any(self.weight(term) > 0 for term in TERMS):
            raise ValueError("patch settings need at least one weight above 0")

    def weight(self, term: str) -> float:
        """The weight of ``term`` (one of :data:`TERMS`)."""
        return float(getattr(self, f"{term}_weight"))

    def terms(self) -> tuple[str, ...]:
        """The terms with a weight above 0."""
        return tuple(term for term in TERMS if self.weight(term) > 0)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


# --- window arithmetic ---------------------------------------------------------------------


def window_starts(length: int, patch: int, stride: int) -> np.ndarray:
    """Starts of the windows along one axis: every ``stride`` pixels, the last at the edge."""
    if patch > length:
        raise ValueError(f"patch of {patch} pixels does not fit a frame side of {length}")
    starts = list(range(0, length - patch + 1, stride))
    if starts[-1] != length - patch:
        starts.append(length - patch)
    return np.asarray(starts, dtype=np.intp)


class PatchPooler:
    """Means of an (H, W) map (or a (T, H, W) stack) over the windows of one geometry."""

    def __init__(self, height: int, width: int, patch: int, stride: int) -> None:
        self.height, self.width = height, width
        self.patch = patch
        rows = window_starts(height, patch, stride)
        cols = window_starts(width, patch, stride)
        self.grid = (len(rows), len(cols))
        top, left = np.meshgrid(rows, cols, indexing="ij")
        self._top, self._left = top, left
        self._bottom, self._right = top + patch, left + patch

    def __call__(self, values: np.ndarray) -> np.ndarray:
        """Window means (float64), shape ``(..., rows, cols)``."""
        if values.shape[-2:] != (self.height, self.width):
            raise ValueError(
                f"map of shape {values.shape[-2:]} given to windows of a "
                f"{self.height}x{self.width} frame"
            )
        lead = values.shape[:-2]
        if not lead and values.dtype in (np.float32, np.float64, np.uint8):
            # one map (the motion cue's flow, the scorer's error map): OpenCV's integral
            # image, the same sums as the two NumPy passes below in a quarter of the time
            integral = cv2.integral(np.ascontiguousarray(values), sdepth=cv2.CV_64F)
        else:
            shape = (*lead, self.height + 1, self.width + 1)
            integral = np.zeros(shape, dtype=np.float64)
            inner = integral[..., 1:, 1:]
            np.cumsum(values, axis=-2, dtype=np.float64, out=inner)
            np.cumsum(inner, axis=-1, out=inner)
        b, r, t, left = self._bottom, self._right, self._top, self._left
        sums = integral[..., b, r] - integral[..., t, r] - integral[..., b, left] + integral[..., t, left]
        np.maximum(sums, 0.0, out=sums)  # rounding of a zero map
        sums *= 1.0 / (self.patch * self.patch)
        return sums


def log_window_errors(pooler: PatchPooler, squared_errors: np.ndarray) -> np.ndarray:
    """``ln(max(window mean, 1e-10))`` of squared error maps (..., H, W)."""
    return np.log(np.maximum(pooler(squared_errors), MSE_FLOOR))


def log_mse(squared_errors: np.ndarray) -> np.ndarray:
    """``ln(max(mean, 1e-10))`` of squared error maps (..., H, W) over H and W."""
    means = squared_errors.mean(axis=(-2, -1), dtype=np.float64)
    return np.log(np.maximum(means, MSE_FLOOR))


def smooth(values: np.ndarray, smoothing: float) -> np.ndarray:
    """Causal moving average over the first axis, starting at the first frame."""
    if smoothing <= 0.0 or len(values) == 0:
        return values
    out = np.empty_like(values)
    state = values[0]
    for t, current in enumerate(values):
        state = current if t == 0 else (1.0 - smoothing) * current + smoothing * state
        out[t] = state
    return out


def top_k_mean(z: np.ndarray, k: int) -> np.ndarray:
    """Mean of the ``k`` largest values over the last two axes (all when fewer)."""
    flat = z.reshape(*z.shape[:-2], -1)
    k = min(k, flat.shape[-1])
    if k == flat.shape[-1]:
        return flat.mean(axis=-1)
    return np.partition(flat, flat.shape[-1] - k, axis=-1)[..., -k:].mean(axis=-1)


# --- the card entry ------------------------------------------------------------------------


@dataclass(frozen=True)
class TermCalibration:
    """One term's normal statistics: its mean and spread, and per window for window terms."""

    mean: float
    std: float  #: floored at STAT_STD_FLOOR
    grid_mean: np.ndarray | None = None  #: (rows, cols) mean of the smoothed ln(window mse)
    grid_std: np.ndarray | None = None  #: its spread, floored at PATCH_STD_FLOOR


@dataclass(frozen=True)
class PatchCalibration:
    """The parsed ``calibration["patch"]`` of a model card."""

    settings: PatchSettings
    height: int
    width: int
    terms: dict[str, TermCalibration]
    score_mean: float  #: mean of the statistic on normal frames
    score_std: float  #: its standard deviation
    frames: int

    def pooler(self) -> PatchPooler:
        return PatchPooler(self.height, self.width, self.settings.patch, self.settings.stride)


def _where(path: str) -> str:
    return "calibration['patch']" + "".join(f"[{p!r}]" for p in path.split(".") if p)


def _number(data: Mapping[str, Any], key: str, path: str = "") -> float:
    where = _where(path)
    if key not in data:
        raise ValueError(f"{where} is missing {key!r} (keys: {sorted(data)})")
    value = data[key]
    if not _is_number(value) or not math.isfinite(value):
        raise ValueError(f"{where}[{key!r}] must be a finite number, got {value!r}")
    return float(value)


def _integer(data: Mapping[str, Any], key: str) -> int:
    value = data.get(key)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"calibration['patch'][{key!r}] must be an integer, got {value!r}")
    return value


def _grid(data: Mapping[str, Any], key: str, path: str, grid: tuple[int, int]) -> np.ndarray:
    where = f"{_where(path)}[{key!r}]"
    try:
        array = np.asarray(data.get(key), dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{where} must be a grid of numbers") from None
    if array.shape != grid:
        raise ValueError(f"{where} must be a {grid[0]}x{grid[1]} grid, got shape {array.shape}")
    if not np.isfinite(array).all():
        raise ValueError(f"{where} must be finite")
    return array


def parse_patch_calibration(data: Any) -> PatchCalibration:
    """Check and parse ``calibration["patch"]``; ValueError naming the bad field."""
    if not isinstance(data, Mapping):
        raise ValueError(f"calibration['patch'] must be an object, got {data!r}")
    defaults = PatchSettings()
    try:
        settings = PatchSettings(
            patch=_integer(data, "patch"),
            stride=_integer(data, "stride"),
            top_k=_integer(data, "top_k"),
            smoothing=_number(data, "smoothing"),
            **{f"{t}_weight": _number(data, f"{t}_weight") if f"{t}_weight" in data
               else defaults.weight(t) for t in TERMS},
        )
    except ValueError as error:
        raise ValueError(f"calibration['patch']: {error}") from None
    height, width = _integer(data, "height"), _integer(data, "width")
    try:
        pooler = PatchPooler(height, width, settings.patch, settings.stride)
    except ValueError as error:
        raise ValueError(f"calibration['patch']: {error}") from None
    entries = data.get("terms")
    if not isinstance(entries, Mapping):
        raise ValueError(f"calibration['patch']['terms'] must be an object, got {entries!r}")
    terms = {}
    for term in settings.terms():
        entry = entries.get(term)
        path = f"terms.{term}"
        if not isinstance(entry, Mapping):
            raise ValueError(f"{_where(path)} must be an object (the {term} term has a weight)")
        std = _number(entry, "std", path)
        if std < 0:
            raise ValueError(f"{_where(path)}['std'] must be >= 0, got {std}")
        grid_mean = grid_std = None
        if term in WINDOW_TERMS:
            grid_mean = _grid(entry, "log_mse_mean", path, pooler.grid)
            grid_std = _grid(entry, "log_mse_std", path, pooler.grid)
            if (grid_std < 0).any():
                raise ValueError(f"{_where(path)}['log_mse_std'] must be >= 0")
            grid_std = np.maximum(grid_std, PATCH_STD_FLOOR)
        terms[term] = TermCalibration(mean=_number(entry, "mean", path),
                                      std=max(std, STAT_STD_FLOOR),
                                      grid_mean=grid_mean, grid_std=grid_std)
    score_std = _number(data, "score_std")
    if score_std < 0:
        raise ValueError(f"calibration['patch']['score_std'] must be >= 0, got {score_std}")
    return PatchCalibration(
        settings=settings,
        height=height,
        width=width,
        terms=terms,
        score_mean=_number(data, "score_mean"),
        score_std=score_std,
        frames=_integer(data, "frames"),
    )


# --- scoring, frame by frame ---------------------------------------------------------------


class PatchStatistic:
    """The patch mode's statistic of each frame, one camera's frames in order.

    Holds the moving averages and the previous frame; :meth:`reset` forgets them (after a
    reset of the camera's state, the next scored frame starts afresh).
    """

    def __init__(self, calibration: PatchCalibration) -> None:
        self.calibration = calibration
        self.settings = calibration.settings
        self.pooler = calibration.pooler()
        self._averages: dict[str, np.ndarray | float] = {}
        self._previous: np.ndarray | None = None
        self._motion: np.ndarray | None = None

    def reset(self) -> None:
        self._averages.clear()
        self._previous = None

    def _average(self, term: str, value: Any) -> Any:
        previous = self._averages.get(term)
        smoothing = self.settings.smoothing
        if previous is not None and smoothing > 0.0:
            value = (1.0 - smoothing) * value + smoothing * previous
        self._averages[term] = value
        return value

    def _window_term(self, term: str, squared: np.ndarray) -> float:
        cal = self.calibration.terms[term]
        assert cal.grid_mean is not None and cal.grid_std is not None
        logs = self._average(term, log_window_errors(self.pooler, squared))
        z = (logs - cal.grid_mean) / cal.grid_std
        return (float(top_k_mean(z, self.settings.top_k)) - cal.mean) / cal.std

    def __call__(self, squared_errors: np.ndarray, actual: np.ndarray,
                 cue: float = math.nan) -> float:
        """The statistic of a frame: its squared error map and the frame itself (H, W); the
        motion cue is not used (the motion term is measured on the frames)."""
        cal = self.calibration
        if squared_errors.shape != (cal.height, cal.width):
            raise ValueError(
                f"frames of shape {squared_errors.shape} scored with a patch calibration "
                f"made for {cal.height}x{cal.width} frames"
            )
        total = 0.0
        for term in self.settings.terms():
            weight = self.settings.weight(term)
            if term == "global":
                value = self._average(term, float(log_mse(squared_errors)))
                total += weight * (value - cal.terms[term].mean) / cal.terms[term].std
            elif term == "error":
                total += weight * self._window_term(term, squared_errors)
            elif self._previous is not None:  # motion: 0 on the first frame
                motion = self._motion
                if motion is None or motion.shape != actual.shape:
                    motion = self._motion = np.empty(actual.shape, dtype=np.float32)
                np.subtract(actual, self._previous, out=motion)
                np.multiply(motion, motion, out=motion)
                total += weight * self._window_term(term, motion)
        if "motion" in cal.terms:
            if self._previous is None or self._previous.shape != actual.shape:
                self._previous = np.empty(actual.shape, dtype=np.float32)
            self._previous[...] = actual
        return total


# --- calibration ---------------------------------------------------------------------------


def _window_values(
    pooler: PatchPooler, maps: Sequence[np.ndarray], keep: Sequence[np.ndarray], smoothing: float
) -> np.ndarray:
    """Smoothed ln(window mean) of every video's maps, the kept frames, concatenated."""
    parts = [smooth(log_window_errors(pooler, m), smoothing)[k] for m, k in zip(maps, keep, strict=True)]
    return np.concatenate(parts) if parts else np.empty((0, *pooler.grid))


def _motion_footage(
    images: list[np.ndarray],
    masks: list[np.ndarray],
    motion_frames: Sequence[np.ndarray] | None,
    motion_normal: Sequence[np.ndarray] | None,
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """The footage of the motion term's statistics, checked."""
    if motion_frames is None:
        return images, masks
    footage = [np.asarray(f, dtype=np.float32) for f in motion_frames]
    if motion_normal is None:
        keeps = [np.ones(len(f), dtype=bool) for f in footage]
    else:
        keeps = [np.asarray(k, dtype=bool) for k in motion_normal]
    if len(keeps) != len(footage):
        raise ValueError(f"{len(footage)} videos of motion footage but {len(keeps)} masks")
    shape = images[0].shape[1:]
    for video, keep in zip(footage, keeps, strict=True):
        if video.ndim != 3 or video.shape[1:] != shape:
            raise ValueError(f"motion footage must be (T, {shape[0]}, {shape[1]}), got "
                             f"{video.shape}")
        if len(keep) != len(video):
            raise ValueError(f"motion mask of {len(keep)} frames for {len(video)} frames")
    return footage, keeps


def patch_calibration(
    error_maps: Sequence[np.ndarray],
    frames: Sequence[np.ndarray],
    settings: PatchSettings | None = None,
    *,
    normal: Sequence[np.ndarray] | None = None,
    motion_frames: Sequence[np.ndarray] | None = None,
    motion_normal: Sequence[np.ndarray] | None = None,
) -> dict[str, Any]:
    """The ``calibration["patch"]`` entry from normal footage, as the daemon scores it.

    Per video: ``error_maps`` (T, H, W), the squared errors of its consecutive scored frames
    (prediction made at t-1 vs frame t, from the first frame the daemon scores), ``frames``
    (T, H, W) those frames as float in [0, 1], ``normal`` a boolean mask of the frames to
    count (default all; the moving averages still run over every frame, as they do live).

    The motion term does not depend on the model, so its per-window statistics can come from
    more footage than the model's held-out videos: ``motion_frames`` (per video, the frames
    from the first the daemon would score, (T, H, W) float in [0, 1]) with their
    ``motion_normal`` masks; default ``frames``. Per-window statistics need a lot of footage:
    a few videos leave windows where people rarely walked with a too narrow normal range.
    """
    settings = settings or PatchSettings()
    maps = [np.asarray(m) for m in error_maps]
    images = [np.asarray(f, dtype=np.float32) for f in frames]
    if not maps:
        raise ValueError("patch calibration needs at least one video")
    if len(images) != len(maps):
        raise ValueError(f"{len(maps)} videos of error maps but {len(images)} of frames")
    height, width = (int(n) for n in maps[0].shape[-2:])
    pooler = PatchPooler(height, width, settings.patch, settings.stride)
    masks = [np.ones(len(m), dtype=bool) for m in maps] if normal is None else [
        np.asarray(k, dtype=bool) for k in normal]
    if len(masks) != len(maps):
        raise ValueError(f"{len(maps)} videos but {len(masks)} normal-frame masks")
    for video, image, mask in zip(maps, images, masks, strict=True):
        if video.ndim != 3 or video.shape[1:] != (height, width):
            raise ValueError(
                f"error maps must be (T, {height}, {width}) for every video, got {video.shape}"
            )
        if image.shape != video.shape:
            raise ValueError(f"frames of shape {image.shape} for error maps of {video.shape}")
        if len(mask) != len(video):
            raise ValueError(f"normal-frame mask of {len(mask)} frames for {len(video)} frames")
    count = int(sum(int(k.sum()) for k in masks))
    if count < 2:
        raise ValueError(f"patch calibration needs at least 2 normal frames, got {count}")

    smoothing = settings.smoothing
    # per scored video, the standardised value of each term at every frame
    values: dict[str, list[np.ndarray]] = {}
    entries: dict[str, dict[str, Any]] = {}
    for term in settings.terms():
        if term == "global":
            series = [smooth(log_mse(m), smoothing) for m in maps]
            kept = np.concatenate([s[k] for s, k in zip(series, masks, strict=True)])
            mean, std = float(np.mean(kept)), float(np.std(kept, ddof=1))
            entries[term] = {"mean": mean, "std": std, "frames": len(kept)}
            values[term] = [(s - mean) / max(std, STAT_STD_FLOOR) for s in series]
            continue
        if term == "motion":  # from the second frame: the first has no previous frame
            motion_images, motion_masks = _motion_footage(images, masks, motion_frames,
                                                          motion_normal)
            sources = [np.square(f[1:] - f[:-1]) for f in motion_images]
            keeps = [k[1:] for k in motion_masks]
        else:
            sources, keeps = maps, masks
        window_values = _window_values(pooler, sources, keeps, smoothing)
        if len(window_values) < 2:
            raise ValueError(f"the {term} term needs at least 2 normal frames, got "
                             f"{len(window_values)}")
        # the scorer reads the rounded grids: the term's spread is measured with them too
        grid_mean = np.round(window_values.mean(axis=0), DECIMALS)
        grid_std = np.round(window_values.std(axis=0, ddof=1), DECIMALS)
        spread = np.maximum(grid_std, PATCH_STD_FLOOR)
        stats = []
        for source in sources:
            logs = smooth(log_window_errors(pooler, source), smoothing)
            stats.append(top_k_mean((logs - grid_mean) / spread, settings.top_k))
        kept = np.concatenate([s[k] for s, k in zip(stats, keeps, strict=True)])
        mean, std = float(np.mean(kept)), float(np.std(kept, ddof=1))
        entries[term] = {"log_mse_mean": grid_mean.tolist(), "log_mse_std": grid_std.tolist(),
                         "mean": mean, "std": std, "frames": len(kept)}
        if term == "motion" and motion_frames is not None:  # the scored footage's values
            stats = [top_k_mean((smooth(log_window_errors(pooler, np.square(f[1:] - f[:-1])),
                                        smoothing) - grid_mean) / spread, settings.top_k)
                     for f in images]
        standardised = [(s - mean) / max(std, STAT_STD_FLOOR) for s in stats]
        if term == "motion":
            standardised = [np.concatenate([[0.0], s]) for s in standardised]
        values[term] = standardised
    statistic = [sum(settings.weight(t) * values[t][v] for t in values) for v in range(len(maps))]
    kept = np.concatenate([np.asarray(s)[k] for s, k in zip(statistic, masks, strict=True)])
    return {
        **settings.as_dict(),
        "height": height,
        "width": width,
        "grid": list(pooler.grid),
        "frames": count,
        "terms": entries,
        "score_mean": float(np.mean(kept)),
        "score_std": float(max(np.std(kept, ddof=1), STAT_STD_FLOOR)),
    }
