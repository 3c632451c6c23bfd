from __future__ import annotations

import itertools
import os
import socket
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from forecaster.errors import SourceDisconnected, SourceError
from forecaster.sources.readers import (
    CameraSource,
    FileSource,
    FolderSource,
    FrameSource,
    StreamSource,
    SyntheticParams,
    SyntheticSource,
    natural_key,
    open_source,
    parse_synthetic_uri,
    redact,
)
from forecaster.sources.synthetic import SyntheticScene
from tests.mjpeg_server import MJPEGServer


def read_all(source: FrameSource, limit: int = 10_000) -> list[np.ndarray]:
    frames = []
    with source:
        while len(frames) < limit and (frame := source.read()) is not None:
            frames.append(frame.image)
    return frames


def write_avi(path: Path, count: int, size: tuple[int, int] = (120, 160)) -> list[np.ndarray]:
    """Write ``count`` synthetic frames as MJPG in AVI; return the frames written."""
    height, width = size
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 25.0, (width, height))
    assert writer.isOpened(), "this OpenCV build cannot write MJPG/AVI"
    scene = SyntheticScene(seed=1, width=width, height=height)
    frames = [cv2.cvtColor(scene.frame(i), cv2.COLOR_GRAY2BGR) for i in range(count)]
    for frame in frames:
        writer.write(frame)
    writer.release()
    return frames


# -- open_source ---------------------------------------------------------------------------


def test_open_source_picks_the_source_kind(tmp_path: Path) -> None:
    video = tmp_path / "clip.avi"
    video.write_bytes(b"not opened yet")
    assert isinstance(open_source("synthetic:"), SyntheticSource)
    assert isinstance(open_source("synthetic:?seed=3&fps=0"), SyntheticSource)
    assert isinstance(open_source("0"), CameraSource)
    assert isinstance(open_source("/dev/video2"), CameraSource)
    assert isinstance(open_source("rtsp://10.0.0.5:554/stream"), StreamSource)
    assert isinstance(open_source("http://127.0.0.1:8080/video.mjpg"), StreamSource)
    assert isinstance(open_source("HTTPS://example.org/cam"), StreamSource)
    assert isinstance(open_source(str(tmp_path)), FolderSource)
    assert isinstance(open_source(str(video)), FileSource)
    assert open_source(str(video), loop=True).loop is True  # type: ignore[attr-defined]


def test_missing_path_names_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "nope" / "clip.mp4"
    with pytest.raises(SourceError, match=r"video file or image folder not found: .*clip.mp4"):
        open_source(str(missing))


@pytest.mark.parametrize("uri", ["", "   ", "ftp://host/video.avi", "file:///tmp/x.avi"])
def test_bad_source_strings_are_rejected(uri: str) -> None:
    with pytest.raises(SourceError):
        open_source(uri)


def test_passwords_are_redacted_from_messages() -> None:
    assert redact("rtsp://admin:s3cret@10.0.0.5/live") == "rtsp://admin:***@10.0.0.5/live"
    assert redact("rtsp://10.0.0.5/live") == "rtsp://10.0.0.5/live"
    source = StreamSource("rtsp://admin:s3cret@127.0.0.1:1/live", open_timeout_s=1)
    assert "s3cret" not in repr(source)


def test_natural_order() -> None:
    names = ["10.jpg", "2.jpg", "1.jpg", "img_100.png", "img_20.png", "B.jpg", "a.jpg"]
    assert sorted(names, key=natural_key) == [
        "1.jpg", "2.jpg", "10.jpg", "a.jpg", "B.jpg", "img_20.png", "img_100.png"]


# -- synthetic -----------------------------------------------------------------------------


def test_synthetic_params_are_parsed_and_validated() -> None:
    params = parse_synthetic_uri("synthetic:?seed=3&fps=0&anomaly_rate=0.05&frames=500"
                                 "&width=96&height=64&objects=4&noise=0")
    assert params == SyntheticParams(seed=3, fps=0.0, anomaly_rate=0.05, frames=500, width=96,
                                     height=64, objects=4, noise=0.0)
    assert parse_synthetic_uri(params.uri()) == params
    assert parse_synthetic_uri("synthetic:") == SyntheticParams()
    assert parse_synthetic_uri("synthetic:?") == SyntheticParams()


