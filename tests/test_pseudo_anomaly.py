"""Pseudo-anomalies: the pasted object is where its labels and boxes say, and nowhere else."""

from __future__ import annotations

import numpy as np
import pytest

from forecaster.offline.pseudo_anomaly import cut_object, paste_moving_object, pseudo_anomaly


def _walkers(frames: int = 90, rows: int = 120, cols: int = 160) -> np.ndarray:
    """A textured still background with two dark walkers crossing slowly."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:rows, 0:cols]
    ground = (150 + 30 * np.sin(xx / 9.0) * np.cos(yy / 13.0)).astype(np.float64)
    out = np.empty((frames, rows, cols), np.uint8)
    for t in range(frames):
        frame = ground + rng.normal(0, 2, ground.shape)
        for lane, speed in ((30, 1.0), (80, -0.8)):
            x = int(20 + speed * t) % (cols - 10)
            frame[lane:lane + 20, x:x + 8] = 40
        out[t] = np.clip(frame, 0, 255).astype(np.uint8)
    return out


def test_the_pasted_object_is_where_its_labels_and_boxes_say() -> None:
    frames = _walkers()
    pasted = pseudo_anomaly(frames, seed=5, speed=5.0)
    changed = np.abs(pasted.frames.astype(int) - frames.astype(int)) > 0
    labelled = np.flatnonzero(pasted.labels)
    assert len(labelled) >= 10
    # one run of frames: the object enters once and leaves once
    assert np.all(np.diff(labelled) == 1)
    for t in range(len(frames)):
        top, left, bottom, right = pasted.boxes[t]
        if top < 0:
            assert not changed[t].any(), t  # no object: the frame is untouched
            assert pasted.labels[t] == 0
            continue
        outside = changed[t].copy()
        outside[top:bottom, left:right] = False
        assert not outside.any(), t  # every changed pixel lies in the frame's box
        if pasted.labels[t]:
            assert changed[t, top:bottom, left:right].sum() >= 10, t
    # it moves at the speed asked for: the box centre of labelled frames, frame to frame
    boxes = pasted.boxes[labelled].astype(float)
    centres = np.stack([(boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2], 1)
    steps = np.hypot(*np.diff(centres[2:-2], axis=0).T)
    assert np.median(steps) == pytest.approx(5.0, abs=1.0)


def test_the_object_is_cut_from_a_moving_part_of_the_scene() -> None:
    frames = _walkers()
    obj, mask = cut_object(frames, np.random.default_rng(1), 24, 12)
    assert obj.shape == mask.shape == (24, 12)
    # a walker is dark (40) against a ground of 120-180: the mask holds the walker
    assert mask.sum() >= 40 and obj[mask].mean() < 80


def test_against_moves_along_the_given_direction() -> None:
    frames = _walkers()
    pasted = pseudo_anomaly(frames, seed=2, speed=4.0, against=(0.0, -1.0))
    rows = np.flatnonzero(pasted.labels)
    lefts = pasted.boxes[rows, 1]
    assert lefts[-1] < lefts[0]  # right to left
    assert np.ptp(pasted.boxes[rows, 0]) <= 2  # no vertical motion


def test_bad_arguments_are_refused() -> None:
    frames = _walkers(20)
    obj = np.zeros((4, 4), np.uint8)
    with pytest.raises(ValueError, match="start 25"):
        paste_moving_object(frames, obj=obj, mask=obj > 0, start=25, length=3,
                            origin=(0, 0), velocity=(1, 1))
    with pytest.raises(ValueError, match="uint8"):
        paste_moving_object(frames.astype(np.float32), obj=obj, mask=obj > 0, start=0,
                            length=3, origin=(0, 0), velocity=(1, 1))
