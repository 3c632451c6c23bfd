"""End to end: ``forecaster run`` as a real subprocess, read over a real SUB socket."""

from __future__ import annotations

import itertools
import os
import signal
import socket
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import cv2
import numpy as np
import pytest

from forecaster.client import Subscriber
from forecaster.protocol import Event, Forecast, Score, Status
from forecaster.sources.synthetic import SyntheticScene
from tests.conftest import free_port
from tests.daemon_harness import Daemon, config_text, wait_for

pytestmark = pytest.mark.timeout(180)


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def write_config(path: Path, endpoint: str, cameras: list[tuple[str, str]], extra: str = "") -> Path:
    lines = [
        'log_level = "info"',
        extra,
        # no live page: daemons of tests would share its port (tests/test_web*.py turn it on)
        "" if "[web]" in extra else "[web]\nenabled = false",
        "[publish]",
        f'endpoint = "{endpoint}"',
        "status_interval_s = 0.5",
        "sndhwm = 10000",
    ]
    for camera, source in cameras:
        lines += ["[[cameras]]", f'id = "{camera}"', f'source = "{source}"']
    path.write_text("\n".join(lines) + "\n")
    return path


def start(args: list[str], cwd: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "forecaster", *args],
        cwd=cwd,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def collect(sub: Subscriber, proc: subprocess.Popen[str], deadline_s: float) -> list:
    """Receive until the daemon has exited and the socket is quiet, or the deadline."""
    messages = []
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        msg = sub.recv(timeout=0.5)
        if msg is not None:
            messages.append((time.time(), msg))
        elif proc.poll() is not None:
            break
    return messages


def run_daemon(
    tmp_path: Path, cameras: list[tuple[str, str]], max_frames: int, extra: str = ""
) -> tuple[subprocess.CompletedProcess[str], list]:
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    config = write_config(tmp_path / "config.toml", endpoint, cameras, extra)
    with Subscriber(endpoint) as sub:
        proc = start(["run", "--config", str(config), "--max-frames", str(max_frames)], tmp_path)
        messages = collect(sub, proc, deadline_s=150)
        out, err = proc.communicate(timeout=30)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err), messages


def by_camera(messages: list, kind: type) -> dict[str, list]:
    grouped: dict[str, list] = defaultdict(list)
    for _, msg in messages:
        if isinstance(msg, kind):
            grouped[msg.camera].append(msg)
    return grouped


def test_run_publishes_forecasts_and_scores_per_protocol(tmp_path: Path) -> None:
    result, messages = run_daemon(tmp_path, [("cam0", "synthetic:?fps=60&seed=1")], 80)
    assert result.returncode == 0, result.stderr
    forecasts = by_camera(messages, Forecast)["cam0"]
    scores = by_camera(messages, Score)["cam0"]
    assert len(forecasts) >= 40, result.stderr
    assert len(scores) >= 30
    seqs = [f.seq for f in forecasts]
    assert all(b > a for a, b in itertools.pairwise(seqs)), "seq not increasing"
    for forecast in forecasts:
        assert forecast.target_seq == forecast.seq + 1
        assert forecast.frame.shape == (64, 64) and forecast.frame.dtype == np.uint8
        assert 0 < forecast.ts <= time.time()
    for score in scores:
        assert np.isfinite([score.mse, score.psnr, score.score, score.latency_ms]).all()
        assert score.seq >= 10  # the first 10 frames only build up the state
        assert isinstance(score.anomaly, bool)
    # the last frame captured is the last one forecast: nothing left behind
    assert forecasts[-1].seq == 79
    statuses = by_camera(messages, Status)["cam0"]
    assert statuses and statuses[-1].ended


