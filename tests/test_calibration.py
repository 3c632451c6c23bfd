"""Per-location calibration: windows, pooling, moving average, top-k, the card entry."""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import pytest

from forecaster.detection.calibration import (
    PATCH_STD_FLOOR,
    PatchPooler,
    PatchSettings,
    log_window_errors,
    parse_patch_calibration,
    patch_calibration,
    smooth,
    top_k_mean,
    window_starts,
)

pytestmark = pytest.mark.timeout(30)


def normal_footage(seed: int, videos: int = 3, frames: int = 60
                   ) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per video, ``(frames, predictions)`` (T, 32, 48) float32 of "normal footage": the left
    half busy (changes every frame), the right half still but for a little noise; each
    prediction (of the same frame) is off by noise, more on the busy half."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(videos):
        x = np.full((frames, 32, 48), 0.5, np.float32)
        x += rng.normal(0.0, 0.003, x.shape).astype(np.float32)
        x[:, :, :24] += rng.normal(0.0, 0.05, (frames, 32, 24)).astype(np.float32)
        error = rng.normal(0.0, 0.003, x.shape).astype(np.float32)
        error[:, :, :24] *= 10.0 * rng.lognormal(0.0, 0.3, (frames, 1, 1)).astype(np.float32)
        out.append((x, x + error))
    return out


def calibrate_footage(footage: list[tuple[np.ndarray, np.ndarray]],
                      settings: PatchSettings | None = None, **kwargs: Any) -> dict[str, Any]:
    maps = [np.square(p - x) for x, p in footage]
    return patch_calibration(maps, [x for x, _ in footage], settings, **kwargs)


def test_window_starts_cover_the_frame() -> None:
    assert window_starts(64, 12, 6).tolist() == [0, 6, 12, 18, 24, 30, 36, 42, 48, 52]
    assert window_starts(96, 12, 6).tolist() == list(range(0, 85, 6))
    assert window_starts(16, 16, 4).tolist() == [0]
    with pytest.raises(ValueError, match="does not fit"):
        window_starts(8, 12, 6)


def test_pooler_matches_brute_force() -> None:
    rng = np.random.default_rng(0)
    values = rng.random((3, 20, 30))
    pooler = PatchPooler(20, 30, patch=8, stride=5)
    rows, cols = window_starts(20, 8, 5), window_starts(30, 8, 5)
    assert pooler.grid == (len(rows), len(cols)) == (4, 6)
    expected = np.array([[[v[r : r + 8, c : c + 8].mean() for c in cols] for r in rows]
                         for v in values])
    np.testing.assert_allclose(pooler(values), expected, rtol=1e-12)
    np.testing.assert_allclose(pooler(values[1]), expected[1], rtol=1e-12)
    np.testing.assert_allclose(pooler(values[2].astype(np.float32)), expected[2], rtol=1e-6)
    assert (pooler(np.zeros((20, 30))) == 0.0).all()
    # one map (OpenCV's integral image) and a stack (NumPy's sums) agree, for a view too
    np.testing.assert_allclose(pooler(values[1]), pooler(values)[1], rtol=1e-12)
    wide = np.repeat(values[0], 2, axis=1)[:, ::2]  # not contiguous
    np.testing.assert_allclose(pooler(wide), expected[0], rtol=1e-12)
    image = (values[0] * 255).astype(np.uint8)
    np.testing.assert_allclose(pooler(image), pooler(image[None].astype(np.float64))[0],
                               rtol=1e-12)
    with pytest.raises(ValueError, match="20x30 frame"):
        pooler(np.zeros((20, 31)))


