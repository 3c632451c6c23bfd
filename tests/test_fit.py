"""Whether a model fits: train's error ratio and warning, the misfit check of replay and the
daemon, the frame size taken from the model's card, training on a recorded live stream."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from forecaster.detection.fit import MIN_FIT_FRAMES, FitCheck
from tests.conftest import free_port
from tests.daemon_harness import Daemon, config_text, wait_for
from tests.test_replay import SIZE, cli, env, make_tiny_model

pytestmark = pytest.mark.timeout(240)

NORMAL = "synthetic:?anomaly_rate=0&seed={seed}&frames={frames}"


def test_fit_check_median_against_threshold_off() -> None:
    def mse(z: float) -> float:  # the mse whose global score is z (mu -8, sigma 0.5)
        return math.exp(-8.0 + 0.5 * z)

    fit = FitCheck(threshold_off=2.0, log_mse_mean=-8.0, log_mse_std=0.5, frames=100)
    for i in range(99):
        assert not fit.add(mse(5.0 if i % 3 else 0.0))  # two thirds above threshold_off
    assert fit.verdict == "checking"
    assert fit.add(math.nan) is False  # unscored frames do not count
    assert fit.add(mse(5.0)) and fit.verdict == "misfit"
    assert fit.median == pytest.approx(5.0)
    assert not fit.add(mse(0.0)) and fit.verdict == "misfit"  # decided once
    ok = FitCheck(threshold_off=2.0, log_mse_mean=-8.0, log_mse_std=0.5, frames=100)
    for i in range(100):
        ok.add(mse(9.0 if i % 10 == 0 else 0.1))  # a few anomalous frames make no misfit
    assert ok.verdict == "ok"
    short = FitCheck(threshold_off=2.0, log_mse_mean=-8.0, log_mse_std=0.5)
    for _ in range(MIN_FIT_FRAMES - 1):
        short.add(mse(4.0))
    assert not short.finish() and short.verdict == "checking"  # too few to tell
    short.add(mse(4.0))
    assert short.finish() and short.verdict == "misfit" and short.decided_on == MIN_FIT_FRAMES


def test_train_prints_the_ratio_and_warns_for_a_model_that_learned_nothing(
        tmp_path: Path) -> None:
    out = tmp_path / "m.keras"
    data = [NORMAL.format(seed=s, frames=40) for s in range(2)]
    result = subprocess.run(
        [sys.executable, "-m", "forecaster", "train", *data, "--out", str(out), "--epochs", "1",
         "--size", "32x32", "--max-frames", "40"],
        cwd=tmp_path, env=env(), capture_output=True, text=True, timeout=200)
    assert result.returncode == 0, result.stderr
    assert "that of repeating the last frame" in result.stdout
    ratio = float(result.stdout.split("its error: ")[1].split("x")[0])
    assert ratio > 0.9  # one epoch of 40 frames: the residual model still repeats the frame
    warnings = [line for line in result.stderr.splitlines() if "WARNING" in line]
    assert any("barely beats repeating the last frame" in line and "--epochs" in line
               for line in warnings), result.stderr
    assert "Traceback" not in result.stderr


def _summary(out: Path) -> dict:
    return json.loads((out / "summary.json").read_text())


def test_the_misfit_remedy_suggests_minutes_only_for_a_live_source() -> None:
    from forecaster.detection.fit import train_hint

    assert train_hint("rtsp://u:secret@cam/s") == (
        "forecaster train rtsp://u:***@cam/s --minutes N --out MODEL.keras")
    assert train_hint("/dev/video0").endswith("--minutes N --out MODEL.keras")
    assert train_hint("clips/door.mp4") == "forecaster train clips/door.mp4 --out MODEL.keras"
    assert "--minutes" not in train_hint("synthetic:?seed=2")
    assert "FILE_OR_FOLDER --out" in train_hint("")


def test_replay_flags_the_bundled_model_on_real_footage(data_dir: Path, tmp_path: Path) -> None:
    result = cli(["replay", str(data_dir / "vtest.avi"), "--out", str(tmp_path / "o")], tmp_path)
    assert result.returncode == 0, result.stderr
    video = _summary(tmp_path / "o")["videos"][0]
    assert video["model_fit"] == "misfit" and video["model_fit_median"] > 2.0
    assert _summary(tmp_path / "o")["total"]["misfit_videos"] == ["vtest"]
    lines = [line for line in result.stderr.splitlines() if "does not fit" in line]
    assert len(lines) == 1 and "WARNING" in lines[0]
    # a file is read whole: --minutes (which records a live source) is not suggested
    assert f"forecaster train {data_dir / 'vtest.avi'} --out MODEL.keras" in lines[0]
    assert "--minutes" not in lines[0]


def test_replay_of_a_normal_synthetic_scene_fits_the_bundled_model(tmp_path: Path) -> None:
    result = cli(["replay", NORMAL.format(seed=31, frames=300), "--out", str(tmp_path / "o")],
                 tmp_path)
    assert result.returncode == 0, result.stderr
    video = _summary(tmp_path / "o")["videos"][0]
    assert video["model_fit"] == "ok" and video["model_fit_median"] < 2.0
    assert "does not fit" not in result.stderr


def test_daemon_warns_once_and_says_so_in_status_on_footage_it_does_not_fit(
        data_dir: Path, tmp_path: Path) -> None:
    from forecaster.client import Subscriber
    from forecaster.protocol import Status

    endpoint = f"tcp://127.0.0.1:{free_port()}"
    config = config_text(endpoint, [("hall", str(data_dir / "vtest.avi"), {"fps": 60.0})])
    statuses: list[Status] = []
    with Daemon(tmp_path, config) as daemon, Subscriber(endpoint, kinds=["status"]) as sub:
        def ended() -> bool:
            msg = sub.recv(timeout=0.2)
            if isinstance(msg, Status):
                statuses.append(msg)
            return bool(statuses) and statuses[-1].ended
        wait_for(ended, 150, "the ended status")
        daemon.wait_log("does not fit", 20)
    assert statuses[-1].model_fit == "misfit"
    assert {s.model_fit for s in statuses[:-1]} <= {"checking"}
    lines = [line for line in daemon.log().splitlines() if "does not fit" in line]
    assert len(lines) == 1 and "camera hall" in lines[0] and "WARNING" in lines[0]
    assert f"forecaster train {data_dir / 'vtest.avi'} --out" in lines[0], lines[0]
    assert "--minutes" not in lines[0]
    assert "Traceback" not in daemon.log()


def test_daemon_takes_the_frame_size_from_the_model_card(tmp_path: Path) -> None:
    from forecaster.client import Subscriber
    from forecaster.protocol import Forecast

    model = make_tiny_model(tmp_path / "tiny.keras")  # SIZE x SIZE; capture.size unset
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    config = config_text(endpoint, [("cam", "synthetic:?anomaly_rate=0&seed=2")],
                         {"model": {"path": str(model)}})
    with Daemon(tmp_path, config) as daemon, Subscriber(endpoint, kinds=["forecast"]) as sub:
        msg = wait_for(lambda: sub.recv(timeout=0.2), 90, "a forecast")
        assert daemon.stop() == 0
    assert isinstance(msg, Forecast) and msg.frame.shape == (SIZE, SIZE)


def test_train_records_minutes_of_a_live_stream_and_trains_on_them(tmp_path: Path) -> None:
    from forecaster.model.artifact import read_card
    from tests.mjpeg_server import MJPEGServer

    out = tmp_path / "cam.keras"
    with MJPEGServer(fps=25, lifetime_s=120) as server:
        result = subprocess.run(
            [sys.executable, "-m", "forecaster", "train", server.url, "--minutes", "0.1",
             "--out", str(out), "--epochs", "1", "--size", "32x32"],
            cwd=tmp_path, env=env(), capture_output=True, text=True, timeout=200)
    assert result.returncode == 0, result.stderr
    card = read_card(out)
    frames = card.training["frames"]
    assert 60 <= frames <= 6.0 * 25 + 5  # about 6 s of a 25 fps stream
    assert card.training["record_minutes"] == 0.1
    assert card.training["data"] == [server.url]
    assert "fused" in card.calibration  # its cues were made while recording
    # without --minutes a live source is refused with the remedy
    line = [x for x in subprocess.run(
        [sys.executable, "-m", "forecaster", "train", "rtsp://127.0.0.1:9/x", "--out",
         str(tmp_path / "x.keras")], cwd=tmp_path, env=env(), capture_output=True, text=True,
        timeout=60).stderr.splitlines() if "error" in x.lower()]
    assert len(line) == 1 and "--minutes" in line[0]


def test_train_and_bench_check_their_output_before_the_long_run(tmp_path: Path) -> None:
    from tests.test_replay import one_error_line

    (tmp_path / "folder.keras").mkdir()
    for out in (tmp_path / "absent" / "m.keras", tmp_path / "folder.keras"):
        result = cli(["train", NORMAL.format(seed=1, frames=40), "--out", str(out)], tmp_path)
        line = one_error_line(result)
        assert str(out.parent if "absent" in str(out) else out) in line, line
        assert "epoch" not in result.stderr  # refused before any training
    line = one_error_line(cli(["bench", "--skip-archs", "--out",
                               str(tmp_path / "absent" / "b.json")], tmp_path))
    assert "benchmark report (--out)" in line and "measured peak" not in line


def test_run_logs_one_progress_line_per_camera_per_interval(tmp_path: Path) -> None:
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    config = config_text(endpoint, [("cam0", "synthetic:?fps=20&seed=3"),
                                    ("cam1", "synthetic:?fps=20&seed=4")],
                         {"service": {"progress_log_s": 2.0}, "scorer": {"mode": "global"}})
    with Daemon(tmp_path, config) as daemon:
        match = daemon.wait_log(r"camera cam1: ([\d.]+) fps over the last 2 s, last score "
                                r"\S+, \d+ event\(s\), \d+ frame\(s\) dropped", 120)
        assert 5.0 < float(match.group(1)) < 30.0  # about the source's 20 fps
        daemon.wait_log(r"camera cam0: [\d.]+ fps over the last 2 s", 10)
        assert daemon.stop() == 0


@pytest.mark.parametrize("args", [
    ["replay", "synthetic:?frames=30", "--fps", "-1"],
    ["watch", "--seconds", "nan"],
    ["train", "synthetic:?frames=30", "--out", "m.keras", "--minutes", "0"],
    ["train", "synthetic:?frames=30", "--out", "m.keras", "--learning-rate", "inf"],
])
def test_numbers_that_must_be_positive_exit_2(args: list[str], tmp_path: Path) -> None:
    result = cli(args, tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"argument {args[-2]}: expected a positive number, got {args[-1]!r}" in result.stderr
