"""Several cameras per capture process: grouping, and a hung camera among healthy ones.
Real daemon, processes, sockets and an HTTP MJPEG camera throughout."""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import pytest

from forecaster.client import Subscriber
from forecaster.daemon.capture import CaptureSpec
from forecaster.daemon.capture_group import group_specs
from forecaster.protocol import Score
from tests.conftest import free_port
from tests.daemon_harness import Daemon, config_text, wait_for
from tests.mjpeg_server import MJPEGServer


def _specs(count: int) -> list[CaptureSpec]:
    return [CaptureSpec(camera=f"c{i}", index=i, source="synthetic:", ring=f"r{i}",
                        size=(64, 64)) for i in range(count)]


def test_cameras_are_grouped_in_order_as_evenly_as_the_limit_allows() -> None:
    groups = group_specs(_specs(20), 16, "info")
    assert [group.indices for group in groups] == [tuple(range(10)), tuple(range(10, 20))]
    assert [group.role for group in groups] == ["capture:0-9", "capture:10-19"]
    assert [len(group.specs) for group in group_specs(_specs(33), 16, "info")] == [11, 11, 11]
    one = group_specs(_specs(3), 1, "info")
    assert [group.role for group in one] == ["capture:c0", "capture:c1", "capture:c2"]
    with pytest.raises(ValueError, match="at least 1, got 0"):
        group_specs(_specs(3), 0, "info")


def test_the_daemon_runs_at_least_one_capture_process_a_core() -> None:
    def sizes(count: int, cores: int) -> list[int]:
        return [len(group.specs) for group in group_specs(_specs(count), 16, "info",
                                                          min_groups=cores)]

    assert sizes(16, 2) == [8, 8]  # not one process of 16 on two cores
    assert sizes(3, 2) == [2, 1]
    assert sizes(1, 2) == [1]  # never more processes than cameras
    assert sizes(64, 2) == [16, 16, 16, 16]  # the limit still holds
    assert sizes(16, 1) == [16]


class Scores:
    """Every score received, per camera: (seq, capture time stamp)."""

    def __init__(self, sub: Subscriber, daemon: Daemon) -> None:
        self.sub = sub
        self.daemon = daemon
        self.seen: dict[str, list[tuple[int, float]]] = {}

    def pump(self, seconds: float = 0.1) -> None:
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            msg = self.sub.recv(timeout=left)
            if isinstance(msg, Score):
                self.seen.setdefault(msg.camera, []).append((msg.seq, msg.ts))
        if self.daemon.proc.poll() is not None:
            raise AssertionError(f"daemon exited:\n{self.daemon.log()}")

    def stamps(self, camera: str) -> list[float]:
        return [ts for _, ts in self.seen.get(camera, [])]

    def until_scored_after(self, cameras: list[str], since: float, timeout: float) -> None:
        """Pump until each camera has a score of a frame captured after ``since``."""

        def check() -> bool:
            self.pump()
            return all(any(ts > since for ts in self.stamps(camera)) for camera in cameras)

        wait_for(check, timeout, f"scores of {cameras} captured after {since:.1f}", interval=0)


@pytest.mark.timeout(150)
def test_a_hung_camera_stalls_only_itself_and_its_process_is_restarted(tmp_path: Path) -> None:
    server = MJPEGServer(fps=10, width=64, height=64, lifetime_s=140).start()
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    synthetic = "synthetic:?fps=10&width=64&height=64&anomaly_rate=0&seed="
    cameras = [("door", server.url), ("a", synthetic + "1"), ("b", synthetic + "2"),
               ("c", synthetic + "3")]
    config = config_text(endpoint, cameras, {
        "capture": {"cameras_per_process": 2},
        "service": {"stall_timeout_s": 3.0},
    })
    try:
        with Daemon(tmp_path, config) as daemon, Subscriber(endpoint, kinds=["score"]) as sub:
            scores = Scores(sub, daemon)
            # every camera delivers, four cameras in two capture processes
            scores.until_scored_after(["door", "a", "b", "c"], 0.0, 120)
            first, second = daemon.child_pid("capture:0-1"), daemon.child_pid("capture:2-3")
            assert Path(f"/proc/{first}/comm").read_text().strip() == "fc-cap:0-1"
            assert Path(f"/proc/{second}/comm").read_text().strip() == "fc-cap:2-3"

            # the door camera hangs inside its source read (connected, no frames)
            server.paused.set()
            killed = daemon.wait_log(
                rf"capture:0-1 \(pid {first}\) stalled \(camera door: its loop has not turned "
                rf"for \d+ s\) and was killed; restarting it", 30)
            restarted_at = time.time()
            scores.pump(1.0)  # scores of the frames captured before the kill
            door_last = max(scores.stamps("door"))
            # camera a, in the same process as the hung one, went on meanwhile: the stall was
            # seen 3 s after the door's last frame, a's frames up to then are all there
            during = [ts for ts in scores.stamps("a") if door_last + 1.0 < ts < door_last + 2.5]
            assert len(during) >= 5, (door_last, scores.stamps("a")[-30:])

            # camera a comes back in the new process while the door is still hung in its
            # open; the other process was left alone
            scores.until_scored_after(["a"], restarted_at, 40)
            assert daemon.child_pid("capture:2-3") == second
            os.kill(second, 0)
            log = daemon.log()
            assert not re.search(r"capture:2-3 .*restarting", log), log

            server.paused.clear()  # the door camera answers again
            scores.until_scored_after(["door", "b", "c"], restarted_at, 40)
            daemon.wait_log(r"capture:0-1 ready again", 30, after=killed.end())
            assert daemon.stop() == 0
            log = daemon.log()
            assert "Traceback" not in log, log
            assert log.count("restarting it") == 1, log
    finally:
        server.stop()
