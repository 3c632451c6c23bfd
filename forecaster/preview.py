"""A replay's MP4 preview per video: actual | predicted | error heat map."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from forecaster.engine import prediction_to_uint8
from forecaster.errors import SourceError
from forecaster.preprocess import to_unit

PREVIEW_HEIGHT = 256


class PreviewWriter:
    """``actual | predicted | error heat map`` side by side, upscaled, as an mp4v MP4."""

    def __init__(self, path: Path, size: tuple[int, int], fps: float) -> None:
        import cv2

        height, width = size
        self.scale = max(1, PREVIEW_HEIGHT // height)
        self.height, self.width = height * self.scale, width * self.scale
        self.path = path
        fourcc = cv2.VideoWriter.fourcc(*"mp4v")
        self._writer = cv2.VideoWriter(str(path), fourcc, fps, (3 * self.width, self.height))
        if not self._writer.isOpened():
            raise SourceError(f"cannot write preview video {path} (OpenCV has no mp4v encoder?)")

    def write(self, actual: np.ndarray, predicted: np.ndarray | None, seq: int,
              score: float | None) -> None:
        import cv2

        up = (self.width, self.height)
        actual_f = to_unit(actual)
        if predicted is None:
            predicted_u8 = np.zeros_like(actual)
            error = np.zeros(actual.shape, np.float32)
        else:
            predicted_u8 = prediction_to_uint8(predicted)
            error = np.abs(actual_f - predicted)
        heat = cv2.applyColorMap(np.clip(error * 4.0 * 255.0, 0, 255).astype(np.uint8),
                                 cv2.COLORMAP_JET)
        panels = [
            cv2.cvtColor(cv2.resize(actual, up, interpolation=cv2.INTER_NEAREST), cv2.COLOR_GRAY2BGR),
            cv2.cvtColor(cv2.resize(predicted_u8, up, interpolation=cv2.INTER_NEAREST),
                         cv2.COLOR_GRAY2BGR),
            cv2.resize(heat, up, interpolation=cv2.INTER_NEAREST),
        ]
        canvas = np.concatenate(panels, axis=1)
        text = f"{seq}" if score is None or not math.isfinite(score) else f"{seq}  score {score:.2f}"
        cv2.putText(canvas, text, (6, 18), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 255, 255), 1,
                    cv2.LINE_AA)
        self._writer.write(canvas)

    def close(self) -> None:
        self._writer.release()
