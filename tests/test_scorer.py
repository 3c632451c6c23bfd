"""Scorer: errors, calibrated score, hysteresis events and online adaptation."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from forecaster.detection.calibration import PatchSettings
from forecaster.detection.scorer import Scorer, ScoreResult, frame_errors
from tests.test_calibration import calibrate_footage, normal_footage

pytestmark = pytest.mark.timeout(30)

UNIT = {"log_mse_mean": 0.0, "log_mse_std": 1.0}  # score == ln(mse)


def test_frame_errors_of_known_arrays() -> None:
    zeros = np.zeros((64, 64), np.float32)
    half_ones = zeros.copy()
    half_ones[:32] = 1.0
    mse, psnr = frame_errors(zeros, half_ones)
    assert mse == pytest.approx(0.5, rel=1e-12)
    assert psnr == pytest.approx(10 * math.log10(2.0), rel=1e-9)

    mse, psnr = frame_errors(np.full((4, 5), 0.5, np.float32), np.full((4, 5), 0.25, np.float32))
    assert mse == pytest.approx(0.0625, rel=1e-7)
    assert psnr == pytest.approx(10 * math.log10(16.0), rel=1e-6)

    mse, psnr = frame_errors(zeros, zeros)
    assert mse == 0.0
    assert psnr == pytest.approx(100.0)  # mse floored at 1e-10


def test_frame_errors_matches_float64_reference() -> None:
    rng = np.random.default_rng(0)
    predicted = rng.random((120, 160), dtype=np.float32)
    actual = rng.random((120, 160), dtype=np.float32)
    expected = float(np.mean((predicted.astype(np.float64) - actual.astype(np.float64)) ** 2))
    mse, psnr = frame_errors(predicted, actual)
    assert isinstance(mse, float) and isinstance(psnr, float)
    assert mse == pytest.approx(expected, rel=1e-6)
    assert psnr == pytest.approx(-10 * math.log10(expected), rel=1e-6)


def test_frame_errors_rejects_mismatched_inputs() -> None:
    with pytest.raises(ValueError, match=r"differ in shape: \(4, 4\) vs \(4, 5\)"):
        frame_errors(np.zeros((4, 4), np.float32), np.zeros((4, 5), np.float32))
    with pytest.raises(ValueError, match="float arrays"):
        frame_errors(np.zeros((4, 4), np.uint8), np.zeros((4, 4), np.uint8))


def test_calibrated_score_math() -> None:
    mu, sigma = math.log(0.01), 0.5
    scorer = Scorer({"log_mse_mean": mu, "log_mse_std": sigma, "frames": 100})
    predicted = np.full((8, 8), 0.5, np.float32)
    actual = np.full((8, 8), 0.25, np.float32)
    before = actual.copy()
    result = scorer.score(predicted, actual)
    assert isinstance(result, ScoreResult)
    assert result.mse == pytest.approx(0.0625, rel=1e-7)
    assert result.psnr == pytest.approx(10 * math.log10(16.0), rel=1e-6)
    assert result.score == pytest.approx((math.log(0.0625) - mu) / sigma, rel=1e-6)
    assert result.anomaly is False and result.event is None and math.isnan(result.peak_score)
    np.testing.assert_array_equal(actual, before)  # inputs untouched

    # mse floored at 1e-10 before the log; sigma floored at 1e-3
    floored = Scorer({"log_mse_mean": 0.0, "log_mse_std": 0.0})
    assert floored.sigma == 1e-3
    assert floored.score_mse(0.0).score == pytest.approx(math.log(1e-10) / 1e-3)
    assert floored.score_mse(0.0).psnr == pytest.approx(100.0)


# score sequence (threshold_on=3, threshold_off=2, min_on_frames=2, min_off_frames=3)
SCORES = [0.5, 3.5, 1.0, 3.2, 4.0, 6.0, 1.0, 2.5, 1.0, 1.5, 0.5, 0.2, 3.1, 3.3, 9.0, 0.1]
#   idx:  0    1    2    3    4    5    6    7    8    9    10   11   12   13   14   15
# 1: first over threshold, 2 breaks the run; 3-4 two in a row -> start at 4 (peak 4.0);
# 5 peak 6.0; 6 starts the off run, 7 (>= off) breaks it; 8, 9, 10 -> end at 10 (peak 6.0);
# 12-13 -> start at 13 (peak 3.3); 14 raises the peak to 9.0.


def _run(scorer: Scorer, scores: list[float]) -> list[ScoreResult]:
    return [scorer.score_mse(math.exp(s)) for s in scores]


def test_hysteresis_events_at_exact_frames() -> None:
    scorer = Scorer(UNIT, threshold_on=3.0, threshold_off=2.0, min_on_frames=2, min_off_frames=3)
    results = _run(scorer, SCORES)
    for result, expected in zip(results, SCORES, strict=True):
        assert result.score == pytest.approx(expected, abs=1e-9)
    events = [(i, r.event, r.peak_score) for i, r in enumerate(results) if r.event is not None]
    assert events == [
        (4, "start", pytest.approx(4.0)),
        (10, "end", pytest.approx(6.0)),
        (13, "start", pytest.approx(3.3)),
    ]
    flagged = [i for i, r in enumerate(results) if r.anomaly]
    assert flagged == [4, 5, 6, 7, 8, 9, 13, 14, 15]
    assert [r.peak_score for r in results[4:10]] == pytest.approx([4.0, 6.0, 6.0, 6.0, 6.0, 6.0])
    assert results[14].peak_score == results[15].peak_score == pytest.approx(9.0)
    assert all(math.isnan(r.peak_score) for r in results[:4] + results[11:13])
    assert scorer.anomaly is True and scorer.peak_score == pytest.approx(9.0)


def _timed(scorer: Scorer, scores: list[float]) -> list[ScoreResult]:
    """Frame i at time i seconds."""
    return [scorer.score_mse(math.exp(s), ts=float(i)) for i, s in enumerate(scores)]


def test_merge_gap_merges_events_closer_than_it() -> None:
    settings = {"threshold_on": 3.0, "threshold_off": 2.0, "min_on_frames": 2,
                "min_off_frames": 3}
    # settled at 10 (time 10 s), started again at 13: within a gap of 3.5 s, one event
    merged = _timed(Scorer(UNIT, merge_gap_s=3.5, **settings), SCORES)
    events = [(i, r.event, r.peak_score) for i, r in enumerate(merged) if r.event is not None]
    assert events == [(4, "start", pytest.approx(4.0))]
    assert [i for i, r in enumerate(merged) if r.anomaly] == list(range(4, 16))
    assert merged[15].peak_score == pytest.approx(9.0)
    # a gap of 1.5 s: the event ends at 12 (1.5 s after it settled; its score there, 3.1,
    # already counts towards the next start) and the next one starts at 13, as with no gap
    apart = _timed(Scorer(UNIT, merge_gap_s=1.5, **settings), SCORES)
    events = [(i, r.event, r.peak_score) for i, r in enumerate(apart) if r.event is not None]
    assert events == [(4, "start", pytest.approx(4.0)), (12, "end", pytest.approx(6.0)),
                      (13, "start", pytest.approx(3.3))]
    assert [i for i, r in enumerate(apart) if r.anomaly] == [*range(4, 12), 13, 14, 15]
    # no gap, or frames without a time: the events of test_hysteresis_events_at_exact_frames
    for scorer, results in ((Scorer(UNIT, **settings), None),
                            (Scorer(UNIT, merge_gap_s=3.5, **settings), _run)):
        got = results(scorer, SCORES) if results else _timed(scorer, SCORES)
        assert [(i, r.event) for i, r in enumerate(got) if r.event] == [
            (4, "start"), (10, "end"), (13, "start")]


def test_merge_gap_ends_an_event_whose_clock_went_back_after_a_whole_gap() -> None:
    scorer = Scorer(UNIT, min_on_frames=1, min_off_frames=1, merge_gap_s=2.0)
    times = [100.0, 101.0, 50.0, 51.0, 52.0]  # settled at 101, the clock steps back to 50
    results = [scorer.score_mse(math.exp(s), ts=t) for s, t in zip([5, 0, 0, 0, 0], times,
                                                                   strict=True)]
    assert [r.event for r in results] == ["start", None, None, None, "end"]


def test_single_frame_thresholds_and_boundaries() -> None:
    # min frames 1: on at the first score >= on, off at the first score < off
    scorer = Scorer(
        {"log_mse_mean": 0.0, "log_mse_std": 0.5},
        threshold_on=4.0,
        threshold_off=4.0,
        min_on_frames=1,
        min_off_frames=1,
    )
    # score = ln(mse) / 0.5; mse = exp(2) gives exactly 4.0 up to rounding: use margins
    results = [scorer.score_mse(math.exp(s / 2)) for s in [3.9, 4.1, 4.05, 3.99, 5.0]]
    assert [r.event for r in results] == [None, "start", None, "end", "start"]
    assert [r.anomaly for r in results] == [False, True, True, False, True]


def test_results_are_causal() -> None:
    full = _run(Scorer(UNIT, min_off_frames=3), SCORES)
    prefix = _run(Scorer(UNIT, min_off_frames=3), SCORES[:9])
    assert prefix == full[:9]


def test_nan_error_leaves_state_unchanged() -> None:
    scorer = Scorer(UNIT, min_on_frames=2, min_off_frames=2)
    first = scorer.score_mse(math.exp(3.5))
    nan_result = scorer.score_mse(math.nan)
    second = scorer.score_mse(math.exp(3.5))
    assert first.event is None and math.isnan(nan_result.score) and nan_result.event is None
    assert second.event == "start"
    assert math.isnan(scorer.score_mse(math.nan).psnr)
    assert scorer.anomaly is True


def test_reset_clears_hysteresis_keeps_calibration() -> None:
    scorer = Scorer(UNIT, adapt_rate=0.5, min_on_frames=1)
    scorer.score_mse(math.exp(1.0))
    mu = scorer.mu
    assert mu == pytest.approx(0.5)
    assert scorer.score_mse(math.exp(10.0)).event == "start"
    scorer.reset()
    assert scorer.anomaly is False and math.isnan(scorer.peak_score)
    assert scorer.mu == mu
    assert scorer.score_mse(math.exp(0.5)).event is None  # no "end" after a reset


def test_adapt_rate_follows_normal_frames_only() -> None:
    base = math.log(1e-3)
    scorer = Scorer(
        {"log_mse_mean": base, "log_mse_std": 0.5},
        adapt_rate=0.1,
        min_on_frames=2,
        min_off_frames=2,
    )
    level = base + 1.0  # new scene: ln(mse) one unit higher, score 2 (normal)
    first = scorer.score_mse(math.exp(level))
    assert first.score == pytest.approx(2.0)
    assert scorer.mu == pytest.approx(base + 0.1)
    for _ in range(60):
        scorer.score_mse(math.exp(level))
    assert scorer.mu == pytest.approx(level, abs=0.01)
    assert scorer.score_mse(math.exp(level)).score == pytest.approx(0.0, abs=0.2)

    mu, sigma = scorer.mu, scorer.sigma
    spike = scorer.score_mse(math.exp(level + 5.0))  # over threshold, not yet flagged
    assert spike.anomaly is False and spike.score >= 3.0
    assert (scorer.mu, scorer.sigma) == (mu, sigma)
    assert scorer.score_mse(math.exp(level + 5.0)).event == "start"
    low = scorer.score_mse(math.exp(level))  # back to normal but still flagged
    assert low.anomaly is True
    assert (scorer.mu, scorer.sigma) == (mu, sigma)
    end = scorer.score_mse(math.exp(level))
    assert end.event == "end" and end.anomaly is False
    assert scorer.mu != mu  # the first unflagged frame adapts again

    fixed = Scorer({"log_mse_mean": base, "log_mse_std": 0.5})
    for _ in range(10):
        fixed.score_mse(math.exp(level))
    assert fixed.mu == base and fixed.sigma == 0.5


def test_score_reuses_buffer_and_checks_shapes() -> None:
    scorer = Scorer(UNIT)
    rng = np.random.default_rng(1)
    a, b = rng.random((2, 16, 16), dtype=np.float32)
    r1 = scorer.score(a, b)
    r2 = scorer.score(a, b)
    assert r1.mse == r2.mse == pytest.approx(frame_errors(a, b)[0], rel=1e-12)
    c, d = rng.random((2, 8, 8), dtype=np.float32)
    assert scorer.score(c, d).mse == pytest.approx(frame_errors(c, d)[0], rel=1e-12)
    with pytest.raises(ValueError, match="differ in shape"):
        scorer.score(a, d)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (
            {"threshold_on": 2.0, "threshold_off": 2.5},
            "threshold_off must be <= threshold_on .*2.5",
        ),
        ({"threshold_on": math.nan}, "threshold_on must be finite"),
        ({"threshold_off": "2"}, "threshold_off must be a number"),
        ({"min_on_frames": 0}, "min_on_frames must be an integer >= 1, got 0"),
        ({"min_off_frames": 2.5}, "min_off_frames must be an integer >= 1, got 2.5"),
        ({"adapt_rate": -0.1}, r"adapt_rate must be in \[0, 1\), got -0.1"),
        ({"adapt_rate": 1.0}, "adapt_rate must be in"),
        ({"merge_gap_s": -1.0}, "merge_gap_s must be a finite number >= 0, got -1.0"),
        ({"merge_gap_s": math.inf}, "merge_gap_s must be a finite number"),
    ],
)
def test_argument_validation(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        Scorer(UNIT, **kwargs)


@pytest.mark.parametrize(
    ("calibration", "match"),
    [
        ({"log_mse_std": 1.0}, "missing 'log_mse_mean'"),
        ({"log_mse_mean": 0.0}, "missing 'log_mse_std'"),
        (
            {"log_mse_mean": "x", "log_mse_std": 1.0},
            r"calibration\['log_mse_mean'\] must be a number",
        ),
        ({"log_mse_mean": 0.0, "log_mse_std": math.inf}, "must be finite"),
        ({"log_mse_mean": 0.0, "log_mse_std": -1.0}, "must be >= 0"),
    ],
)
def test_calibration_validation(calibration: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        Scorer(calibration)


# --- patch mode --------------------------------------------------------------------------

PATCH = PatchSettings(patch=8, stride=4, top_k=2)


def _patch_calibration(settings: PatchSettings = PATCH, seed: int = 7
                       ) -> tuple[dict[str, Any], list[tuple[np.ndarray, np.ndarray]]]:
    """A calibration with a patch entry made from "normal footage", and the footage."""
    footage = normal_footage(seed, videos=2, frames=80)
    entry = calibrate_footage(footage, settings)
    return {"log_mse_mean": -7.0, "log_mse_std": 1.0, "frames": 160, "patch": entry}, footage


def test_mode_auto_picks_patch_when_the_card_has_it() -> None:
    calibration, _ = _patch_calibration()
    assert Scorer(calibration).mode == "patch"
    assert Scorer(calibration, mode="global").mode == "global"
    assert Scorer(UNIT).mode == "global"
    with pytest.raises(ValueError, match=r"needs calibration\['patch'\]"):
        Scorer(UNIT, mode="patch")
    with pytest.raises(ValueError, match="scorer mode must be one of auto, global, patch"):
        Scorer(calibration, mode="local")
    broken = {**calibration, "patch": {**calibration["patch"], "top_k": 0}}
    with pytest.raises(ValueError, match="top_k must be an integer >= 1"):
        Scorer(broken)


@pytest.mark.parametrize(
    "settings",
    [PATCH, PatchSettings(patch=8, stride=4, top_k=3, smoothing=0.0, error_weight=1.0),
     PatchSettings(patch=6, stride=3, global_weight=0.0, motion_weight=0.0, error_weight=2.0)],
)
def test_patch_scores_of_normal_footage_are_standardised(settings: PatchSettings) -> None:
    calibration, footage = _patch_calibration(settings)
    scorer = Scorer(calibration)
    scores = []
    for frames, predictions in footage:
        scorer.reset()  # each video's moving averages start afresh, as in the calibration
        scores += [scorer.score(p, x).score for x, p in zip(frames, predictions, strict=True)]
    # the scorer reproduces the calibration's own pipeline: mean 0, spread 1 on its footage
    assert np.mean(scores) == pytest.approx(0.0, abs=1e-4)
    assert np.std(scores, ddof=1) == pytest.approx(1.0, abs=1e-4)


def test_small_local_anomaly_stands_out_only_in_patch_mode() -> None:
    calibration, _ = _patch_calibration()
    frames, predictions = normal_footage(8, videos=1, frames=30)[0]
    patch, whole = Scorer(calibration), Scorer(calibration, mode="global")
    normal = [patch.score(p, x).score for x, p in zip(frames, predictions, strict=True)]
    odd = frames.copy()
    odd[20:, 20:24, 36:40] = 0.9  # something appears where nothing moves (the still half)
    patch.reset()
    moved = [patch.score(p, x) for x, p in zip(odd, predictions, strict=True)]
    assert max(normal) < 5.0
    assert moved[20].score > 10.0 and moved[21].score > 5.0
    # published mse and psnr stay those of the whole frame
    error = np.square(predictions[20] - odd[20], dtype=np.float64)
    assert moved[20].mse == pytest.approx(float(error.mean()), rel=1e-5)
    assert moved[20].mse == whole.score(predictions[20], odd[20]).mse
    # the whole frame's error hardly moves: the busy half dominates it
    rise = whole.score(predictions[20], odd[20]).score - whole.score(predictions[20],
                                                                     frames[20]).score
    assert 0.0 < rise < 2.0


def test_patch_mode_state_reset_and_causality() -> None:
    calibration, footage = _patch_calibration()
    frames, predictions = footage[1]
    pairs = list(zip(predictions[:30], frames[:30], strict=True))
    full = Scorer(calibration, min_off_frames=3)
    results = [full.score(p, x) for p, x in pairs]
    prefix = Scorer(calibration, min_off_frames=3)
    assert [prefix.score(p, x) for p, x in pairs[:12]] == results[:12]
    # after a reset the scorer starts afresh: as a new scorer would
    full.reset()
    fresh = Scorer(calibration, min_off_frames=3)
    for p, x in pairs[5:8]:
        assert full.score(p, x) == fresh.score(p, x)
    # the past counts (moving averages, previous frame): mid-stream differs from fresh
    assert results[6].score != Scorer(calibration).score(*pairs[6]).score


def test_patch_mode_checks_frames_and_adapts_the_statistic() -> None:
    calibration, footage = _patch_calibration()
    frames, predictions = footage[0]
    scorer = Scorer(calibration, adapt_rate=0.1)
    with pytest.raises(ValueError, match="needs the frames, not their mse"):
        scorer.score_mse(0.1)
    with pytest.raises(ValueError, match=r"made for 32x48 frames"):
        scorer.score(np.zeros((32, 40), np.float32), np.zeros((32, 40), np.float32))
    mu = scorer.mu
    assert mu == calibration["patch"]["score_mean"]
    scorer.score(predictions[3], frames[3])
    assert scorer.mu != mu
    assert set(scorer.calibration()) == {"score_mean", "score_std"}
    assert set(Scorer(UNIT).calibration()) == {"log_mse_mean", "log_mse_std"}


def test_patch_scores_standardised_with_motion_from_more_footage() -> None:
    footage = normal_footage(7, videos=2, frames=80)
    more = [x for x, _ in normal_footage(11, videos=3, frames=60)]
    calibration = {"patch": calibrate_footage(footage, PATCH, motion_frames=more)}
    scorer = Scorer(calibration)
    scores = []
    for frames, predictions in footage:
        scorer.reset()
        scores += [scorer.score(p, x).score for x, p in zip(frames, predictions, strict=True)]
    assert np.mean(scores) == pytest.approx(0.0, abs=1e-4)
    assert np.std(scores, ddof=1) == pytest.approx(1.0, abs=1e-4)
