"""The fused scorer mode: its calibration agrees with the scorer frame by frame, the motion
cue measures speed, and a card that cannot serve the mode is refused."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest

from forecaster.detection.flow import MotionCue, cue_size, flow_scores
from forecaster.detection.fused import FusedSettings, fused_calibration, parse_fused_calibration
from forecaster.detection.scorer import Scorer, cue_height, resolve_mode


def _videos(seed: int = 0) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(predicted, actual, cues) of two short videos of 32x32 frames in [0, 1]."""
    rng = np.random.default_rng(seed)
    out = []
    for length in (40, 55):
        actual = rng.random((length, 32, 32), dtype=np.float32)
        noise = rng.normal(0, 0.05, actual.shape).astype(np.float32)
        predicted = np.clip(actual + noise * rng.random((length, 1, 1)), 0, 1).astype(np.float32)
        cues = rng.gamma(2.0, 0.5, length)
        cues[0] = math.nan  # the first frame of a stream has no cue
        out.append((predicted, actual, cues))
    return out


@pytest.mark.parametrize("settings", [
    FusedSettings(),
    FusedSettings(error="worst", top_k=3, smoothing=0.5, flow_weight=2.0),
    FusedSettings(smoothing=0.0, flow_weight=0.0),
    FusedSettings(error_weight=0.0, flow_weight=1.0, smoothing=0.85),
])
def test_scorer_reads_about_0_plus_minus_1_on_its_calibration_frames(
        settings: FusedSettings) -> None:
    videos = _videos()
    entry = fused_calibration([np.square(p - a) for p, a, _ in videos],
                              [c for _, _, c in videos], settings)
    scorer = Scorer({"fused": entry})
    assert scorer.mode == "fused"
    scores = []
    for predicted, actual, cues in videos:
        scorer.reset()  # a new stream: the moving averages start afresh, as in calibration
        scores += [scorer.score(p, a, float(c)).score for p, a, c in
                   zip(predicted, actual, cues, strict=True)]
    # the calibration measured exactly the statistic the scorer computes, frame by frame
    assert abs(np.mean(scores)) < 1e-4 and abs(np.std(scores, ddof=1) - 1.0) < 1e-4


def test_flow_term_follows_the_cue_and_a_missing_cue_changes_nothing() -> None:
    videos = _videos(1)
    settings = FusedSettings(error_weight=0.0, smoothing=0.0)
    entry = fused_calibration([np.square(p - a) for p, a, _ in videos],
                              [c for _, _, c in videos], settings)
    scorer = Scorer({"fused": entry}, threshold_on=100.0, threshold_off=50.0)
    frame = np.full((32, 32), 0.5, np.float32)
    assert scorer.score(frame, frame, math.nan).score == pytest.approx(
        -entry["score_mean"] / entry["score_std"])  # no cue yet: the term is 0
    slow = scorer.score(frame, frame, 0.1).score
    held = scorer.score(frame, frame, math.nan).score  # no cue: the average holds
    fast = scorer.score(frame, frame, 5.0).score
    assert held == pytest.approx(slow) and fast > slow + 1.0


def test_auto_prefers_fused_and_cue_height_follows_the_mode() -> None:
    videos = _videos()
    entry = fused_calibration([np.square(p - a) for p, a, _ in videos],
                              [c for _, _, c in videos], FusedSettings(cue_height=96))
    calibration = {"log_mse_mean": -5.0, "log_mse_std": 1.0, "frames": 10, "fused": entry}
    assert resolve_mode("auto", calibration) == "fused"
    assert cue_height("auto", calibration) == 96
    assert cue_height("global", calibration) is None
    no_flow = {**calibration, "fused": {**entry, "flow_weight": 0.0}}
    assert cue_height("auto", no_flow) is None  # no flow term: capture makes no cue
    assert resolve_mode("auto", {"log_mse_mean": -5.0, "log_mse_std": 1.0}) == "global"
    with pytest.raises(ValueError, match="mode 'fused' needs calibration"):
        Scorer({"log_mse_mean": -5.0, "log_mse_std": 1.0}, mode="fused")


@pytest.mark.parametrize(("change", "named"), [
    ({"top_k": 2.5}, "top_k"),
    ({"error": "median"}, "error"),
    ({"smoothing": 1.0}, "smoothing"),
    ({"cue_height": 4}, "cue_height"),
    ({"score_std": "x"}, "score_std"),
    ({"terms": {"error": {"mean": 0.0, "std": 1.0}}}, "flow"),
])
def test_junk_in_the_card_is_refused_naming_the_field(change: dict, named: str) -> None:
    videos = _videos()
    entry = fused_calibration([np.square(p - a) for p, a, _ in videos],
                              [c for _, _, c in videos], FusedSettings())
    with pytest.raises(ValueError, match=named):
        parse_fused_calibration({**entry, **change})


