from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from forecaster.errors import DataError, SourceError
from forecaster.offline.datasets import (
    DEFAULT_SYNTHETIC_FRAMES,
    VideoRef,
    expand_videos,
    load_labels,
    read_video,
)
from forecaster.sources.synthetic import SyntheticScene


def make_folder(path: Path, count: int, size: tuple[int, int] = (48, 64)) -> Path:
    path.mkdir(parents=True)
    for i in range(count):
        cv2.imwrite(str(path / f"{i}.png"), np.full(size, i * 5, np.uint8))
    return path


def make_video(path: Path, count: int) -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (80, 60))
    assert writer.isOpened()
    for i in range(count):
        writer.write(np.full((60, 80, 3), i * 8, np.uint8))
    writer.release()
    return path


# -- expand_videos -------------------------------------------------------------------------


def test_expand_a_data_set_folder(tmp_path: Path) -> None:
    root = tmp_path / "set"
    make_folder(root / "10", 2)
    make_folder(root / "2", 2)
    make_video(root / "walk.avi", 3)
    (root / "labels.json").write_text("{}")
    (root / "empty").mkdir()
    assert expand_videos([str(root)]) == [
        VideoRef("2", str(root / "2")),
        VideoRef("10", str(root / "10")),
        VideoRef("walk", str(root / "walk.avi")),
    ]


def test_expand_single_videos_and_synthetic(tmp_path: Path) -> None:
    folder = make_folder(tmp_path / "cam7", 2)
    video = make_video(tmp_path / "clip.avi", 3)
    refs = expand_videos([str(folder), str(video), "synthetic:?seed=3&frames=20"])
    assert refs == [
        VideoRef("cam7", str(folder)),
        VideoRef("clip", str(video)),
        VideoRef("synthetic-3", "synthetic:?seed=3&frames=20"),
    ]
    assert expand_videos(["synthetic:"])[0].name == "synthetic-0"


def test_expand_rejects_what_is_not_a_data_set(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"not found: .*missing"):
        expand_videos([str(tmp_path / "missing")])
    (tmp_path / "nothing").mkdir()
    (tmp_path / "nothing" / "readme.txt").write_text("hello")
    with pytest.raises(DataError, match=r"no videos in .*nothing"):
        expand_videos([str(tmp_path / "nothing")])
    with pytest.raises(DataError, match=r"rtsp://cam"):
        expand_videos(["rtsp://cam/live"])
    with pytest.raises(SourceError, match=r"bogus"):
        expand_videos(["synthetic:?bogus=1"])


def test_expand_ped2(data_dir: Path) -> None:
    refs = expand_videos([str(data_dir / "ped2" / "testing")])
    assert [r.name for r in refs] == ["01", "02", "03", "04"]
    assert len(expand_videos([str(data_dir / "ped2" / "training")])) == 16


# -- read_video ----------------------------------------------------------------------------


def test_read_synthetic_video() -> None:
    frames, labels = read_video("synthetic:?seed=2&anomaly_rate=0.05&frames=300", (64, 64))
    assert frames.shape == (300, 64, 64) and frames.dtype == np.uint8
    assert labels is not None and labels.dtype == np.uint8
    np.testing.assert_array_equal(labels, SyntheticScene(seed=2, anomaly_rate=0.05).labels(300))
    assert labels.any()


def test_read_synthetic_video_is_unpaced_and_bounded() -> None:
    # fps=25 is ignored: reading 1000 frames takes far less than 40 s
    frames, labels = read_video("synthetic:?fps=25", (32, 48))
    assert frames.shape == (DEFAULT_SYNTHETIC_FRAMES, 32, 48)
    assert labels is not None and len(labels) == DEFAULT_SYNTHETIC_FRAMES
    frames, _ = read_video("synthetic:", (64, 64), max_frames=40)
    assert frames.shape == (40, 64, 64)
    frames, _ = read_video("synthetic:?frames=30", (64, 64), max_frames=100)
    assert frames.shape == (30, 64, 64)


def test_read_folder_and_file(tmp_path: Path) -> None:
    frames, labels = read_video(str(make_folder(tmp_path / "f", 12)), (64, 64))
    assert frames.shape == (12, 64, 64) and labels is None
    assert frames[3].mean() == pytest.approx(15, abs=1)
    frames, labels = read_video(str(make_video(tmp_path / "v.avi", 9)), (64, 64), max_frames=5)
    assert frames.shape == (5, 64, 64) and labels is None


def test_read_ped2_training_video(data_dir: Path) -> None:
    folder = data_dir / "ped2" / "training" / "01"
    frames, labels = read_video(str(folder), (64, 64))
    assert frames.shape == (len(list(folder.glob("*.jpg"))), 64, 64)
    assert frames.dtype == np.uint8 and labels is None
    assert 20 < frames.mean() < 235


def test_read_errors(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match=r"not found"):
        read_video(str(tmp_path / "none.avi"), (64, 64))
    with pytest.raises(DataError, match=r"max_frames"):
        read_video("synthetic:", (64, 64), max_frames=0)


# -- load_labels ---------------------------------------------------------------------------


def test_load_ped2_labels(data_dir: Path) -> None:
    testing = data_dir / "ped2" / "testing"
    labels = load_labels(testing / "labels.json")
    assert sorted(labels) == ["01", "02", "03", "04"]
    for name, values in labels.items():
        assert values.dtype == np.uint8
        assert len(values) == len(list((testing / name).glob("*.jpg")))
        assert set(np.unique(values)) <= {0, 1}
        assert values.any()


def test_load_labels_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "labels.json"
    path.write_text(json.dumps({"a": [0, 1, 1], "b": [0]}))
    labels = load_labels(str(path))
    assert list(labels) == ["a", "b"]
    np.testing.assert_array_equal(labels["a"], [0, 1, 1])


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ('{"01": [0, 1,', ["not valid JSON"]),
        ("[0, 1]", ["JSON object", "list"]),
        ("{}", ["non-empty"]),
        ('{"01": "0110"}', ["'01'", "'0110'"]),
        ('{"01": []}', ["'01'", "non-empty"]),
        ('{"01": [0, 2, 1]}', ["label 1", "'01'", "got 2"]),
        ('{"01": [0, 0.5]}', ["label 1", "0.5"]),
        ('{"01": [0, null]}', ["label 1", "null"]),
    ],
)
def test_malformed_labels_are_a_data_error(tmp_path: Path, text: str, words: list[str]) -> None:
    path = tmp_path / "labels.json"
    path.write_text(text)
    with pytest.raises(DataError) as error:
        load_labels(path)
    message = str(error.value)
    assert str(path) in message
    for word in words:
        assert word in message


def test_missing_labels_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"labels file not found: .*nope.json"):
        load_labels(tmp_path / "nope.json")
