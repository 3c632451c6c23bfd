from __future__ import annotations

import time

import numpy as np
import pytest

from forecaster.sources.synthetic import (
    BLOCK,
    GAP,
    MAX_EPISODE,
    MIN_EPISODE,
    AnomalyKind,
    SyntheticScene,
)


def test_frames_are_gray_uint8_of_the_requested_size() -> None:
    scene = SyntheticScene(seed=1, width=96, height=72)
    frame = scene.frame(0)
    assert frame.dtype == np.uint8
    assert frame.shape == (72, 96)
    assert frame.flags.c_contiguous
    assert scene.background.std() > 10  # textured, not flat


def test_same_seed_gives_the_same_frames_and_labels() -> None:
    a = SyntheticScene(seed=7, anomaly_rate=0.05)
    b = SyntheticScene(seed=7, anomaly_rate=0.05)
    indices = [0, 1, 2, 500, 1023, 1024, 5000, 123_456]
    for i in reversed(indices):  # random access in a different order than a
        b.frame(i)
    for i in indices:
        np.testing.assert_array_equal(a.frame(i), b.frame(i))
        assert a.label(i) == b.label(i)
    np.testing.assert_array_equal(a.labels(5000), b.labels(5000))
    assert a.episodes(5000) == b.episodes(5000)


def test_different_seed_gives_different_frames_and_schedule() -> None:
    a = SyntheticScene(seed=1, anomaly_rate=0.05)
    b = SyntheticScene(seed=2, anomaly_rate=0.05)
    assert not np.array_equal(a.frame(10), b.frame(10))
    assert not np.array_equal(a.labels(3000), b.labels(3000))


def test_frame_is_a_pure_function_of_the_index() -> None:
    scene = SyntheticScene(seed=3, anomaly_rate=0.05)
    sequential = [scene.frame(i) for i in range(2000, 2040)]
    fresh = SyntheticScene(seed=3, anomaly_rate=0.05)
    fresh.frame(10**6)  # touch a far block first
    for offset, expected in enumerate(sequential):
        np.testing.assert_array_equal(fresh.frame(2000 + offset), expected)


def test_objects_move_smoothly() -> None:
    scene = SyntheticScene(seed=4, anomaly_rate=0.0, noise=0.0)
    diffs = [
        np.abs(scene.frame(i + 1).astype(int) - scene.frame(i).astype(int)).mean()
        for i in range(200)
    ]
    assert min(diffs) > 0.0  # something moves in every frame
    assert max(diffs) < 5.0  # but only a little: no jumps when objects wrap around


def test_zero_anomaly_rate_gives_a_purely_normal_scene() -> None:
    scene = SyntheticScene(seed=5, anomaly_rate=0.0)
    assert not scene.labels(20_000).any()
    assert scene.episodes(20_000) == []
    assert scene.episode_at(12_345) is None


def test_labels_follow_the_configured_rate_and_every_kind_appears() -> None:
    rate, n = 0.02, 40_000
    scene = SyntheticScene(seed=6, anomaly_rate=rate)
    episodes = scene.episodes(n)
    labels = scene.labels(n)
    # an episode starts with probability `rate` on each frame where one may start
    mean_length = 0.25 * (MIN_EPISODE + 28) / 2 + 0.75 * (MIN_EPISODE + MAX_EPISODE) / 2
    expected = n * rate / (1 + rate * (mean_length + GAP))
    assert 0.7 * expected < len(episodes) < 1.3 * expected, (len(episodes), expected)
    assert labels.sum() == sum(e.length for e in episodes)
    assert 0.1 < labels.mean() < 0.5
    for kind in AnomalyKind:
        of_kind = [e for e in episodes if e.kind == kind]
        assert len(of_kind) >= 40, (kind, len(of_kind))
        assert sum(e.length for e in of_kind) >= 600, kind
    previous_end = -GAP
    for e in episodes:
        assert MIN_EPISODE <= e.length <= MAX_EPISODE
        assert e.start - previous_end >= GAP  # normal frames between episodes
        assert e.start // BLOCK == (e.end - 1) // BLOCK
        assert labels[e.start:e.end].all()
        assert scene.episode_at(e.start) == e
        assert scene.label(e.start - 1) == 0 and scene.label(e.end) == 0
        previous_end = e.end


def test_labels_of_a_range_match_single_labels() -> None:
    scene = SyntheticScene(seed=8, anomaly_rate=0.05)
    window = scene.labels(3000, start=900)
    assert window.dtype == np.uint8
    assert [int(v) for v in window] == [scene.label(i) for i in range(900, 3900)]


def test_anomalies_change_only_the_anomalous_frames() -> None:
    normal = SyntheticScene(seed=9, anomaly_rate=0.0)
    scene = SyntheticScene(seed=9, anomaly_rate=0.03)
    episodes = scene.episodes(4000)
    labels = scene.labels(4000)
    for i in range(0, 4000, 7):
        same = np.array_equal(scene.frame(i), normal.frame(i))
        assert same == (labels[i] == 0), i
    for kind in AnomalyKind:
        e = next(e for e in episodes if e.kind == kind)
        middle = (e.start + e.end) // 2
        diff = np.abs(scene.frame(middle).astype(int) - normal.frame(middle).astype(int))
        changed = (diff > 20).mean()
        if kind == AnomalyKind.GLOBAL:
            assert changed > 0.5, (kind, changed)
        elif kind == AnomalyKind.LARGE:
            assert changed > 0.04, (kind, changed)
        else:
            assert changed > 0.002, (kind, changed)


def test_fast_objects_are_much_faster_than_pedestrians() -> None:
    scene = SyntheticScene(seed=10, anomaly_rate=0.05)
    fast = [e for e in scene.episodes(20_000) if e.kind == AnomalyKind.FAST]
    against = [e for e in scene.episodes(20_000) if e.kind == AnomalyKind.AGAINST_FLOW]
    assert fast and against
    assert min(e.speed for e in fast) > 3 * 1.3
    assert all(e.speed < 0 for e in against)


@pytest.mark.parametrize(
    ("name", "value"),
    [("seed", -1), ("width", 8), ("height", 5000), ("objects", 100), ("anomaly_rate", 1.5),
     ("noise", -1.0)],
)
def test_bad_parameters_are_rejected(name: str, value: object) -> None:
    with pytest.raises(ValueError, match=name):
        SyntheticScene(**{name: value})  # type: ignore[arg-type]


def test_negative_index_is_rejected() -> None:
    with pytest.raises(ValueError, match="-1"):
        SyntheticScene().frame(-1)


def test_rendering_is_fast() -> None:
    scene = SyntheticScene(seed=11, anomaly_rate=0.02)
    scene.frame(0)
    start = time.perf_counter()
    for i in range(1000):
        scene.frame(i)
    elapsed = time.perf_counter() - start
    assert elapsed < 2.0, f"1000 frames took {elapsed:.2f} s"  # typically ~0.04 s
