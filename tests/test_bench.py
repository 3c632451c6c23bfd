"""``forecaster bench``: the memory soak's measurements and the command itself."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from forecaster.bench.daemon import _children, _rss_mb, _slope

ROOT = Path(__file__).resolve().parent.parent


def test_slope_is_per_100k_ticks_and_needs_three_points() -> None:
    ticks = [0.0, 10_000.0, 20_000.0, 30_000.0]
    assert _slope(ticks, [100.0, 100.5, 101.0, 101.5]) == pytest.approx(5.0)
    assert _slope(ticks, [100.0] * 4) == pytest.approx(0.0, abs=1e-9)
    assert _slope(ticks[:2], [1.0, 2.0]) is None
    assert _slope([5.0, 5.0, 5.0], [1.0, 2.0, 3.0]) is None


@pytest.mark.skipif(not Path("/proc/self/comm").exists(), reason="needs Linux /proc")
def test_children_are_found_by_the_name_they_give_themselves(tmp_path: Path) -> None:
    script = textwrap.dedent(
        """
        import multiprocessing, time
        from forecaster.ipc.channels import set_process_name

        def child():
            set_process_name("fc-worker")
            time.sleep(30)

        if __name__ == "__main__":
            multiprocessing.set_start_method("spawn")
            p = multiprocessing.Process(target=child)
            p.start()
            print("started", flush=True)
            p.join()
        """
    )
    path = tmp_path / "parent.py"  # spawn re-imports the main module: a file, not -c
    path.write_text(script)
    parent = subprocess.Popen([sys.executable, str(path)], stdout=subprocess.PIPE, text=True,
                              cwd=ROOT)
    try:
        assert parent.stdout is not None and parent.stdout.readline().strip() == "started"
        deadline = time.monotonic() + 20
        names: dict[int, str] = {}
        while time.monotonic() < deadline:
            names = _children(parent.pid)
            if "fc-worker" in names.values():
                break
            time.sleep(0.1)
        assert "fc-worker" in names.values(), names
        pid = next(pid for pid, name in names.items() if name == "fc-worker")
        rss = _rss_mb(pid)
        assert rss is not None and rss > 1.0
    finally:
        for child in _children(parent.pid):
            os.kill(child, 15)
        parent.terminate()
        parent.wait(timeout=30)
    deadline = time.monotonic() + 20  # the killed child may take a moment to go
    while _rss_mb(pid) is not None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _rss_mb(pid) is None  # gone


def test_bench_soak_runs_the_daemon_and_reports_each_process(tmp_path: Path) -> None:
    out = tmp_path / "soak.json"
    proc = subprocess.run(
        [sys.executable, "-m", "forecaster", "bench", "--skip-archs", "--soak-ticks", "1500",
         "--out", str(out)],
        capture_output=True, text=True, timeout=300, cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    soak = json.loads(out.read_text())["soak"]
    assert soak["exit_code"] == 0
    assert 0 < soak["ticks_processed"] <= 1500
    assert set(soak["processes"]) == {"supervisor", "capture", "worker"}
    worker = soak["processes"]["worker"]
    # the worker holds TensorFlow and the model: far bigger than a capture process
    assert worker["rss_end_mb"] > 2 * soak["processes"]["capture"]["rss_end_mb"]
    assert "slope" in proc.stdout and "worker" in proc.stdout
    # every bench reports the scoring path's CPU per frame next to the cue alone's
    scoring = json.loads(out.read_text())["scoring"]
    cue, default = (scoring[k]["cpu_ms_per_frame"] for k in ("cue alone", "default"))
    assert 0 < cue < default  # the default path computes the cue and more
    assert scoring["default_to_cue"] == pytest.approx(default / cue)
    assert "cue alone (no model)" in proc.stdout


def test_replay_against_decode_times_both_scorer_modes_and_decoding(tmp_path: Path) -> None:
    """`bench --video`'s replay row: a replay with the motion cue and one without, each
    against decoding alone in the same rounds, with the CPU each takes per frame."""
    import cv2
    import numpy as np

    from forecaster.bench.replay import MODES, replay_against_decode

    video = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 25, (160, 120))
    for index in range(30):
        frame = np.full((120, 160, 3), 40, np.uint8)
        cv2.circle(frame, (10 + 4 * index, 60), 8, (230, 230, 230), -1)
        writer.write(frame)
    writer.release()
    report = replay_against_decode(video, rounds=1)
    assert report["rounds"] == 1 and report["decode_fps_median"] > 0
    assert report["decode_cpu_ms_per_frame"] > 0
    for mode in MODES:
        row = report[mode]
        assert row["replay_fps_median"] > 0 and row["cpu_ms_per_frame"] > 0
        assert row["ratios"][0] == pytest.approx(row["replay_fps"][0] / report["decode_fps"][0])
    # the optical flow of the motion cue is work that the global mode does not do
    assert report["fused"]["cpu_ms_per_frame"] > report["global"]["cpu_ms_per_frame"]


@pytest.mark.parametrize("content", [None, b"not a model"])
def test_bench_camera_model_that_is_no_model_is_one_line_and_exit_2(tmp_path: Path,
                                                                     content: bytes | None
                                                                     ) -> None:
    model = tmp_path / "m.keras"
    if content is not None:
        model.write_bytes(content)
    video = tmp_path / "v.avi"
    video.write_bytes(b"\0")  # never read: the model is checked first
    proc = subprocess.run(
        [sys.executable, "-m", "forecaster", "bench", "--skip-archs", "--cameras", "1",
         "--video", str(video), "--camera-model", str(model)],
        capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("forecaster: error")]
    assert len(errors) == 1 and str(model) in errors[0], proc.stderr[-2000:]


def test_bench_recording_runs_each_way_of_recording_on_an_h264_file() -> None:
    """``forecaster bench --recording``: the capture loop over a real H.264 file with
    recording off, copying the packets and encoding the frames, each measured."""
    from forecaster.bench.recording import MODES, bench_recording, format_recording

    report = bench_recording(frames=30, width=320, height=180, repeats=1)
    assert list(report["modes"]) == list(MODES)
    for row in report["modes"].values():
        assert row["cpu_ms_per_frame"] > 0 and row["wall_ms_per_frame"] > 0
    assert report["modes"]["off"]["cpu_ratio"] == 1.0
    assert report["clip_frames"] == 30  # the last clip written holds every frame
    text = "\n".join(format_recording(report))
    assert "320x180 H.264 file" in text and "copy-event" in text