@pytest.mark.parametrize(
    ("uri", "words"),
    [
        ("synthetic:?speed=3", ["speed"]),
        ("synthetic:?seed=abc", ["seed", "abc"]),
        ("synthetic:?seed=-1", ["seed", "-1"]),
        ("synthetic:?fps=-5", ["fps", "-5"]),
        ("synthetic:?fps=nan", ["fps", "nan"]),
        ("synthetic:?anomaly_rate=2", ["anomaly_rate", "2"]),
        ("synthetic:?frames=0", ["frames", "0"]),
        ("synthetic:?width=3.5", ["width", "3.5"]),
        ("synthetic:?height=", ["height"]),
        ("synthetic:?objects", ["objects"]),
        ("synthetic:?seed=1&seed=2", ["seed", "twice"]),
        ("synthetic:seed=1", ["synthetic:seed=1"]),
    ],
)
def test_bad_synthetic_params_name_the_param_and_value(uri: str, words: list[str]) -> None:
    with pytest.raises(SourceError) as error:
        open_source(uri)
    for word in words:
        assert word in str(error.value)


def test_synthetic_source_gives_the_scene_frames_and_labels() -> None:
    source = open_source("synthetic:?seed=4&fps=0&frames=60&anomaly_rate=0.1")
    assert source.live is False
    scene = SyntheticScene(seed=4, anomaly_rate=0.1)
    read = []
    with source:
        while (frame := source.read()) is not None:
            read.append(frame)
    assert len(read) == 60
    for i, frame in enumerate(read):
        np.testing.assert_array_equal(frame.image, scene.frame(i))
        assert frame.label == scene.label(i)
    assert [f.label for f in read] == list(scene.labels(60))
    assert all(b.ts >= a.ts for a, b in itertools.pairwise(read))


def test_synthetic_source_is_paced_at_fps() -> None:
    source = open_source("synthetic:?fps=50&frames=11")
    assert source.live is True
    assert source.nominal_fps == 50.0
    with source:
        source.read()
        start = time.monotonic()
        count = sum(1 for _ in iter(source.read, None))
        elapsed = time.monotonic() - start
    assert count == 10
    assert 0.18 <= elapsed < 2.0, elapsed  # 10 periods of 20 ms


def test_synthetic_source_loops() -> None:
    frames = read_all(open_source("synthetic:?fps=0&frames=5", loop=True), limit=12)
    assert len(frames) == 12
    np.testing.assert_array_equal(frames[5], frames[0])
    np.testing.assert_array_equal(frames[11], frames[1])


def test_read_before_open_is_an_error() -> None:
    with pytest.raises(RuntimeError, match=r"open"):
        open_source("synthetic:?fps=0").read()


# -- image folders -------------------------------------------------------------------------


def test_folder_reads_in_natural_order_and_skips_bad_images(tmp_path: Path) -> None:
    for number in (1, 2, 10, 11):
        image = np.full((40, 50, 3), number * 10, dtype=np.uint8)
        cv2.imwrite(str(tmp_path / f"{number}.png"), image)
    (tmp_path / "3.jpg").write_bytes(os.urandom(2000))  # unreadable
    cv2.imwrite(str(tmp_path / "4.png"), np.full((30, 70, 3), 40, dtype=np.uint8))  # another size
    (tmp_path / "notes.txt").write_text("not an image")
    source = open_source(str(tmp_path))
    frames = read_all(source)
    assert [int(f[0, 0, 0]) for f in frames] == [10, 20, 40, 100, 110]
    assert source.skipped == 1


def test_folder_images_of_different_sizes_are_all_read(tmp_path: Path) -> None:
    for number in range(3):  # large images first: they must not set the size of the rest
        cv2.imwrite(str(tmp_path / f"{number:02d}.png"), np.full((900, 1200, 3), number, np.uint8))
    for number in range(3, 20):
        shape = (48, 64) if number % 2 else (60, 40, 3)
        cv2.imwrite(str(tmp_path / f"{number:02d}.png"), np.full(shape, number, np.uint8))
    source = FolderSource(tmp_path)
    frames = read_all(source)
    assert [int(f.reshape(-1)[0]) for f in frames] == list(range(20))
    assert [f.shape for f in frames[:4]] == [(900, 1200, 3)] * 3 + [(48, 64)]
    assert source.skipped == 0