def test_smooth_top_k_and_log() -> None:
    x = np.array([[1.0], [3.0], [5.0]])
    np.testing.assert_allclose(smooth(x, 0.5), [[1.0], [2.0], [3.5]])
    assert smooth(x, 0.0) is x
    z = np.arange(12.0).reshape(1, 3, 4)
    assert top_k_mean(z, 1).tolist() == [11.0]
    assert top_k_mean(z, 3).tolist() == [10.0]
    assert top_k_mean(z, 50).tolist() == [5.5]
    pooler = PatchPooler(4, 4, 2, 2)
    assert log_window_errors(pooler, np.zeros((4, 4))).min() == pytest.approx(np.log(1e-10))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"patch": 0}, "patch must be an integer >= 1"),
        ({"stride": 2.0}, "stride must be an integer"),
        ({"top_k": True}, "top_k must be an integer"),
        ({"smoothing": 1.0}, r"smoothing must be in \[0, 1\)"),
        ({"global_weight": math.nan}, "global_weight must be a finite number >= 0"),
        ({"global_weight": 0.0, "motion_weight": 0.0}, "at least one weight above 0"),
    ],
)
def test_settings_validation(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        PatchSettings(**kwargs)


ALL_TERMS = PatchSettings(patch=8, stride=4, top_k=2, error_weight=0.5)


def test_calibration_entry_is_small_and_parses() -> None:
    footage = normal_footage(1)
    normal = [np.ones(60, dtype=bool) for _ in footage]
    normal[0][:10] = False
    entry = calibrate_footage(footage, ALL_TERMS, normal=normal)
    assert entry["frames"] == 3 * 60 - 10
    assert entry["grid"] == [7, 11] and (entry["height"], entry["width"]) == (32, 48)
    assert {k: entry[k] for k in ALL_TERMS.as_dict()} == ALL_TERMS.as_dict()
    assert set(entry["terms"]) == {"global", "motion", "error"}
    text = json.dumps(entry, allow_nan=False)
    assert len(text) < 8000
    parsed = parse_patch_calibration(json.loads(text))
    assert parsed.settings == ALL_TERMS and parsed.frames == entry["frames"]
    for term in ("motion", "error"):
        cal = parsed.terms[term]
        assert cal.grid_mean is not None and cal.grid_std is not None
        assert cal.grid_mean.shape == cal.grid_std.shape == (7, 11)
        assert cal.grid_std.min() >= PATCH_STD_FLOOR
        # the busy half moves and errs more than the still half
        assert cal.grid_mean[:, 0].min() > cal.grid_mean[:, -1].max() + 3.0
    assert parsed.terms["global"].grid_mean is None
    assert entry["score_std"] > 0
    # terms without weight are left out
    default = calibrate_footage(footage)
    assert set(default["terms"]) == {"global", "motion"}
    assert default["error_weight"] == 0.0


def test_calibration_rejects_too_little_or_mismatched_data() -> None:
    footage = normal_footage(2, videos=1, frames=3)
    with pytest.raises(ValueError, match="at least 2 normal frames, got 1"):
        calibrate_footage(footage, normal=[np.array([True, False, False])])
    with pytest.raises(ValueError, match="motion term needs at least 2 normal frames, got 1"):
        calibrate_footage(footage, normal=[np.array([True, False, True])])
    with pytest.raises(ValueError, match="at least one video"):
        patch_calibration([], [])
    x, p = footage[0]
    maps = [np.square(p - x)]
    with pytest.raises(ValueError, match=r"\(T, 32, 48\)"):
        patch_calibration([maps[0], maps[0][:, :, :40]], [x, x[:, :, :40]])
    with pytest.raises(ValueError, match="1 videos of error maps but 2 of frames"):
        patch_calibration(maps, [x, x])
    with pytest.raises(ValueError, match="frames of shape"):
        patch_calibration(maps, [x[:2]])
    with pytest.raises(ValueError, match="mask of 2 frames for 3"):
        patch_calibration(maps, [x], normal=[np.array([True, True])])


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"top_k": 0}, "top_k must be an integer >= 1"),
        ({"smoothing": "x"}, "'smoothing'.* must be a finite number"),
        ({"motion_weight": -1.0}, "motion_weight must be a finite number >= 0"),
        ({"height": 4}, "does not fit"),
        ({"frames": 1.5}, "'frames'.* must be an integer"),
        ({"score_std": -1.0}, "score_std'.* must be >= 0"),
        ({"terms": []}, r"\['terms'\] must be an object"),
    ],
)
def test_parse_names_the_bad_field(change: dict[str, Any], match: str) -> None:
    entry = calibrate_footage(normal_footage(3, videos=1), ALL_TERMS)
    entry.update(change)
    with pytest.raises(ValueError, match=match):
        parse_patch_calibration(entry)


@pytest.mark.parametrize(
    ("term", "change", "match"),
    [
        ("motion", {"log_mse_mean": [[0.0] * 3] * 2},
         r"\['motion'\]\['log_mse_mean'\] must be a 7x11 grid, got shape \(2, 3\)"),
        ("error", {"log_mse_std": "nope"}, r"\['error'\]\['log_mse_std'\] must be a grid of numbers"),
        ("error", {"log_mse_std": [[-1.0] * 11] * 7}, r"\['log_mse_std'\] must be >= 0"),
        ("global", {"std": math.inf}, r"\['global'\]\['std'\] must be a finite number"),
        ("global", {"mean": None}, r"\['global'\]\['mean'\] must be a finite number"),
    ],
)
def test_parse_names_the_bad_term_field(term: str, change: dict[str, Any], match: str) -> None:
    entry = calibrate_footage(normal_footage(3, videos=1), ALL_TERMS)
    entry["terms"][term].update(change)
    with pytest.raises(ValueError, match=match):
        parse_patch_calibration(entry)
    del entry["terms"][term]
    with pytest.raises(ValueError, match=rf"\['{term}'\] must be an object \(the {term} term"):
        parse_patch_calibration(entry)


def test_parse_missing_key_and_not_an_object() -> None:
    entry = calibrate_footage(normal_footage(3, videos=1))
    del entry["score_mean"]
    with pytest.raises(ValueError, match="missing 'score_mean'"):
        parse_patch_calibration(entry)
    with pytest.raises(ValueError, match="must be an object"):
        parse_patch_calibration([1, 2])


def test_motion_statistics_from_more_footage() -> None:
    footage = normal_footage(4, videos=1, frames=40)
    more = [x for x, _ in normal_footage(5, videos=3, frames=50)]
    entry = calibrate_footage(footage, motion_frames=more)
    alone = calibrate_footage(footage)
    assert entry["terms"]["motion"]["frames"] == 3 * 49  # every frame with a previous one
    assert alone["terms"]["motion"]["frames"] == 39
    assert entry["terms"]["global"] == alone["terms"]["global"]
    assert entry["terms"]["motion"]["log_mse_mean"] != alone["terms"]["motion"]["log_mse_mean"]
    masks = [np.arange(50) >= 10 for _ in more]
    assert calibrate_footage(footage, motion_frames=more, motion_normal=masks
                             )["terms"]["motion"]["frames"] == 3 * 40
    with pytest.raises(ValueError, match=r"motion footage must be \(T, 32, 48\)"):
        calibrate_footage(footage, motion_frames=[more[0][:, :, :40]])
    with pytest.raises(ValueError, match="3 videos of motion footage but 1 masks"):
        calibrate_footage(footage, motion_frames=more, motion_normal=masks[:1])
    with pytest.raises(ValueError, match="motion mask of 49 frames for 50"):
        calibrate_footage(footage, motion_frames=more[:1], motion_normal=[masks[0][1:]])
