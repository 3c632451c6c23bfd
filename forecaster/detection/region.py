"""Where in the frame an anomaly is: the box around the windows of largest prediction
error.

The scorer already holds the frame's squared error map (the model's frame size, 64x64 by
default). On a frame that scores at or above ``threshold_off`` (an episode open, or about
to open), :func:`error_box` pools the map over ``patch`` x ``patch`` windows ``stride``
pixels apart (the same windows as the patch and fused modes), keeps the ``top_k`` worst
windows whose error is at least ``keep`` times the worst one's, and returns the box around
them, ``(x0, y0, x1, y1)`` in model-frame pixels (``x1``, ``y1`` excluded). Other frames
cost nothing. The motion cue of the fused mode is one number per frame, with no place of
its own: the box shows where the model was most wrong.
"""

from __future__ import annotations

import numpy as np

from forecaster.detection.calibration import PatchPooler

PATCH = 8
STRIDE = 4
TOP_K = 5
KEEP = 0.5

Box = tuple[int, int, int, int]


class BoxFinder:
    """:func:`error_box` with its window pooler kept between frames of one size."""

    def __init__(self, patch: int = PATCH, stride: int = STRIDE, top_k: int = TOP_K,
                 keep: float = KEEP) -> None:
        self.patch, self.stride, self.top_k, self.keep = patch, stride, top_k, keep
        self._pooler: PatchPooler | None = None

    def __call__(self, squared_errors: np.ndarray) -> Box | None:
        height, width = squared_errors.shape[-2:]
        if min(height, width) < self.patch:
            return None
        pooler = self._pooler
        if pooler is None or (pooler.height, pooler.width) != (height, width):
            pooler = self._pooler = PatchPooler(height, width, self.patch, self.stride)
        means = pooler(squared_errors).ravel()
        if not means.size or not np.isfinite(means).all():
            return None
        k = min(self.top_k, means.size)
        worst = np.argpartition(means, means.size - k)[-k:]
        peak = float(means[worst].max())
        if peak <= 0.0:
            return None
        chosen = worst[means[worst] >= self.keep * peak]
        tops = pooler._top.ravel()[chosen]
        lefts = pooler._left.ravel()[chosen]
        return (int(lefts.min()), int(tops.min()), int(lefts.max()) + self.patch,
                int(tops.max()) + self.patch)


def error_box(squared_errors: np.ndarray) -> Box | None:
    """The box around the worst windows of an (H, W) squared error map; None when the map
    is flat (no error anywhere) or smaller than a window."""
    return BoxFinder()(squared_errors)
