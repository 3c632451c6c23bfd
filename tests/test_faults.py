"""Faults the daemon survives: a camera that goes away, killed and stalled processes, a
subscriber that never reads, corrupt inputs. Real processes and sockets throughout."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import threading
import time
import zipfile
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest
import zmq

from forecaster.client import Subscriber
from forecaster.daemon.capture import Backoff, Capture, CaptureSpec
from forecaster.ipc.health import CameraField, Health
from forecaster.ipc.ring import FrameRing
from forecaster.model.artifact import CARD_MEMBER, bundled_model_path, read_card
from forecaster.protocol import Forecast, Score, Status
from forecaster.sources.synthetic import SyntheticScene
from tests.conftest import free_port
from tests.daemon_harness import Daemon, config_text, daemon_env, rss_bytes, wait_for
from tests.mjpeg_server import MJPEGServer


def test_backoff_doubles_up_to_the_cap_and_resets() -> None:
    backoff = Backoff(cap=5.0)
    assert [backoff.next() for _ in range(6)] == [0.5, 1.0, 2.0, 4.0, 5.0, 5.0]
    backoff.reset()
    assert backoff.next() == 0.5
    assert Backoff(cap=0.2).next() == 0.2  # a cap under the first delay wins


class _Wakeups:
    def put_nowait(self, item: int) -> None:
        """The worker is not there: wake-ups go nowhere."""


def test_a_restarted_capture_resumes_a_file_where_the_last_one_stopped(tmp_path: Path) -> None:
    folder = tmp_path / "frames"
    folder.mkdir()
    for i in range(12):
        cv2.imwrite(str(folder / f"{i:02d}.png"), np.full((24, 32), i * 20, np.uint8))
    ring = FrameRing.create(f"forecaster_test_{os.getpid()}_resume", 16, 16, slots=16)
    try:
        health = Health(1)
        spec = CaptureSpec(camera="f", index=0, source=str(folder), ring=ring.name,
                           size=(16, 16), max_frames=5)
        first = Capture(spec, ring, _Wakeups(), threading.Event(), health)
        first.open()
        first.run()
        assert ring.latest_seq == 4 and ring.stats().epoch == 0
        # the process died; its replacement goes on from frame 5 in a new epoch
        second = Capture(replace(spec, max_frames=None), ring, _Wakeups(), threading.Event(),
                         health)
        second.open()
        assert ring.stats().epoch == 1 and health.get(0, CameraField.EPOCH_START) == 5
        second.run()
        stats = ring.stats()
        assert stats.frames_captured == 12 and stats.ended
        out = np.empty((7, 16, 16), np.uint8)
        assert ring.read(5, 11, out, np.empty(7))
        assert [int(frame.mean()) for frame in out] == [i * 20 for i in range(5, 12)]
    finally:
        ring.close()
        ring.unlink()


class Stream:
    """Receives every message and keeps them, for tests that wait on conditions."""

    def __init__(self, sub: Subscriber, daemon: Daemon | None = None) -> None:
        self.sub = sub
        self.daemon = daemon
        self.messages: list = []

    def pump(self, seconds: float = 0.2) -> None:
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            msg = self.sub.recv(timeout=left)
            if msg is not None:
                self.messages.append(msg)

    def until(self, predicate, timeout: float, what: str):
        """Pump until ``predicate(message)`` holds for a new message; return that message."""
        start = len(self.messages)

        def check():
            self.pump(0.1)
            if self.daemon is not None and self.daemon.proc.poll() is not None:
                raise AssertionError(f"daemon exited while waiting for {what}:\n{self.daemon.log()}")
            return next((m for m in self.messages[start:] if predicate(m)), None)

        return wait_for(check, timeout, what, interval=0)

    def statuses(self, since: int = 0) -> list[Status]:
        return [m for m in self.messages[since:] if isinstance(m, Status)]


@pytest.mark.timeout(90)
def test_network_camera_goes_away_and_comes_back(tmp_path: Path) -> None:
    server = MJPEGServer(fps=25, lifetime_s=80).start()
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    config = config_text(endpoint, [("door", server.url)], {"capture": {"reconnect_max_s": 1.0}})
    try:
        with Daemon(tmp_path, config) as daemon, Subscriber(endpoint) as sub:
            stream = Stream(sub, daemon)
            stream.until(lambda m: isinstance(m, Score), 90, "scores from the stream")
            up = stream.until(lambda m: isinstance(m, Status) and m.connected, 10, "status up")

            server.stop()
            down = stream.until(
                lambda m: isinstance(m, Status) and not m.connected, 20, "status connected=false"
            )
            assert down.reason and "disconnected" in down.reason
            daemon.wait_log(r"capture\.door: source disconnected")
            mark = len(stream.messages)
            stream.until(lambda m: isinstance(m, Status), 5, "a status while down")
            stream.until(lambda m: isinstance(m, Status), 5, "another status while down")
            while_down = stream.statuses(mark)
            assert all(not s.connected for s in while_down)
            assert len({s.frames_captured for s in while_down}) == 1  # nothing captured

            server.start()  # the same port
            back = stream.until(
                lambda m: isinstance(m, Status) and m.connected, 20, "status connected=true"
            )
            daemon.wait_log(r"capture\.door: source reconnected after")
            first_new = down.frames_captured  # seq of the first frame after the reconnect
            score = stream.until(
                lambda m: isinstance(m, Score) and m.seq >= first_new, 20, "scores after return"
            )
            # the state was reset and rebuilt from new frames only: the first 10 new frames
            # build it up, none of them is scored against a pre-outage prediction
            assert score.seq >= first_new + 10, (score.seq, first_new)
            later = stream.until(
                lambda m: isinstance(m, Status) and m.frames_captured > back.frames_captured,
                10, "frames counted again",
            )
            assert later.state_resets > up.state_resets
            assert daemon.stop() == 0
            log = daemon.log()
            assert "Traceback" not in log
            # one line per event, not per frame or per attempt beyond the backoff
            assert log.count("source disconnected") == 1, log
    finally:
        server.stop()


@pytest.mark.timeout(150)
def test_killed_and_stalled_processes_are_restarted_within_a_budget(tmp_path: Path) -> None:
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    config = config_text(
        endpoint,
        [("cam0", "synthetic:?fps=25&seed=3")],
        {"service": {"max_restarts": 3, "restart_window_s": 120.0, "stall_timeout_s": 2.0}},
    )
    with Daemon(tmp_path, config) as daemon, Subscriber(endpoint) as sub:
        stream = Stream(sub, daemon)
        stream.until(lambda m: isinstance(m, Score), 120, "first scores")
        before = stream.until(lambda m: isinstance(m, Status), 5, "a status")

        # 1. the worker killed mid-run: restarted, scores resume, capture went on meanwhile
        worker = daemon.child_pid("worker")
        os.kill(worker, signal.SIGKILL)
        killed = time.monotonic()
        daemon.wait_log(rf"worker \(pid {worker}\) was killed by SIGKILL; restarting it")
        resumed = stream.until(
            lambda m: isinstance(m, Score) and m.seq > before.seq + 10, 60, "scores after restart"
        )
        print(f"scores resumed {time.monotonic() - killed:.1f} s after the worker was killed")
        after = stream.until(lambda m: isinstance(m, Status), 5, "a status after restart")
        assert after.frames_captured > before.frames_captured
        assert resumed.seq > before.seq
        # frames kept coming during the restart (the capture process never stopped)
        gap_frames = after.frames_captured - before.frames_captured
        assert gap_frames >= 0.5 * 25 * (after.ts - before.ts), (gap_frames, after.ts - before.ts)
        assert daemon.child_pid("worker") != worker

        # 2. the capture process killed: restarted, counting on from where it was
        capture = daemon.child_pid("capture:cam0")
        os.kill(capture, signal.SIGKILL)
        daemon.wait_log(rf"capture:cam0 \(pid {capture}\) was killed by SIGKILL; restarting it")
        daemon.wait_log(r"capture:cam0 ready again", 30)
        counted = stream.until(
            lambda m: isinstance(m, Status) and m.frames_captured > after.frames_captured + 25,
            20, "frames counted after the capture restart",
        )
        stream.until(lambda m: isinstance(m, Score) and m.seq > counted.seq, 20, "scores again")

        # 3. a stalled worker (no systemd watchdog here): killed and restarted
        stalled = daemon.child_pid("worker")
        os.kill(stalled, signal.SIGSTOP)
        killed_line = daemon.wait_log(
            rf"worker \(pid {stalled}\) stalled \(.*\) and was killed; restarting", 20
        )
        daemon.wait_log(r"worker ready again", 60, after=killed_line.end())
        last = stream.until(lambda m: isinstance(m, Status), 5, "a status").seq
        stream.until(lambda m: isinstance(m, Score) and m.seq > last, 30, "scores after stall")

        # 4. one restart too many: exit 1, for systemd to take over
        os.kill(daemon.child_pid("worker"), signal.SIGKILL)
        assert daemon.proc.wait(timeout=20) == 1
        log = daemon.log()
        assert "restart budget spent" in log, log
        assert "Traceback" not in log
    assert list(Path("/dev/shm").glob(f"forecaster_{daemon.pid}_*")) == []


@pytest.mark.timeout(120)
def test_subscribers_that_never_read_do_not_grow_memory(tmp_path: Path) -> None:
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    config = config_text(
        endpoint, [("cam0", "synthetic:?fps=50&seed=4")], {"publish": {"sndhwm": 100}}
    )
    ctx = zmq.Context()
    sleepers = []
    try:
        with Daemon(tmp_path, config) as daemon, \
                Subscriber(endpoint, kinds=["score", "status"]) as sub:
            for _ in range(8):  # connect, subscribe to everything, never read
                sleeper = ctx.socket(zmq.SUB)
                sleeper.setsockopt(zmq.LINGER, 0)
                sleeper.setsockopt(zmq.RCVHWM, 10)
                sleeper.setsockopt(zmq.RCVBUF, 4096)  # little room in the kernel either
                sleeper.setsockopt(zmq.SUBSCRIBE, b"")
                sleeper.connect(endpoint)
                sleepers.append(sleeper)
            stream = Stream(sub, daemon)
            stream.until(lambda m: isinstance(m, Score), 120, "first scores")
            worker = daemon.child_pid("worker")
            stream.pump(4.0)  # let the sleepers' queues fill up and the worker warm up
            early = rss_bytes(worker)
            first = len(stream.messages)
            stream.pump(12.0)
            late = rss_bytes(worker)
            print(f"worker RSS {early / 2**20:.1f} MiB -> {late / 2**20:.1f} MiB")
            # Each sleeper may hold sndhwm messages (~0.4 MB) in the daemon; the tolerance
            # leaves room for the allocator's one-off steps (~20 MB seen) in TensorFlow.
            assert late - early < 32 * 2**20, (early, late)
            # the reading subscriber got every score in order; a gap only where the worker
            # itself skipped frames: counted as dropped (behind, it skips to the newest
            # frames keeping its state) or as a state reset (it re-primes)
            window = stream.messages[first:]
            scores = [m.seq for m in window if isinstance(m, Score)]
            assert len(scores) >= 0.5 * 50 * 12, len(scores)
            assert all(b > a for a, b in itertools.pairwise(scores))
            gaps = sum(b != a + 1 for a, b in itertools.pairwise(scores))
            baseline = stream.statuses()[: first][-1]
            final = stream.until(lambda m: isinstance(m, Status), 5, "a last status")
            explained = (final.state_resets - baseline.state_resets
                         + final.frames_dropped - baseline.frames_dropped)
            assert gaps <= explained, (gaps, baseline, final)

            # the supervisor itself killed: its children do not live on as orphans
            capture = daemon.child_pid("capture:cam0")
            daemon.proc.kill()
            daemon.proc.wait(timeout=10)
            wait_for(lambda: not _alive(worker) and not _alive(capture), 10, "children to exit")
    finally:
        for sleeper in sleepers:
            sleeper.close()
        ctx.term()


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state != "Z"


# -- corrupt inputs -----------------------------------------------------------------------


def _write_video(path: Path, frames: int) -> None:
    scene = SyntheticScene(seed=7, height=72, width=96)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 25.0, (96, 72))
    for i in range(frames):
        writer.write(cv2.cvtColor(scene.frame(i), cv2.COLOR_GRAY2BGR))
    writer.release()


def _run_cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "forecaster", *args], cwd=cwd, env=daemon_env(),
        capture_output=True, text=True, timeout=120,
    )


def _one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 2, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.strip().splitlines() if "error" in line.lower()]
    assert len(lines) == 1, result.stderr
    return lines[0]


@pytest.mark.timeout(120)
def test_bad_images_are_skipped_and_a_truncated_video_plays_what_it_has(tmp_path: Path) -> None:
    folder = tmp_path / "frames"
    folder.mkdir()
    scene = SyntheticScene(seed=8, height=72, width=96)
    for i in range(24):
        cv2.imwrite(str(folder / f"{i:03d}.png"), scene.frame(i))
    (folder / "005.png").write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(300))  # unreadable
    cv2.imwrite(str(folder / "011.png"), np.zeros((40, 40), np.uint8))  # another size: read
    video = tmp_path / "clip.avi"
    _write_video(video, 40)
    data = video.read_bytes()
    video.write_bytes(data[: len(data) * 6 // 10])  # cut in the middle of the frames

    endpoint = f"tcp://127.0.0.1:{free_port()}"
    # paced, with room in the rings: a busy machine must not make the worker skip frames
    config = config_text(
        endpoint,
        [("folder", str(folder), {"fps": 20}), ("clip", str(video), {"fps": 20})],
        {"capture": {"ring_frames": 64}},
    )
    with Subscriber(endpoint) as sub, Daemon(tmp_path, config) as daemon:
        stream = Stream(sub)
        wait_for(lambda: stream.pump(0.2) or daemon.proc.poll() is not None, 110, "daemon end")
        stream.pump(0.5)
        assert daemon.proc.returncode == 0, daemon.log()
    ended = {s.camera: s for s in stream.statuses() if s.ended}
    assert set(ended) == {"folder", "clip"}, daemon.log()
    assert ended["folder"].frames_dropped == 1  # skipped and counted
    assert ended["folder"].frames_captured == 23
    assert 0 < ended["clip"].frames_captured < 40
    forecasts = [m for m in stream.messages if isinstance(m, Forecast) and m.camera == "clip"]
    assert forecasts and forecasts[-1].seq == ended["clip"].frames_captured - 1
    log = daemon.log()
    assert "unreadable image skipped" in log and "005.png" in log
    assert "011.png" not in log
    assert "Traceback" not in log


@pytest.mark.timeout(60)
def test_video_cut_inside_its_header_exit_2(tmp_path: Path) -> None:
    video = tmp_path / "cut.avi"
    _write_video(video, 10)
    video.write_bytes(video.read_bytes()[:2000])
    line = _one_error_line(_run_cli(["run", "--source", str(video)], tmp_path))
    assert str(video) in line


@pytest.mark.timeout(60)
def test_model_file_that_is_not_a_model_exit_2(tmp_path: Path) -> None:
    model = tmp_path / "model.keras"
    model.write_bytes(os.urandom(5000))
    config = tmp_path / "c.toml"
    config.write_text(f'[model]\npath = "{model}"\n')
    line = _one_error_line(_run_cli(["run", "--config", str(config)], tmp_path))
    assert str(model) in line and "not a model" in line


def _forged_model(path: Path, **card_fields: object) -> Path:
    """The bundled model written to ``path`` with these fields of its card replaced."""
    with zipfile.ZipFile(bundled_model_path()) as original:
        card = json.loads(original.read(CARD_MEMBER))
        members = {name: original.read(name) for name in original.namelist()}
    card.update(card_fields)
    members[CARD_MEMBER] = json.dumps(card).encode()
    with zipfile.ZipFile(path, "w") as forged:
        for name, data in members.items():
            forged.writestr(name, data)
    return path


@pytest.mark.timeout(120)
def test_model_with_the_wrong_input_shape_exit_2(tmp_path: Path) -> None:
    # a real model whose card claims 32x32 frames: the network itself takes 64x64
    model = _forged_model(tmp_path / "shape.keras", height=32, width=32)
    config = tmp_path / "c.toml"
    config.write_text(f'[model]\npath = "{model}"\n[capture]\nsize = [32, 32]\n')
    line = _one_error_line(_run_cli(["run", "--config", str(config)], tmp_path))
    assert str(model) in line and "64x64" in line and "32x32" in line


@pytest.mark.timeout(120)
def test_card_that_does_not_fit_the_scorer_settings_exit_2_before_any_child(
    tmp_path: Path,
) -> None:
    calibration = read_card(bundled_model_path()).calibration
    junk = {**calibration, "fused": {**calibration["fused"], "top_k": "many"}}
    # a card of an older version: the whole-frame calibration only
    old = {k: calibration[k] for k in ("log_mse_mean", "log_mse_std", "frames")}
    cases = [
        # (model, [scorer] settings, what the line must say)
        (_forged_model(tmp_path / "old.keras", calibration=old), 'mode = "fused"',
         "needs calibration['fused']"),
        (_forged_model(tmp_path / "junk.keras", calibration=junk), "",
         "top_k must be an integer >= 1, got 'many'"),
        (_forged_model(tmp_path / "window.keras", window=10**9), "",
         "card field 'window' must be 2 to 1000, got 1000000000"),
    ]
    for index, (model, scorer, expected) in enumerate(cases):
        config = tmp_path / f"c{index}.toml"
        config.write_text(f'[model]\npath = "{model}"\n[scorer]\n{scorer}\n')
        for command in (
            ["check-config", str(config)],
            ["run", "--config", str(config)],
            ["replay", "synthetic:?frames=30", "--config", str(config), "--out",
             str(tmp_path / "r")],
            ["eval", "synthetic:?frames=30", "--config", str(config), "--out",
             str(tmp_path / "e")],
        ):
            line = _one_error_line(_run_cli(command, tmp_path))
            assert str(model) in line and expected in line, (command, line)
            if scorer:
                assert "scorer.mode = 'fused'" in line, line
    assert not (tmp_path / "r").exists() and not (tmp_path / "e").exists()