def test_folder_warns_of_the_first_unreadable_images_then_sums_up(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cv2.imwrite(str(tmp_path / "00.png"), np.zeros((20, 20), np.uint8))
    for number in range(1, 11):
        (tmp_path / f"{number:02d}.jpg").write_bytes(b"\xff\xd8 broken")
    source = FolderSource(tmp_path, loop=True)
    with caplog.at_level("WARNING", logger="forecaster.sources"):
        frames = read_all(source, limit=3)
    assert len(frames) == 3 and source.skipped == 10
    messages = [record.getMessage() for record in caplog.records]
    assert messages[:3] == [f"unreadable image skipped: {tmp_path / f'{n:02d}.jpg'}"
                            for n in (1, 2, 3)]
    assert messages[3:] == [f"7 more unreadable image(s) skipped in {tmp_path} (10 in all)"]


def test_folder_loop_restarts_and_counts_each_bad_file_once(tmp_path: Path) -> None:
    for number in range(3):
        cv2.imwrite(str(tmp_path / f"f{number}.png"), np.full((20, 20), number, np.uint8))
    (tmp_path / "f1b.jpg").write_bytes(b"\xff\xd8 broken")
    source = FolderSource(tmp_path, loop=True)
    frames = read_all(source, limit=7)
    assert [int(f[0, 0]) for f in frames] == [0, 1, 2, 0, 1, 2, 0]
    assert source.skipped == 1


def test_first_image_unreadable_is_skipped(tmp_path: Path) -> None:
    (tmp_path / "000.jpg").write_bytes(os.urandom(500))
    cv2.imwrite(str(tmp_path / "001.png"), np.full((20, 30), 7, np.uint8))
    source = FolderSource(tmp_path)
    frames = read_all(source)
    assert len(frames) == 1 and frames[0].shape == (20, 30)
    assert source.skipped == 1


def test_empty_or_unreadable_folder_is_a_source_error(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SourceError, match=r"no images.*empty"):
        open_source(str(empty)).open()
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "1.jpg").write_bytes(os.urandom(300))
    with pytest.raises(SourceError, match=r"no readable image.*bad"):
        open_source(str(bad)).open()


def test_ped2_folder_reads_every_image(data_dir: Path) -> None:
    folder = data_dir / "ped2" / "training" / "01"
    source = open_source(str(folder))
    frames = read_all(source)
    assert len(frames) == len(list(folder.glob("*.jpg")))
    assert source.skipped == 0
    assert frames[0].dtype == np.uint8 and frames[0].shape[:2] == (240, 360)


# -- video files ---------------------------------------------------------------------------


def test_video_file_reads_back_every_frame(tmp_path: Path) -> None:
    path = tmp_path / "clip.avi"
    written = write_avi(path, 30)
    source = open_source(str(path))
    assert isinstance(source, FileSource) and not source.live
    frames = read_all(source)
    assert len(frames) == 30
    assert source.backend == "pyav"  # decoded straight to its luma plane: gray
    assert frames[0].shape == (120, 160) and frames[0].dtype == np.uint8
    assert source.nominal_fps == pytest.approx(25.0)
    # MJPG is lossy but close
    gray = cv2.cvtColor(written[7], cv2.COLOR_BGR2GRAY)
    assert np.abs(frames[7].astype(int) - gray.astype(int)).mean() < 4


