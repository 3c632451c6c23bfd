"""Dense optical flow: how fast things move in a frame, with no model at all.

Farneback's dense flow (OpenCV) between consecutive gray frames gives every pixel's motion
in pixels per frame. A frame's value is the mean flow magnitude of its fastest places: the
frame is cut into ``patch`` x ``patch`` windows ``stride`` pixels apart and the top
``fraction`` of the windows' mean magnitudes are averaged, so one fast cyclist among slow
walkers counts, and so does a crowd's number not. ``forecaster eval`` runs it as a baseline
next to copy-last, frame difference and MOG2 (with a causal moving average), at the
model's frame size and on the same frames.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from forecaster.detection.calibration import PatchPooler, smooth, top_k_mean

#: Farneback parameters: pyramid scale, levels, window size, iterations, poly_n, poly_sigma.
#: Two iterations a level, not three: on the pooled Ped2 videos (the 4 test videos, the 16
#: normal training videos and a pseudo-anomalous copy of each) the cue alone scores as
#: with three (micro AUC 0.990, paper 0.972) in about three quarters of the time. Speeds
#: are measured up to about 8 pixels a frame at the cue's size (a fifteenth of its height;
#: Ped2's walkers move about 1), and anything faster counts as about that fast; one
#: iteration would stop at 4 (docs/performance.md, "The motion cue")
FARNEBACK = (0.5, 3, 15, 2, 5, 1.2)
#: share of the windows averaged into a frame's value
TOP_FRACTION = 0.05
#: weight of the past in the baseline's causal moving average
SMOOTHING = 0.3
#: the normal motion of each place (:class:`PlaceNorm`): the quantile of a window's speeds
#: on normal footage, and the power of it (at least the median window's) a window's speed
#: is divided by. A quarter of the way from "fast is unusual" to "fast for this place is
#: unusual": on Ped2 (benchmarks/place_cue.py, 3 splits of the training videos) the cue
#: alone scores 0.986 +- 0.000 causal and 0.979 paper against 0.984 and 0.973 plain, and
#: the probe of a walker going across the walkway 0.84 against 0.73; powers of 0.5 and
#: above see that walker better but cost the causal figure on one split in three (unseen
#: normal footage where people walk where the training videos had few)
PLACE_QUANTILE = 0.99
PLACE_POWER = 0.25
#: the least speed (pixels a frame at the cue's size) a place's quantile is taken as
PLACE_FLOOR = 0.05


@dataclass(frozen=True, eq=False)
class PlaceNorm:
    """The normal motion of each place of a camera's view, learned from normal footage: a
    divisor per window of the motion cue (:class:`FlowEnergy`'s windows), so a speed usual
    where people walk fast counts for less there than where nothing moves that fast.

    ``divisors`` is (rows, cols) of the cue's window grid on the footage it was learned
    from; a stream whose grid differs (another aspect ratio) gets it resized to its own.
    """

    divisors: np.ndarray
    quantile: float = PLACE_QUANTILE
    power: float = PLACE_POWER

    def for_grid(self, grid: tuple[int, int]) -> np.ndarray:
        """The divisors on a window grid of (rows, cols)."""
        if tuple(self.divisors.shape) == tuple(grid):
            return self.divisors
        rows, cols = grid
        return np.asarray(cv2.resize(self.divisors, (cols, rows), interpolation=cv2.INTER_LINEAR),
                          dtype=np.float64)

    def as_dict(self) -> dict[str, Any]:
        rows, cols = self.divisors.shape
        return {"rows": int(rows), "cols": int(cols), "quantile": self.quantile,
                "power": self.power,
                "divisors": [round(float(v), 6) for v in self.divisors.ravel()]}

    @classmethod
    def from_dict(cls, data: Any, where: str = "place") -> PlaceNorm:
        """Parse :meth:`as_dict`'s form; ValueError naming the bad field."""
        if not isinstance(data, Mapping):
            raise ValueError(f"{where} must be an object, got {type(data).__name__}")
        shape = []
        for key in ("rows", "cols"):
            value = data.get(key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{where}[{key!r}] must be an integer >= 1, got {value!r}")
            shape.append(value)
        numbers = {}
        for key, default in (("quantile", PLACE_QUANTILE), ("power", PLACE_POWER)):
            value = data.get(key, default)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
                raise ValueError(f"{where}[{key!r}] must be a number in (0, 1], got {value!r}")
            numbers[key] = float(value)
        # no divisor under the floor's (rounded in the card): a tiny one would make any
        # motion there infinitely fast
        least = PLACE_FLOOR ** numbers["power"] * (1.0 - 1e-4)
        values = data.get("divisors")
        count = shape[0] * shape[1]
        if not isinstance(values, list) or len(values) != count or not all(
                _number_at_least(v, least) for v in values):
            raise ValueError(f"{where}['divisors'] must be {count} finite numbers of at least "
                             f"{least:.4g} ({shape[0]} rows x {shape[1]} columns)")
        divisors = np.asarray(values, dtype=np.float64).reshape(shape)
        return cls(divisors, **numbers)


def _number_at_least(value: Any, least: float) -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        return math.isfinite(value) and value >= least
    except OverflowError:  # an integer too large for a float
        return False


def learn_place(windows: Sequence[np.ndarray], quantile: float = PLACE_QUANTILE,
                power: float = PLACE_POWER) -> PlaceNorm:
    """The :class:`PlaceNorm` of normal footage from its window speeds: one (T, rows, cols)
    stack per video (NaN rows, such as a video's first frame, are skipped); a video on
    another grid than most frames' is resized to theirs. Each window's ``quantile`` of its speeds,
    at least the median window's (and :data:`PLACE_FLOOR`), to the power ``power``. The
    result is as the model card keeps it (rounded), so what is calibrated with it is what
    the daemon divides by."""
    stacks = [np.asarray(w, dtype=np.float32) for w in windows if len(w)]
    if not stacks:
        raise ValueError("learning the normal motion per place needs at least one frame")
    for stack in stacks:
        if stack.ndim != 3:
            raise ValueError(f"window speeds must be (T, rows, cols), got {stack.shape}")
    # only the frames with motion measured; the grid of most of them (a video of one
    # frame, or one at another size, does not set it)
    stacks = [stack[np.isfinite(stack).all(axis=(1, 2))] for stack in stacks]
    counts: dict[tuple[int, ...], int] = {}
    for stack in stacks:
        counts[stack.shape[1:]] = counts.get(stack.shape[1:], 0) + len(stack)
    grid = max(counts, key=lambda shape: counts[shape])
    kept = []
    for stack in stacks:
        if stack.shape[1:] != grid:
            stack = np.stack([cv2.resize(m, (grid[1], grid[0]), interpolation=cv2.INTER_AREA)
                              for m in stack]) if len(stack) else stack.reshape(0, *grid)
        kept.append(stack)
    frames = np.concatenate(kept)
    if len(frames) < 2:
        raise ValueError(f"learning the normal motion per place needs at least 2 frames with "
                         f"motion measured, got {len(frames)}")
    level = np.quantile(frames, quantile, axis=0).astype(np.float64)
    floor = max(float(np.median(level)), PLACE_FLOOR)
    learned = PlaceNorm(np.maximum(level, floor) ** power, quantile, power)
    return PlaceNorm.from_dict(learned.as_dict())


def place_cues(windows: np.ndarray, place: PlaceNorm | None,
               fraction: float = TOP_FRACTION) -> np.ndarray:
    """The cue of each frame from its window speeds (T, rows, cols) as :class:`FlowEnergy`
    computes it live, divided by ``place`` (None: the plain cue); NaN where a frame has
    none."""
    windows = np.asarray(windows, dtype=np.float64)
    rows, cols = windows.shape[1:]
    if place is not None:
        windows = windows / place.for_grid((rows, cols))
    values = top_k_mean(windows, max(1, round(fraction * rows * cols)))
    return np.asarray(values, dtype=np.float64)


class FlowEnergy:
    """The flow value of each frame of one stream (keeps the previous frame)."""

    def __init__(self, height: int, width: int, patch: int = 8, stride: int = 4,
                 fraction: float = TOP_FRACTION, place: PlaceNorm | None = None) -> None:
        self.pooler = PatchPooler(height, width, patch, stride)
        rows, cols = self.pooler.grid
        self.top = max(1, round(fraction * rows * cols))
        self._divisors = None if place is None else place.for_grid((rows, cols))
        self._previous: np.ndarray | None = None
        #: the last frame's window speeds before any place's divisors (None: not measured)
        self.windows: np.ndarray | None = None

    def reset(self) -> None:
        self._previous = None

    def __call__(self, frame: np.ndarray) -> float:
        """The value of ``frame`` (H, W) uint8 against the previous one; NaN for the first."""
        previous, self._previous = self._previous, frame
        self.windows = None
        if previous is None:
            return float("nan")
        scale, levels, window, iterations, poly_n, poly_sigma = FARNEBACK
        # flow=None asks for a new output array; some versions of OpenCV's stubs omit None
        # there and others accept it, so the call is typed loosely to check either way
        farneback: Any = cv2.calcOpticalFlowFarneback
        flow = farneback(previous, frame, None, scale, levels, window, iterations, poly_n,
                         poly_sigma, 0)
        magnitude = np.sqrt(np.square(flow[..., 0]) + np.square(flow[..., 1]))
        windows = self.windows = self.pooler(magnitude)
        if self._divisors is not None:
            windows = windows / self._divisors
        return float(top_k_mean(windows, self.top))


def cue_size(height: int, width: int, cue_height: int) -> tuple[int, int]:
    """The size a frame of ``height`` x ``width`` is resized to for its motion cue: ``cue_height``
    rows (never more than the frame has), the frame's aspect ratio kept."""
    rows = min(cue_height, height)
    cols = max(8, round(width * rows / height))
    return max(8, rows), cols


class MotionCue:
    """The motion cue of each frame of one stream: :class:`FlowEnergy` on the frame converted
    to gray and resized to ``cue_height`` rows (aspect ratio kept), a size that is not the
    model's: the model's 64x64 frames blur a cyclist into a walker, the cue need not.

    Computed where the full-size frame is at hand (the capture process, replay, training's
    calibration), so one frame's cue is the same number everywhere. With ``place`` (the
    model card's normal motion per place) each window's speed is divided by its place's
    divisor before the fastest windows are averaged.
    """

    def __init__(self, cue_height: int, place: PlaceNorm | None = None) -> None:
        if cue_height < 8:
            raise ValueError(f"motion cue height must be at least 8 rows, got {cue_height}")
        self.cue_height = cue_height
        self.place = place
        self._energy: FlowEnergy | None = None
        self._source_shape: tuple[int, int] | None = None

    def reset(self) -> None:
        if self._energy is not None:
            self._energy.reset()

    def __call__(self, image: np.ndarray) -> float:
        """The cue of ``image`` (any size, gray or BGR uint8) against the previous frame; NaN
        for the first frame and after a change of the source's frame size."""
        return self.measure(self.resize(image), (int(image.shape[0]), int(image.shape[1])))

    def resize(self, image: np.ndarray) -> np.ndarray:
        """``image`` at the size its cue is computed on (no state: a reader thread may call
        it ahead of :meth:`measure`)."""
        from forecaster.sources.preprocess import to_gray, to_gray_resized

        height, width = int(image.shape[0]), int(image.shape[1])
        rows, cols = cue_size(height, width, self.cue_height)
        factor = height // rows
        if factor >= 2 and height == rows * factor and 0 < width - cols * factor < factor:
            # a whole factor down the rows but not across (1280x720 to 213x120): the few
            # columns left over are cut, half on each side, so OpenCV's area resize takes
            # its fast path of whole factors (about a third of the time at 720p)
            left = (width - cols * factor) // 2
            image = to_gray(image)[:, left:left + cols * factor]
        return to_gray_resized(image, (rows, cols))

    def measure(self, small: np.ndarray, source_shape: tuple[int, int]) -> float:
        """The cue of a frame of ``source_shape`` (height, width) given at the cue's size
        (:meth:`resize`), against the previous frame: ``self(image)`` in two steps."""
        if source_shape != self._source_shape:
            self._source_shape = source_shape
            self._energy = FlowEnergy(*cue_size(*source_shape, self.cue_height),
                                      place=self.place)
        assert self._energy is not None
        return self._energy(small)

    @property
    def windows(self) -> np.ndarray | None:
        """The last frame's window speeds, before the place's divisors (None: none)."""
        return None if self._energy is None else self._energy.windows


def flow_scores(frames: np.ndarray, smoothing: float = SMOOTHING) -> np.ndarray:
    """The flow baseline of every frame of a video (T, H, W) uint8: its value smoothed by a
    causal moving average (NaN for frame 0, which has no previous frame)."""
    energy = FlowEnergy(*frames.shape[1:3])
    values = np.array([energy(np.ascontiguousarray(f)) for f in frames], dtype=np.float64)
    if len(values) > 1:
        values[1:] = smooth(values[1:], smoothing)
    return values