def test_two_cameras_share_one_worker(tmp_path: Path) -> None:
    cameras = [("left", "synthetic:?fps=40&seed=2"), ("right", "synthetic:?fps=40&seed=3")]
    result, messages = run_daemon(tmp_path, cameras, 40)
    assert result.returncode == 0, result.stderr
    forecasts = by_camera(messages, Forecast)
    scores = by_camera(messages, Score)
    for camera in ("left", "right"):
        assert len(forecasts[camera]) >= 20, (camera, result.stderr)
        assert len(scores[camera]) >= 10, camera
    # different scenes give different predictions
    assert not np.array_equal(forecasts["left"][-1].frame, forecasts["right"][-1].frame)
    assert result.stderr.count("serving 2 camera(s)") == 1


def test_worker_behind_by_a_few_frames_catches_up_without_gaps(tmp_path: Path) -> None:
    # ~4 frames arrive per worker tick: the worker runs them in one call and scores all.
    # A ring of 64 frames leaves room for scheduling hiccups on a busy machine.
    extra = "[worker]\nthrottle_ms = 40\n[capture]\nring_frames = 64"
    result, messages = run_daemon(tmp_path, [("cam0", "synthetic:?fps=100&seed=4")], 120, extra)
    assert result.returncode == 0, result.stderr
    scores = by_camera(messages, Score)["cam0"]
    assert [s.seq for s in scores] == list(range(10, 120))
    forecasts = by_camera(messages, Forecast)["cam0"]
    steps = np.diff([f.seq for f in forecasts])
    assert steps.max() > 1, "the throttled worker should have batched several frames"
    statuses = by_camera(messages, Status)["cam0"]
    assert statuses[-1].state_resets == 0 and statuses[-1].frames_dropped == 0


