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

import cv2
import numpy as np

from forecaster.calibration import PatchPooler, smooth, top_k_mean

#: Farneback parameters: pyramid scale, levels, window size, iterations, poly_n, poly_sigma
FARNEBACK = (0.5, 3, 15, 3, 5, 1.2)
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
        flow = cv2.calcOpticalFlowFarneback(previous, frame, None, scale, levels, window,
                                            iterations, poly_n, poly_sigma, 0)
        magnitude = np.sqrt(np.square(flow[..., 0]) + np.square(flow[..., 1]))
        return float(top_k_mean(self.pooler(magnitude), self.top))


def flow_scores(frames: np.ndarray, smoothing: float = SMOOTHING) -> np.ndarray:
    """The flow baseline of every frame of a video (T, H, W) uint8: its value smoothed by a
    causal moving average (NaN for frame 0, which has no previous frame)."""
    energy = FlowEnergy(*frames.shape[1:3])
    values = np.array([energy(np.ascontiguousarray(f)) for f in frames], dtype=np.float64)
    if len(values) > 1:
        values[1:] = smooth(values[1:], smoothing)
    return values
