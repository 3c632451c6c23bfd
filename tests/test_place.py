"""The normal motion per place: learned from normal footage, divided into the motion cue."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest

from forecaster.detection.flow import (
    PLACE_FLOOR,
    PLACE_POWER,
    MotionCue,
    PlaceNorm,
    learn_place,
    place_cues,
)
from forecaster.detection.fused import FusedSettings, fused_calibration, parse_fused_calibration
from forecaster.detection.scorer import cue_place


def _square_video(speed: int, row: int, frames: int = 14, size: tuple[int, int] = (240, 360),
                  start: int = 20) -> list[np.ndarray]:
    """A bright square crossing a gray frame at ``speed`` pixels a frame, ``row`` its top."""
    out = []
    for t in range(frames):
        image = np.full(size, 90, np.uint8)
        x = start + speed * t
        cv2.rectangle(image, (x, row), (x + 30, row + 40), 220, -1)
        out.append(image)
    return out


def _windows(frames: list[np.ndarray], place: PlaceNorm | None = None
             ) -> tuple[np.ndarray, np.ndarray]:
    """The cue of each frame and its window speeds, NaN for the first, as read live."""
    cue = MotionCue(120, place)
    values, windows = [], []
    for frame in frames:
        values.append(cue(frame))
        windows.append(np.full((29, 44), np.nan) if cue.windows is None else cue.windows)
    return np.asarray(values), np.stack(windows)


def test_a_place_where_things_move_fast_gets_the_larger_divisor() -> None:
    # normal footage: a fast walker along the top band, nothing anywhere else
    _, windows = _windows(_square_video(6, 20))
    place = learn_place([windows])
    rows, cols = place.divisors.shape
    assert (rows, cols) == (29, 44)  # the cue's window grid at 120 rows of a 240x360 frame
    top, bottom = place.divisors[3:8, 8:20], place.divisors[20:, :]
    # the fast band's divisor is the root of its 99th percentile; the still places get
    # the median place's (nothing moves there: the floor)
    assert top.max() > 2.0 * bottom.max()
    assert np.allclose(bottom, max(np.median(np.quantile(windows[1:], 0.99, axis=0)),
                                   PLACE_FLOOR) ** PLACE_POWER)


def test_the_same_speed_counts_for_more_where_nothing_usually_moves() -> None:
    _, normal = _windows(_square_video(6, 20))
    place = learn_place([normal])
    busy, _ = _windows(_square_video(6, 20), place)
    quiet, _ = _windows(_square_video(6, 170), place)
    plain_busy, _ = _windows(_square_video(6, 20))
    plain_quiet, _ = _windows(_square_video(6, 170))
    # with nothing learned, the cue is the speed wherever it is
    assert np.nanmedian(plain_quiet) == pytest.approx(np.nanmedian(plain_busy), rel=0.1)
    # divided by the normal motion of its place, the same walker counts for more where
    # walkers are not usually seen
    assert np.nanmedian(quiet) > 1.5 * np.nanmedian(busy)


def test_cues_from_stored_windows_equal_the_live_ones() -> None:
    _, normal = _windows(_square_video(6, 20))
    place = learn_place([normal])
    live, windows = _windows(_square_video(4, 120), place)
    offline = place_cues(windows.astype(np.float32), place)
    assert math.isnan(offline[0]) and math.isnan(live[0])
    np.testing.assert_allclose(offline[1:], live[1:], rtol=1e-5)
    plain, _ = _windows(_square_video(4, 120))
    np.testing.assert_allclose(place_cues(windows, None)[1:], plain[1:], rtol=1e-9)


def test_another_aspect_ratio_gets_the_divisors_resized() -> None:
    place = PlaceNorm(np.linspace(1.0, 2.0, 29 * 44).reshape(29, 44))
    resized = place.for_grid((29, 52))
    assert resized.shape == (29, 52)
    assert resized.min() >= 1.0 - 1e-9 and resized.max() <= 2.0 + 1e-9
    cue = MotionCue(120, place)
    values = [cue(frame) for frame in _square_video(6, 100, size=(720, 1280))]
    assert all(np.isfinite(values[1:]))


def test_the_card_keeps_the_place_and_refuses_junk_naming_the_field() -> None:
    rng = np.random.default_rng(0)
    place = PlaceNorm(rng.uniform(0.5, 2.0, (29, 44)))
    maps = [rng.random((30, 16, 16)).astype(np.float32)]
    cues = [rng.random(30)]
    entry = fused_calibration(maps, cues, FusedSettings(), place=place)
    parsed = parse_fused_calibration(entry).place
    assert parsed is not None
    np.testing.assert_allclose(parsed.divisors, place.divisors, rtol=1e-5)
    got = cue_place("auto", {"fused": entry})
    assert got is not None and got.divisors.shape == (29, 44)
    # a card of before (no place) scores with the plain cue
    assert cue_place("auto", {"fused": fused_calibration(maps, cues, FusedSettings())}) is None
    # no cue, no place: the model's term alone needs neither
    no_cue = fused_calibration(maps, None, FusedSettings(flow_weight=0.0), place=place)
    assert "place" not in no_cue
    count = 29 * 44
    for junk, named in (({"rows": 0}, "'rows'"), ({"divisors": [1.0, -1.0]}, "'divisors'"),
                        ({"power": 2}, "'power'"), ({"divisors": [10**400] * count}, "'divisors'"),
                        ({"divisors": [1e-300] * count}, "'divisors'"),
                        ({"divisors": ["1"] * count}, "'divisors'")):
        bad = {**entry, "place": {**entry["place"], **junk}}
        with pytest.raises(ValueError, match=named):
            parse_fused_calibration(bad)


def test_a_video_of_one_frame_does_not_set_the_grid() -> None:
    _, windows = _windows(_square_video(6, 20))
    alone = np.full((1, 1, 1), np.nan, np.float32)  # a one-image folder: no motion measured
    place = learn_place([alone, windows])
    assert place.divisors.shape == (29, 44)
    np.testing.assert_allclose(place.divisors, learn_place([windows]).divisors)


def test_learning_needs_frames_with_motion_measured() -> None:
    with pytest.raises(ValueError, match="at least 2 frames"):
        learn_place([np.full((3, 29, 44), np.nan, np.float32)])
    with pytest.raises(ValueError, match="at least one frame"):
        learn_place([])