def test_the_luma_plane_is_within_a_few_grey_levels_of_opencvs_gray(data_dir: Path) -> None:
    """H.264 at 720p: the luma plane, decoded fully, against OpenCV's BGR then BGR-to-gray.
    The sources skip the deblocking filter: at the sizes the cue and the model see, their
    frames stay within a grey level and a half of the deblocked ones on average."""
    import itertools

    import av

    from forecaster.sources.luma import luma
    from forecaster.sources.preprocess import to_gray_resized

    path = str(data_dir / "vtest.avi")
    with open_source(path) as source, open_source(path, color=True) as coloured:
        assert isinstance(source, FileSource) and source.backend == "pyav"
        frames = [source.read() for _ in range(30)]
        both = [coloured.read() for _ in range(30)]
    with av.open(path) as container:  # the decoder as FFmpeg sets it up: deblocking
        full = [luma(frame) for frame in itertools.islice(container.decode(video=0), 30)]
    capture = cv2.VideoCapture(path, cv2.CAP_FFMPEG)
    skipped = []
    for index, (frame, colour, gray) in enumerate(zip(frames, both, full, strict=True)):
        ok, image = capture.read()
        assert ok and frame is not None and colour is not None
        assert frame.image.shape == gray.shape == (720, 1280)
        np.testing.assert_array_equal(colour.gray_image(), frame.image)  # the same either way
        expected = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
        assert np.abs(gray.astype(int) - expected.astype(int)).max() <= 3, index
        for size in ((64, 64), (120, 213)):
            small = np.abs(to_gray_resized(frame.image, size).astype(int)
                           - to_gray_resized(gray, size).astype(int))
            assert small.mean() < 1.5, (index, size, small.mean())
        skipped.append(np.abs(frame.image.astype(int) - gray.astype(int)).mean())
    capture.release()
    assert np.mean(skipped) > 0.1  # the filter was skipped (the frames are not the same)
    # each frame carries its position in the file, the first frame again after a loop
    positions = [frame.pos_s for frame in frames if frame is not None]
    assert positions[0] is not None and np.all(np.diff(positions) > 0)


def test_colour_frames_come_at_the_width_they_are_kept_at(data_dir: Path) -> None:
    """720p H.264 in colour at most 640 wide: shrunk plane by plane, converted at 640x360,
    within a few levels of FFmpeg's full-size BGR scaled down; the gray frame unchanged."""
    from forecaster.sources.preprocess import scaled

    path = str(data_dir / "vtest.avi")
    with open_source(path, color=True) as full, \
            open_source(path, color=True, color_width=640) as small:
        for _ in range(10):
            big, kept = full.read(), small.read()
            assert big is not None and kept is not None
            assert big.image.shape == (720, 1280, 3) and kept.image.shape == (360, 640, 3)
            expected = scaled(big.image, 640).astype(int)
            difference = np.abs(kept.image.astype(int) - expected)
            assert difference.mean() < 1.5 and np.percentile(difference, 99.9) <= 8
            np.testing.assert_array_equal(kept.gray_image(), big.gray_image())
    with open_source(path, color=True, color_width=2000) as wide:  # never enlarged
        frame = wide.read()
        assert frame is not None and frame.image.shape == (720, 1280, 3)


def test_a_video_pyav_cannot_open_is_read_by_opencv(tmp_path: Path) -> None:
    path = tmp_path / "clip.avi"
    written = write_avi(path, 5)
    source = FileSource(path)
    source.backend = "opencv"  # as a source PyAV cannot open is read
    frames = read_all(source)
    assert len(frames) == 5 and frames[0].shape == (120, 160, 3)
    assert np.abs(frames[2].astype(int) - written[2].astype(int)).mean() < 4


def test_video_file_loops(tmp_path: Path) -> None:
    path = tmp_path / "clip.avi"
    write_avi(path, 10)
    frames = read_all(open_source(str(path), loop=True), limit=25)
    assert len(frames) == 25
    np.testing.assert_array_equal(frames[10], frames[0])
    np.testing.assert_array_equal(frames[23], frames[3])
    with open_source(str(path), loop=True) as source:  # the position starts again too
        positions = [source.read().pos_s for _ in range(12)]  # type: ignore[union-attr]
    assert positions[10] == positions[0] and positions[11] == positions[1] != positions[0]


