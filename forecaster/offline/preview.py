"""A replay's MP4 preview per video: actual | predicted | error heat map."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from forecaster.detection.engine import prediction_to_uint8
from forecaster.errors import SourceError
from forecaster.recording.h264 import open_video
from forecaster.sources.preprocess import to_unit

PREVIEW_HEIGHT = 256
PANEL_TITLES = ("actual", "forecast", "error")


class PreviewWriter:
    """``actual | forecast | error heat map`` side by side as an H.264 MP4 that browsers play
    (:mod:`forecaster.recording.h264`; ``mp4v`` without PyAV), each panel
    upscaled to the source's aspect ratio, labelled, with the frame number and score, and
    marked when the frame is inside a detected anomaly episode (red frame, ANOMALY) or
    labelled anomalous (magenta bar, LABEL)."""

    def __init__(self, path: Path, size: tuple[int, int], fps: float,
                 aspect: float | None = None) -> None:
        height, width = size
        self.height = max(height, PREVIEW_HEIGHT // height * height)
        ratio = aspect if aspect is not None and aspect > 0 else width / height
        self.width = max(8, round(self.height * ratio / 2) * 2)
        self.path = path
        try:
            self._writer = open_video(path, fps, (3 * self.width, self.height))
        except OSError as error:
            raise SourceError(f"cannot write preview video {path}: {error}") from None

    def write(self, actual: np.ndarray, predicted: np.ndarray | None, seq: int,
              score: float | None, anomaly: bool = False, label: int | None = None) -> None:
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
        for panel, title in zip(panels, PANEL_TITLES, strict=True):
            cv2.putText(panel, title, (6, self.height - 8), cv2.FONT_HERSHEY_SIMPLEX, 0.5,
                        (255, 255, 255), 1, cv2.LINE_AA)
        canvas = np.concatenate(panels, axis=1)
        text = f"{seq}" if score is None or not math.isfinite(score) else f"{seq}  score {score:.2f}"
        if anomaly:
            text += "  ANOMALY"
            cv2.rectangle(canvas, (0, 0), (canvas.shape[1] - 1, canvas.shape[0] - 1),
                          (0, 0, 255), 3)
        if label:
            text += "  LABEL"
            canvas[: 4, :] = (255, 0, 255)
        cv2.putText(canvas, text, (6, 18), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 255, 255), 1,
                    cv2.LINE_AA)
        self._writer.write(canvas)

    def close(self) -> None:
        try:
            self._writer.close()
        except OSError as error:
            raise SourceError(f"cannot write preview video {self.path}: {error}") from None
