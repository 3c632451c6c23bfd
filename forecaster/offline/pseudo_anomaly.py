"""Pseudo-anomalies: a moving object pasted into normal footage, with its labels.

A labelled test set is small; normal footage is plentiful. Pasting an object of the scene
into a normal video, moving at an unusual speed or against the usual direction, makes a
labelled anomaly from footage that no model was trained on. The detection protocol
(``benchmarks/ped2.py``) pools such videos with the real test videos.

- The object is cut from the same video: the place of one frame that differs most from
  the video's median background, with its mask (the pixels that differ), so it looks
  like what the camera sees.
- It enters at ``start`` and moves ``velocity`` pixels a frame (rows, columns) in a
  straight line for ``length`` frames, or until it leaves the frame.
- A frame is labelled 1 when at least ``min_visible`` of the object's pixels are in it;
  ``boxes`` gives each frame's bounding box of the pasted pixels.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: a pixel belongs to the object when it differs from the background by more than this
MASK_THRESHOLD = 25
#: share of the object's pixels that must be in the frame for it to count as there
MIN_VISIBLE = 0.25


@dataclass(frozen=True)
class PastedObject:
    """The footage with the object pasted, and where it is."""

    frames: np.ndarray  #: (T, H, W) uint8
    labels: np.ndarray  #: (T,) uint8, 1 where the object is in the frame
    #: (T, 4) int: top, left, bottom, right (exclusive) of the pasted pixels; -1 if none
    boxes: np.ndarray


def cut_object(frames: np.ndarray, rng: np.random.Generator, height: int, width: int
               ) -> tuple[np.ndarray, np.ndarray]:
    """An object of ``frames`` (T, H, W) uint8: a ``height`` x ``width`` crop around the
    place of one frame that differs most from the median background, and its boolean
    mask. A still video gives an empty mask."""
    import cv2

    count, rows, cols = frames.shape
    step = max(1, count // 50)
    background = np.median(frames[::step], axis=0).astype(np.uint8)
    best, best_frame, best_at = -1.0, 0, (0, 0)
    for t in rng.permutation(count)[:20]:
        diff = cv2.absdiff(frames[t], background)
        blurred = cv2.blur(diff, (max(1, width), max(1, height)))
        y, x = np.unravel_index(int(np.argmax(blurred)), blurred.shape)
        if blurred[y, x] > best:
            best, best_frame, best_at = float(blurred[y, x]), int(t), (int(y), int(x))
    top = int(np.clip(best_at[0] - height // 2, 0, rows - height))
    left = int(np.clip(best_at[1] - width // 2, 0, cols - width))
    crop = frames[best_frame, top:top + height, left:left + width].copy()
    ground = background[top:top + height, left:left + width]
    mask = cv2.absdiff(crop, ground) > MASK_THRESHOLD
    mask = cv2.morphologyEx(mask.astype(np.uint8), cv2.MORPH_CLOSE,
                            np.ones((3, 3), np.uint8)).astype(bool)
    return crop, mask


def paste_moving_object(
    frames: np.ndarray,
    *,
    obj: np.ndarray,
    mask: np.ndarray,
    start: int,
    length: int,
    origin: tuple[float, float],
    velocity: tuple[float, float],
) -> PastedObject:
    """``frames`` (T, H, W) uint8 with ``obj`` (h, w) pasted where ``mask`` is set, its
    top-left corner at ``origin`` (row, column; may lie outside the frame) at frame
    ``start`` and moving ``velocity`` pixels a frame for ``length`` frames."""
    if frames.ndim != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be (T, H, W) uint8, got {frames.shape} {frames.dtype}")
    if obj.shape != mask.shape or obj.ndim != 2:
        raise ValueError(f"object {obj.shape} and mask {mask.shape} must be one 2-D shape")
    if length < 1 or not 0 <= start < len(frames):
        raise ValueError(f"start {start} and length {length} must lie in the video's "
                         f"{len(frames)} frames")
    out = frames.copy()
    count, rows, cols = frames.shape
    h, w = obj.shape
    total = int(mask.sum())
    labels = np.zeros(count, np.uint8)
    boxes = np.full((count, 4), -1, np.int64)
    for t in range(start, min(count, start + length)):
        y = round(origin[0] + velocity[0] * (t - start))
        x = round(origin[1] + velocity[1] * (t - start))
        top, left = max(0, y), max(0, x)
        bottom, right = min(rows, y + h), min(cols, x + w)
        if bottom <= top or right <= left:
            continue
        part = mask[top - y:bottom - y, left - x:right - x]
        if not part.any():
            continue
        region = out[t, top:bottom, left:right]
        region[part] = obj[top - y:bottom - y, left - x:right - x][part]
        ys, xs = np.nonzero(part)
        boxes[t] = (top + ys.min(), left + xs.min(), top + ys.max() + 1, left + xs.max() + 1)
        if total and part.sum() >= MIN_VISIBLE * total:
            labels[t] = 1
    return PastedObject(out, labels, boxes)


def pseudo_anomaly(frames: np.ndarray, seed: int, *, speed: float = 6.0,
                   against: tuple[float, float] | None = None) -> PastedObject:
    """One pseudo-anomaly in ``frames`` (T, H, W) uint8, drawn from ``seed``: an object of
    the video (a sixth of the frame's height) crossing the frame in a straight line at
    ``speed`` pixels a frame, from the middle third of the video on. ``against``: a unit
    direction (rows, columns) to move along (say, against the crowd's); default a random
    one."""
    rng = np.random.default_rng(seed)
    count, rows, cols = frames.shape
    height = max(4, rows // 6)
    width = max(3, height // 2)
    obj, mask = cut_object(frames, rng, height, width)
    if against is None:
        angle = rng.uniform(0, 2 * np.pi)
        direction = (float(np.sin(angle)), float(np.cos(angle)))
    else:
        norm = float(np.hypot(*against)) or 1.0
        direction = (against[0] / norm, against[1] / norm)
    velocity = (direction[0] * speed, direction[1] * speed)
    # enter where the line through the frame's middle, in that direction, meets the edge
    centre = np.array([rows / 2 - height / 2, cols / 2 - width / 2])
    reach = 0.5 * (abs(direction[0]) * rows + abs(direction[1]) * cols) + max(height, width)
    origin = centre - reach * np.array(direction)
    length = int(np.ceil(2 * reach / speed)) + 1
    start = int(rng.integers(count // 3, max(count // 3 + 1, count - length // 2)))
    return paste_moving_object(frames, obj=obj, mask=mask, start=start, length=length,
                               origin=(float(origin[0]), float(origin[1])), velocity=velocity)


__all__ = ["PastedObject", "cut_object", "paste_moving_object", "pseudo_anomaly"]