def _moving_square(speed: int, size: tuple[int, int] = (240, 360), frames: int = 12
                   ) -> list[np.ndarray]:
    out = []
    for t in range(frames):
        image = np.full(size, 90, np.uint8)
        x = 20 + speed * t
        cv2.rectangle(image, (x, 100), (x + 30, 150), 220, -1)
        out.append(cv2.cvtColor(image, cv2.COLOR_GRAY2BGR))
    return out


def test_motion_cue_measures_speed_at_its_own_size() -> None:
    assert cue_size(240, 360, 120) == (120, 180)  # aspect ratio kept
    assert cue_size(48, 64, 120) == (48, 64)  # never upscaled
    cue = MotionCue(120)
    values = [cue(image) for image in _moving_square(4)]
    assert math.isnan(values[0]) and all(v > 0 for v in values[1:])
    fast = MotionCue(120)
    faster = [fast(image) for image in _moving_square(16)]
    assert np.median(faster[2:]) > 2.5 * np.median(values[2:])
    # up to about 8 pixels a frame at the cue's size (16 at 240 rows) the cue is the speed
    for speed in (2, 4, 8, 16):
        motion = MotionCue(120)
        measured = np.median([motion(image) for image in _moving_square(speed)][2:])
        assert measured == pytest.approx(speed / 2, rel=0.1)
    still = MotionCue(120)
    frame = _moving_square(0)[0]
    assert still(frame) != still(frame) and still(frame) < 0.05  # NaN, then about 0


def test_motion_cue_resize_cuts_the_columns_a_whole_factor_leaves_over() -> None:
    from forecaster.sources.preprocess import to_gray_resized

    cue = MotionCue(120)
    rows, cols = np.mgrid[0:720, 0:1280]
    image = ((rows * 0.2 + cols * 0.15) % 256).astype(np.uint8)  # smooth ramps
    small = cue.resize(image)
    assert small.shape == cue_size(720, 1280, 120) == (120, 213)
    # 1278 of the 1280 columns, 6x6 blocks: the frame at the cue's size, a third of a
    # pixel off at most
    one_step = to_gray_resized(image, (120, 213))
    assert np.abs(small.astype(int) - one_step).mean() < 1.0
    np.testing.assert_array_equal(small, cv2.resize(image[:, 1:1279], (213, 120),
                                                    interpolation=cv2.INTER_AREA))
    # whole factors both ways (Ped2's 240x360): the one step, unchanged
    ped2 = image[:240, :360]
    np.testing.assert_array_equal(cue.resize(ped2), to_gray_resized(ped2, (120, 180)))
    # colour frames are converted to gray first
    colour = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    np.testing.assert_array_equal(cue.resize(colour), small)


def test_flow_baseline_is_causal() -> None:
    frames = np.stack([cv2.cvtColor(f, cv2.COLOR_BGR2GRAY) for f in _moving_square(6)])
    full = flow_scores(frames)
    assert math.isnan(full[0])
    np.testing.assert_allclose(flow_scores(frames[:7])[1:], full[1:7])


@pytest.mark.parametrize("settings", [
    FusedSettings(),
    FusedSettings(error="worst", flow_weight=2.0),
    FusedSettings(flow_weight=0.0),
    FusedSettings(error_weight=0.0),
])
def test_terms_log_holds_each_terms_own_standardised_value(settings: FusedSettings) -> None:
    """Whatever the weights, the scorer measures both terms; the score is their weighed sum
    standardised (what eval's model-term and cue rows rest on)."""
    videos = _videos(2)
    entry = fused_calibration([np.square(p - a) for p, a, _ in videos],
                              [c for _, _, c in videos], settings)
    scorer = Scorer({"fused": entry})
    scorer.terms_log = []
    predicted, actual, cues = videos[1]
    scores = [scorer.score(p, a, float(c)).score
              for p, a, c in zip(predicted, actual, cues, strict=True)]
    terms = np.asarray(scorer.terms_log)
    assert terms.shape == (len(scores), 2)
    assert np.isfinite(terms[:, 0]).all()
    assert math.isnan(terms[0, 1]) and np.isfinite(terms[1:, 1]).all()  # frame 0: no cue
    flow = np.nan_to_num(terms[:, 1]) if settings.flow_weight else 0.0
    expected = (settings.error_weight * terms[:, 0] + settings.flow_weight * flow
                - entry["score_mean"]) / entry["score_std"]
    np.testing.assert_allclose(scores, expected, rtol=1e-9, atol=1e-9)
    # each term alone reads about 0 +- 1 on its calibration frames, as the score does
    if settings.flow_weight == 0:
        return
    scorer.terms_log = []
    for predicted, actual, cues in videos:
        scorer.reset()
        for p, a, c in zip(predicted, actual, cues, strict=True):
            scorer.score(p, a, float(c))
    terms = np.asarray(scorer.terms_log)
    for column in range(2):
        values = terms[:, column][np.isfinite(terms[:, column])]
        assert abs(values.mean()) < 1e-6 and abs(values.std(ddof=1) - 1) < 1e-6
