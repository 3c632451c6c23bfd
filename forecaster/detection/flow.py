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


class FlowEnergy:
    """The flow value of each frame of one stream (keeps the previous frame)."""

    def __init__(self, height: int, width: int, patch: int = 8, stride: int = 4,
                 fraction: float = TOP_FRACTION) -> None:
        self.pooler = PatchPooler(height, width, patch, stride)
        rows, cols = self.pooler.grid
        self.top = max(1, round(fraction * rows * cols))
        self._previous: np.ndarray | None = None

    def reset(self) -> None:
        self._previous = None

    def __call__(self, frame: np.ndarray) -> float:
        """The value of ``frame`` (H, W) uint8 against the previous one; NaN for the first."""
        previous, self._previous = self._previous, frame
        if previous is None:
            return float("nan")
        scale, levels, window, iterations, poly_n, poly_sigma = FARNEBACK
        # flow=None asks for a new output array; some versions of OpenCV's stubs omit None
        # there and others accept it, so the call is typed loosely to check either way
        farneback: Any = cv2.calcOpticalFlowFarneback
        flow = farneback(previous, frame, None, scale, levels, window, iterations, poly_n,
                         poly_sigma, 0)
        magnitude = np.sqrt(np.square(flow[..., 0]) + np.square(flow[..., 1]))
        return float(top_k_mean(self.pooler(magnitude), self.top))


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
    calibration), so one frame's cue is the same number everywhere.
    """

    def __init__(self, cue_height: int) -> None:
        if cue_height < 8:
            raise ValueError(f"motion cue height must be at least 8 rows, got {cue_height}")
        self.cue_height = cue_height
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
            self._energy = FlowEnergy(*cue_size(*source_shape, self.cue_height))
        assert self._energy is not None
        return self._energy(small)


def flow_scores(frames: np.ndarray, smoothing: float = SMOOTHING) -> np.ndarray:
    """The flow baseline of every frame of a video (T, H, W) uint8: its value smoothed by a
    causal moving average (NaN for frame 0, which has no previous frame)."""
    energy = FlowEnergy(*frames.shape[1:3])
    values = np.array([energy(np.ascontiguousarray(f)) for f in frames], dtype=np.float64)
    if len(values) > 1:
        values[1:] = smooth(values[1:], smoothing)
    return values
