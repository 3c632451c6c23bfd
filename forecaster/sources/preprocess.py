"""Frame preprocessing shared by capture, training, replay and evaluation.

One function turns any decoded frame into the model's input format, so a frame scored
live and the same frame scored offline go through exactly the same pixels.
"""

from __future__ import annotations

import cv2
import numpy as np

from forecaster.sources.frame_size import frame_size_fits

Size = tuple[int, int]  # (height, width)

#: uint8 pixel -> the model's scale, [0, 1]
PIXEL_SCALE = np.float32(1.0 / 255.0)


def to_unit(frames: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """uint8 frames as float32 in [0, 1], the model's scale (written into ``out`` if given);
    the worker, replay, training and evaluation all scale pixels with it."""
    return np.multiply(frames, PIXEL_SCALE, out=out, dtype=np.float32)


def to_gray_resized(image: np.ndarray, size: Size) -> np.ndarray:
    """Return ``image`` as a contiguous ``uint8`` array of shape ``size`` (height, width).

    Accepts gray (H, W), gray (H, W, 1), BGR (H, W, 3) or BGRA (H, W, 4) frames of any
    size and dtype uint8. Downscaling uses area averaging (no aliasing), upscaling linear.
    A frame resized to two sizes (the model's, the motion cue's) is converted once:
    ``to_gray`` first, then this on the gray frame (a resize only).
    """
    image = to_gray(image)
    height, width = size
    if image.shape == (height, width):
        return np.ascontiguousarray(image)
    shrinking = image.shape[0] >= height and image.shape[1] >= width
    if not shrinking:
        return cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR)
    return _shrink(image, height, width)


def _shrink(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Area averaging to ``height`` x ``width``. OpenCV's area resize is fast only where both
    factors are whole numbers: an axis with a whole factor (1280 -> 64) is shrunk first, on
    its own, then the other (720 -> 64) on the smaller image. Area averaging is separable,
    so the two steps give the one step's pixels, but for the first step's rounding (at most
    one grey level). A frame with no whole factor (Ped2's 360x240 to 64x64) takes one step."""
    rows, cols = image.shape[:2]
    if cols % width == 0 and rows % height and cols > width:
        image = cv2.resize(image, (width, rows), interpolation=cv2.INTER_AREA)
    elif rows % height == 0 and cols % width and rows > height:
        image = cv2.resize(image, (cols, height), interpolation=cv2.INTER_AREA)
    return cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)


def to_gray(image: np.ndarray) -> np.ndarray:
    """``image`` (gray, BGR or BGRA uint8, any size) as a 2-D gray uint8 frame, same size."""
    if image.dtype != np.uint8:
        raise ValueError(f"frame dtype must be uint8, got {image.dtype}")
    if image.ndim == 3:
        channels = image.shape[2]
        if channels == 1:
            image = image[:, :, 0]
        elif channels == 3:
            image = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
        elif channels == 4:
            image = cv2.cvtColor(image, cv2.COLOR_BGRA2GRAY)
        else:
            raise ValueError(f"frame must have 1, 3 or 4 channels, got {channels}")
    elif image.ndim != 2:
        raise ValueError(f"frame must be 2-D or 3-D, got shape {image.shape}")
    return image


def parse_size(text: str) -> Size:
    """Parse ``"64x80"`` (height x width) into ``(64, 80)``; raises ValueError."""
    parts = text.lower().replace(" ", "").split("x")
    if len(parts) != 2 or not all(p.isdigit() for p in parts):
        raise ValueError(f"size must look like HxW, e.g. 64x80, got {text!r}")
    height, width = int(parts[0]), int(parts[1])
    if not frame_size_fits(height, width):
        raise ValueError(f"size must be at least 16x16 and divisible by 4, got {text!r}")
    return height, width


def scaled(image: np.ndarray, max_width: int) -> np.ndarray:
    """``image`` scaled down (aspect kept) to at most ``max_width`` pixels wide."""
    height, width = image.shape[:2]
    if width <= max_width:
        return image
    new_height = max(1, round(height * max_width / width))
    return cv2.resize(image, (max_width, new_height), interpolation=cv2.INTER_AREA)