def test_a_looped_source_marks_the_frame_it_restarts_with_as_a_cut(tmp_path: Path) -> None:
    folder = tmp_path / "frames"
    folder.mkdir()
    for number in range(4):
        cv2.imwrite(str(folder / f"{number}.png"), np.full((20, 20), number, np.uint8))
    (folder / "4.jpg").write_bytes(b"\xff\xd8 broken")  # the folder ends in a bad image
    write_avi(tmp_path / "clip.avi", 4)
    for source in (FolderSource(folder, loop=True), FileSource(tmp_path / "clip.avi", loop=True),
                   open_source("synthetic:?fps=0&frames=4", loop=True)):
        with source:
            cuts = [index for index in range(10) if source.read().cut]
        assert cuts == [4, 8], source
    with FolderSource(folder) as source:  # without loop: no cut, an end
        frames = [source.read() for _ in range(5)]
    assert [frame.cut for frame in frames[:4]] == [False] * 4 and frames[4] is None


def test_truncated_video_is_a_source_error_naming_the_file(tmp_path: Path) -> None:
    whole = tmp_path / "whole.avi"
    write_avi(whole, 30)
    data = whole.read_bytes()
    header_only = tmp_path / "header_only.avi"
    header_only.write_bytes(data[:2000])
    with pytest.raises(SourceError, match=r"header_only.avi"):
        open_source(str(header_only)).open()
    # cut in the middle: the frames before the cut are read, then the file ends
    half = tmp_path / "half.avi"
    half.write_bytes(data[: len(data) // 2])
    frames = read_all(open_source(str(half)))
    assert 5 <= len(frames) < 30


def test_truncated_mp4_is_a_source_error(tmp_path: Path) -> None:
    path = tmp_path / "clip.mp4"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 25.0, (64, 48))
    if not writer.isOpened():
        pytest.skip("this OpenCV build cannot write mp4v/MP4")
    for i in range(20):
        writer.write(np.full((48, 64, 3), i * 10, np.uint8))
    writer.release()
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # the index (moov) is written last
    with pytest.raises(SourceError, match=r"clip.mp4"):
        open_source(str(path)).open()


def test_random_bytes_video_is_a_source_error(tmp_path: Path) -> None:
    path = tmp_path / "noise.mp4"
    path.write_bytes(np.random.default_rng(0).bytes(40_000))
    source = open_source(str(path))
    with pytest.raises(SourceError, match=r"noise.mp4"):
        source.open()


def test_missing_video_file(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match=r"video file not found: .*gone.avi"):
        FileSource(tmp_path / "gone.avi").open()


def test_header_frame_count_is_not_trusted(data_dir: Path) -> None:
    path = data_dir / "vtest.avi"
    capture = cv2.VideoCapture(str(path))
    claimed = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
    capture.release()
    frames = read_all(open_source(str(path)))
    assert len(frames) == 341
    assert claimed != len(frames)


# -- cameras -------------------------------------------------------------------------------


def test_missing_camera_is_a_source_error() -> None:
    source = open_source("/dev/video987")
    assert isinstance(source, CameraSource) and source.live
    with pytest.raises(SourceError, match=r"camera not found: /dev/video987"):
        source.open()
    with pytest.raises(SourceError, match=r"camera not found: 987"):
        open_source("987").open()


# -- network streams -----------------------------------------------------------------------


def read_until_disconnected(source: StreamSource, deadline_s: float) -> float:
    """Read until SourceDisconnected; return the seconds it took."""
    start = time.monotonic()
    while time.monotonic() - start < deadline_s:
        try:
            source.read()
        except SourceDisconnected:
            return time.monotonic() - start
    raise AssertionError(f"no SourceDisconnected within {deadline_s} s")


@pytest.mark.timeout(60)
def test_stream_reads_mjpeg_over_http_and_reports_the_drop() -> None:
    server = MJPEGServer(fps=50).start()
    try:
        source = open_source(server.url)
        assert isinstance(source, StreamSource) and source.live
        source.read_timeout_s = 1.5
        source.open_timeout_s = 5.0
        source.open()
        frames = [source.read() for _ in range(10)]
        assert all(f is not None and f.image.shape == (120, 160) for f in frames)
        assert all(f is not None and f.label is None for f in frames)
        # the first frame decodes to the scene's frame 0 (JPEG-lossy)
        expected = SyntheticScene(seed=0, anomaly_rate=0.0).frame(0)
        first = frames[0].image  # type: ignore[union-attr]
        assert np.abs(first.astype(int) - expected.astype(int)).mean() < 4

        server.stop()
        took = read_until_disconnected(source, deadline_s=10)
        assert took < source.read_timeout_s + 2.0
        with pytest.raises(RuntimeError):  # closed itself; open() reconnects
            source.read()

        port = server.port
        server.start()
        assert server.port == port
        source.open()
        assert source.read() is not None
        source.close()
    finally:
        server.stop()


@pytest.mark.timeout(60)
def test_stalled_stream_times_out() -> None:
    with MJPEGServer(fps=50) as server:
        source = StreamSource(server.url, open_timeout_s=5.0, read_timeout_s=1.0)
        with source:
            assert source.read() is not None
            server.paused.set()
            took = read_until_disconnected(source, deadline_s=15)
        assert 0.5 < took < 5.0, took


@pytest.mark.timeout(60)
def test_unreachable_stream_fails_to_open_quickly() -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    source = StreamSource(f"http://127.0.0.1:{port}/", open_timeout_s=2.0, read_timeout_s=1.0)
    start = time.monotonic()
    with pytest.raises(SourceDisconnected, match=rf"127.0.0.1:{port}"):
        source.open()
    assert time.monotonic() - start < 5.0


@pytest.mark.timeout(60)
def test_silent_stream_fails_to_open_within_the_open_timeout() -> None:
    with socket.socket() as sock:  # accepts connections, never answers
        sock.bind(("127.0.0.1", 0))
        sock.listen(4)
        port = sock.getsockname()[1]
        source = StreamSource(f"http://127.0.0.1:{port}/", open_timeout_s=1.0)
        start = time.monotonic()
        with pytest.raises(SourceDisconnected):
            source.open()
        assert time.monotonic() - start < 5.0


# -- preprocessing -------------------------------------------------------------------------


def test_a_shrink_in_two_steps_is_within_a_grey_level_of_one_area_resize() -> None:
    from forecaster.sources.preprocess import to_gray_resized

    rng = np.random.default_rng(3)
    image = cv2.GaussianBlur(rng.integers(0, 256, (720, 1280), dtype=np.uint8), (9, 9), 3)
    for size in ((64, 64), (48, 80), (120, 160)):
        one_step = cv2.resize(image, size[::-1], interpolation=cv2.INTER_AREA)
        resized = to_gray_resized(image, size)
        assert resized.shape == size
        assert np.abs(resized.astype(int) - one_step.astype(int)).max() <= 1, size
    # no whole factor on either axis (Ped2's 360x240): the very same pixels
    small = image[:240, :360]
    np.testing.assert_array_equal(to_gray_resized(small, (64, 64)),
                                  cv2.resize(small, (64, 64), interpolation=cv2.INTER_AREA))


def test_a_video_whose_frames_are_recorded_keeps_its_colours(tmp_path: Path) -> None:
    """``color=True`` (recordings or the page on): BGR frames, as written; without it the
    luma plane, gray. The gray frame the model sees is the same either way."""
    path = tmp_path / "tinted.avi"
    height, width = 120, 160
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 25.0, (width, height))
    assert writer.isOpened(), "this OpenCV build cannot write MJPG/AVI"
    scene = SyntheticScene(seed=2, width=width, height=height)
    written = []
    for index in range(8):
        gray = scene.frame(index)
        frame = np.dstack([gray, gray // 2, np.full_like(gray, 40)])  # blue over red
        writer.write(frame)
        written.append(frame)
    writer.release()
    colour = read_all(FileSource(path, color=True))
    plain = read_all(FileSource(path))
    assert len(colour) == len(plain) == 8
    assert colour[3].shape == (height, width, 3) and plain[3].shape == (height, width)
    assert np.abs(colour[3].astype(int) - written[3].astype(int)).mean() < 6
    blue, red = colour[3][..., 0].mean(), colour[3][..., 2].mean()
    assert blue > red + 20, (blue, red)
    # the gray frame the model sees is the luma plane with colour or without: the same
    with FileSource(path, color=True) as source:
        frame = source.read()
    assert frame is not None and frame.gray is not None
    assert np.array_equal(frame.gray_image(), plain[0])