def test_slow_worker_sees_gaps_not_growing_latency(tmp_path: Path) -> None:
    # The source is ~25x faster than the worker: it must skip to the newest frames.
    extra = "[worker]\nthrottle_ms = 250"
    result, messages = run_daemon(tmp_path, [("cam0", "synthetic:?fps=100&seed=5")], 400, extra)
    assert result.returncode == 0, result.stderr
    received = [(t, m) for t, m in messages if isinstance(m, Forecast)]
    assert len(received) >= 5
    seqs = [m.seq for _, m in received]
    assert max(np.diff(seqs)) >= 10, f"expected gaps, got seqs {seqs}"
    latencies = [t - m.ts for t, m in received]
    # latency stays bounded by about one worker tick instead of growing with the backlog
    assert max(latencies[len(latencies) // 2 :]) < 1.5, latencies
    assert seqs[-1] == 399
    statuses = by_camera(messages, Status)["cam0"]
    # frames are shed, the state is kept: about 25 frames behind at each tick is less than
    # the 4 rings after which a re-prime would be cheaper
    assert statuses[-1].frames_dropped > 0 and statuses[-1].state_resets == 0


def test_sigterm_stops_cleanly_within_5_seconds(tmp_path: Path) -> None:
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    config = write_config(tmp_path / "config.toml", endpoint, [("cam0", "synthetic:?fps=25")])
    with Subscriber(endpoint, kinds=["forecast"]) as sub:
        proc = start(["run", "--config", str(config)], tmp_path)
        try:
            first = sub.recv(timeout=120)
            assert isinstance(first, Forecast), proc.stderr and proc.stderr.read()
        finally:
            proc.send_signal(signal.SIGTERM)
            began = time.monotonic()
            _out, err = proc.communicate(timeout=15)
    assert time.monotonic() - began < 5.0
    assert proc.returncode == 0, err
    assert "Traceback" not in err
    leftover = [p for p in Path("/dev/shm").glob(f"forecaster_{proc.pid}_*")]
    assert leftover == []


def _one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 2, (result.returncode, result.stderr)
    lines = [line for line in result.stderr.strip().splitlines() if "error" in line.lower()]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


def run_cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "forecaster", *args],
        cwd=cwd,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_bad_config_and_unknown_key_exit_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[publish]\nendpoint = 5556\n")
    line = _one_error_line(run_cli(["run", "--config", str(bad)], tmp_path))
    assert "publish.endpoint" in line and "5556" in line
    unknown = tmp_path / "unknown.toml"
    unknown.write_text("[capture]\nsise = [64, 64]\n")
    line = _one_error_line(run_cli(["run", "--config", str(unknown)], tmp_path))
    assert "capture.sise" in line and "unknown key" in line


def test_missing_video_file_exit_2(tmp_path: Path) -> None:
    missing = tmp_path / "nope.mp4"
    line = _one_error_line(run_cli(["run", "--source", str(missing)], tmp_path))
    assert str(missing) in line


def test_corrupt_video_exit_2(tmp_path: Path) -> None:
    corrupt = tmp_path / "random.mp4"
    corrupt.write_bytes(np.random.default_rng(0).bytes(50_000))
    # the file is named before any port is bound: the live page's port is taken here
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        config = tmp_path / "c.toml"
        config.write_text(f"[web]\nport = {taken.getsockname()[1]}\n")
        line = _one_error_line(
            run_cli(["run", "--config", str(config), "--source", str(corrupt)], tmp_path))
    assert str(corrupt) in line


def test_model_of_wrong_size_exit_2(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text("[capture]\nsize = [64, 80]\n")
    line = _one_error_line(run_cli(["run", "--config", str(config)], tmp_path))
    assert "64x64" in line and "64x80" in line


def test_video_file_source_runs_to_the_end(tmp_path: Path) -> None:
    video = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 25.0, (96, 72))
    scene = SyntheticScene(seed=6, height=72, width=96)
    for i in range(30):
        writer.write(cv2.cvtColor(scene.frame(i), cv2.COLOR_GRAY2BGR))
    writer.release()
    result, messages = run_daemon(tmp_path, [("file", str(video))], 1000)
    assert result.returncode == 0, result.stderr
    forecasts = by_camera(messages, Forecast)["file"]
    assert forecasts and forecasts[-1].seq == 29
    assert any(isinstance(m, Status) and m.ended for _, m in messages)
    assert not any(isinstance(m, Event) and m.state not in ("start", "end") for _, m in messages)



@pytest.mark.parametrize("kind", ["folder", "file"])
def test_a_looped_source_starts_the_state_again_at_each_wrap(tmp_path: Path, kind: str) -> None:
    # 30 frames of a normal scene: its objects jump back at the wrap from frame 29 to 0,
    # which a state carried across it scores as an anomaly (6.5; the frames of the loop
    # score under 1.2)
    folder = tmp_path / "loop"
    folder.mkdir()
    scene = SyntheticScene(seed=7, height=72, width=96, anomaly_rate=0.0)
    if kind == "folder":
        for i in range(30):
            cv2.imwrite(str(folder / f"{i:02d}.png"), scene.frame(i))
    else:  # a video file (MJPG: every frame decodes as written)
        video = folder / "loop.avi"
        writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 30.0, (96, 72))
        for i in range(30):
            writer.write(cv2.cvtColor(scene.frame(i), cv2.COLOR_GRAY2BGR))
        writer.release()
        folder = video
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    config = tmp_path / "config.toml"
    # a ring of 64 frames: a busy machine's hiccup is caught up, not skipped
    config.write_text(config_text(endpoint, [("loop", str(folder), {"loop": True, "fps": 30.0})],
                                  {"capture": {"ring_frames": 64}}))
    with Subscriber(endpoint) as sub:
        proc = start(["run", "--config", str(config), "--max-frames", "90"], tmp_path)
        messages = collect(sub, proc, deadline_s=150)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    scores = by_camera(messages, Score)["loop"]
    seqs = [score.seq for score in scores]
    # wraps at seqs 30 and 60: a new state each time, no frame scored until it has seen
    # the model's window of 10 frames again
    assert all(seq % 30 >= 10 for seq in seqs), seqs
    assert [sum(1 for seq in seqs if seq // 30 == loop) >= 10 for loop in range(3)] == [True] * 3
    assert max(score.score for score in scores) < 3.0, scores
    assert not by_camera(messages, Event)
    assert by_camera(messages, Forecast)["loop"][-1].seq == 89
    status = by_camera(messages, Status)["loop"][-1]
    assert status.ended and status.state_resets == 2


def test_model_trained_at_64x80_runs_end_to_end(tmp_path: Path) -> None:
    model = tmp_path / "m64x80.keras"
    trained = run_cli(
        ["train", "synthetic:?anomaly_rate=0&seed=21", "synthetic:?anomaly_rate=0&seed=22",
         "--out", str(model), "--epochs", "1", "--max-frames", "40", "--size", "64x80"],
        tmp_path,
    )
    assert trained.returncode == 0, trained.stderr
    extra = f'[capture]\nsize = [64, 80]\n[model]\npath = "{model}"'
    result, messages = run_daemon(tmp_path, [("wide", "synthetic:?fps=60&seed=8")], 40, extra)
    assert result.returncode == 0, result.stderr
    forecasts = by_camera(messages, Forecast)["wide"]
    assert forecasts and all(f.frame.shape == (64, 80) for f in forecasts)
    assert by_camera(messages, Score)["wide"], "no scores at 64x80"


def test_second_daemon_on_the_same_ipc_endpoint_is_refused(tmp_path: Path) -> None:
    sock_path = tmp_path / "run" / "fc.sock"
    endpoint = f"ipc://{sock_path}"
    (tmp_path / "first").mkdir()
    config = config_text(endpoint, [("cam0", "synthetic:?fps=25&seed=2")])
    with Daemon(tmp_path / "first", config) as first:
        first.wait_log(r"worker ready", timeout=150)
        second_config = tmp_path / "second.toml"
        second_config.write_text(config)
        line = _one_error_line(run_cli(["run", "--config", str(second_config)], tmp_path))
        assert endpoint in line and "another process is publishing" in line
        # the first one still owns the endpoint: a new subscriber hears it
        with Subscriber(endpoint, kinds=["score"]) as sub:
            wait_for(lambda: isinstance(sub.recv(timeout=0.2), Score), 60,
                     "a score from the first daemon")
        assert first.stop() == 0
    assert not sock_path.exists()


def test_many_cameras_with_missing_files_one_short_line(tmp_path: Path) -> None:
    cameras = [(f"cam{i:02d}", str(tmp_path / f"missing{i:02d}.mp4")) for i in range(12)]
    config = write_config(tmp_path / "c.toml", f"tcp://127.0.0.1:{free_port()}", cameras)
    for command in (["run", "--config", str(config)], ["check-config", str(config)]):
        line = _one_error_line(run_cli(command, tmp_path))
        assert "12 of 12 cameras" in line and "missing00.mp4" in line, line
        assert line.endswith("; also cam01, cam02, cam03 and 8 more"), line
        assert "cam04" not in line and len(line) < 300, line


def test_many_cameras_not_ready_in_time_one_short_line(tmp_path: Path) -> None:
    cameras = [(f"cam{i:02d}", "synthetic:") for i in range(12)]
    extra = ("[capture]\ncameras_per_process = 2\n"
             "[worker]\nstartup_timeout_s = 0.2\nstartup_per_camera_s = 0.0")
    config = write_config(tmp_path / "c.toml", f"tcp://127.0.0.1:{free_port()}", cameras, extra)
    result = run_cli(["run", "--config", str(config)], tmp_path)
    assert result.returncode == 1, result.stderr
    lines = [line for line in result.stderr.splitlines() if "not ready after" in line]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert "worker, capture:0-1, capture:2-3 and 4 more not ready after 0.2 s" in lines[0]
    assert len(lines[0]) < 300, lines[0]
