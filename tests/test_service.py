"""Running under systemd: sd_notify, the watchdog rule, SIGHUP, the unit files."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

from forecaster.client import Subscriber
from forecaster.daemon.notify import SystemdNotifier
from forecaster.ipc.health import CameraField, DaemonField, Health, RestartBudget, StallDetector
from forecaster.protocol import Score
from tests.conftest import free_port
from tests.daemon_harness import Daemon, config_text, wait_for

ROOT = Path(__file__).resolve().parents[1]


class NotifySocket:
    """A stand-in for systemd's notification socket, recording every datagram."""

    def __init__(self, abstract: bool, folder: Path | None = None) -> None:
        name = f"forecaster-test-{uuid.uuid4().hex[:12]}"
        self.env_value = f"@{name}" if abstract else str(folder / f"{name}.sock")
        address = "\0" + name if abstract else self.env_value
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address)
        self.sock.settimeout(0.1)
        self.messages: list[tuple[float, dict[str, str]]] = []
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._receive, daemon=True)
        self._thread.start()

    def _receive(self) -> None:
        while not self._closed.is_set():
            try:
                data = self.sock.recv(4096)
            except (TimeoutError, OSError):
                continue
            fields = dict(line.split("=", 1) for line in data.decode().splitlines() if "=" in line)
            with self._lock:
                self.messages.append((time.monotonic(), fields))

    def since(self, t: float, key: str) -> list[str]:
        with self._lock:
            return [m[key] for when, m in self.messages if when >= t and key in m]

    def close(self) -> None:
        self._closed.set()
        self._thread.join(timeout=2)
        self.sock.close()


# -- units --------------------------------------------------------------------------------


def test_notifier_speaks_to_abstract_and_path_sockets(tmp_path: Path) -> None:
    for abstract in (True, False):
        listener = NotifySocket(abstract, tmp_path)
        try:
            env = {"NOTIFY_SOCKET": listener.env_value, "WATCHDOG_USEC": "4000000"}
            notifier = SystemdNotifier(env)
            assert env == {}, "notification variables must not reach child processes"
            assert notifier.ping_interval_s == 2.0
            began = time.monotonic() - 1
            assert notifier.ready("cam0 25.0 fps")
            assert notifier.watchdog()
            assert notifier.stopping()
            wait_for(lambda lst=listener, t=began: lst.since(t, "STOPPING"), 5, "STOPPING=1")
            assert listener.since(began, "READY") == ["1"]
            assert listener.since(began, "STATUS") == ["cam0 25.0 fps"]
            assert listener.since(began, "WATCHDOG") == ["1"]
            notifier.close()
        finally:
            listener.close()
    outside = SystemdNotifier({})
    assert not outside.enabled and outside.ping_interval_s is None and not outside.ready()
    other_pid = SystemdNotifier({"NOTIFY_SOCKET": "@x", "WATCHDOG_USEC": "1000", "WATCHDOG_PID": "1"})
    assert other_pid.ping_interval_s is None  # the watchdog is meant for another process


def test_restart_budget_counts_within_the_window() -> None:
    budget = RestartBudget(limit=2, window_s=60.0)
    assert budget.allow(0.0) and budget.allow(10.0)
    assert not budget.allow(20.0)
    assert budget.allow(61.0)  # the first restart left the window
    assert not RestartBudget(limit=0, window_s=60.0).allow(0.0)


def test_stall_rule() -> None:
    health = Health(2)
    detector = StallDetector(["a", "b"], stall_s=5.0)
    now = 1000.0

    def check(latest: list[int], worker: bool = True, captures: tuple[bool, bool] = (True, True)):
        return detector.check(health, latest, worker, list(captures), now=now)

    health.values[DaemonField.WORKER_BEAT] = now  # worker loop turned
    health.set(0, CameraField.CAPTURE_BEAT, now)
    health.set(1, CameraField.CAPTURE_BEAT, now)
    health.set(0, CameraField.WORKER_SEQ, 10)
    health.set(1, CameraField.WORKER_SEQ, 10)
    assert check([10, 10]) == []
    # a camera that is down: nothing new in its ring, its capture retrying: healthy
    now += 60
    health.values[DaemonField.WORKER_BEAT] = now
    health.set(0, CameraField.CAPTURE_BEAT, now)
    health.set(1, CameraField.CAPTURE_BEAT, now)
    assert check([10, 10]) == []
    # frames waiting and the worker not taking them: stalled after stall_s
    assert check([20, 10]) == []
    now += 6
    health.values[DaemonField.WORKER_BEAT] = now
    health.set(0, CameraField.CAPTURE_BEAT, now)
    health.set(1, CameraField.CAPTURE_BEAT, now)
    stalls = check([30, 10])
    assert [s.role for s in stalls] == ["worker"] and "camera a" in stalls[0].reason
    health.set(0, CameraField.WORKER_SEQ, 30)  # it caught up
    assert check([30, 10]) == []
    # a capture whose loop stopped turning
    now += 6
    health.values[DaemonField.WORKER_BEAT] = now
    health.set(0, CameraField.CAPTURE_BEAT, now)
    assert [s.role for s in check([30, 10])] == ["capture:b"]
    # ... unless it is not running (finished, or being restarted)
    assert check([30, 10], captures=(True, False)) == []
    # a worker whose loop stopped turning
    now += 6
    health.set(0, CameraField.CAPTURE_BEAT, now)
    assert [s.role for s in check([30, 10], captures=(True, False))] == ["worker"]
    assert check([30, 10], worker=False, captures=(True, False)) == []


def test_stall_rule_starts_its_clock_at_the_first_check() -> None:
    """Frames already waiting when the worker is first judged (it has fed none yet) get
    the whole stall_s from then, however long the machine has been up."""
    health = Health(1)
    detector = StallDetector(["a"], stall_s=5.0)
    now = 10_000.0
    health.values[DaemonField.WORKER_BEAT] = now
    health.set(0, CameraField.CAPTURE_BEAT, now)
    assert detector.check(health, [3], True, [True], now=now) == []
    assert detector.check(health, [8], True, [True], now=now + 4) == []
    health.values[DaemonField.WORKER_BEAT] = now + 6
    health.set(0, CameraField.CAPTURE_BEAT, now + 6)
    stalls = detector.check(health, [9], True, [True], now=now + 6)
    assert [s.role for s in stalls] == ["worker"] and "waited 6 s" in stalls[0].reason


def _unit_text(name: str) -> str:
    return (ROOT / "systemd" / name).read_text()


def test_units_declare_notify_watchdog_and_hardening() -> None:
    for name in ("forecaster.service", "forecaster@.service"):
        text = _unit_text(name)
        for directive in (
            "Type=notify", "NotifyAccess=main", "Restart=on-failure", "RestartSec=",
            "TimeoutStopSec=", "WatchdogSec=", "DynamicUser=yes", "ProtectSystem=strict",
            "ProtectHome=yes", "PrivateTmp=yes", "NoNewPrivileges=yes", "RuntimeDirectory=",
            "StateDirectory=", "DeviceAllow=char-video4linux rw", "SupplementaryGroups=video",
        ):
            assert re.search(rf"^{re.escape(directive)}", text, re.M), (name, directive)
        # the daemon's own default (TensorFlow's native errors off) applies, not a louder one
        assert "TF_CPP_MIN_LOG_LEVEL" not in text, name
    assert "--config /etc/forecaster/%i.toml" in _unit_text("forecaster@.service")


def test_relay_unit_runs_the_relay_hardened() -> None:
    text = _unit_text("forecaster-relay.service")
    assert re.search(r"^ExecStart=\S+/forecaster relay --config /etc/forecaster/relay\.toml$",
                     text, re.M)
    for directive in (
        "Restart=on-failure", "TimeoutStopSec=", "DynamicUser=yes", "ProtectSystem=strict",
        "ProtectHome=yes", "PrivateTmp=yes", "NoNewPrivileges=yes", "PrivateDevices=yes",
        "MemoryDenyWriteExecute=yes", "CapabilityBoundingSet=", "SystemCallFilter=@system-service",
    ):
        assert re.search(rf"^{re.escape(directive)}", text, re.M), directive
    assert not re.search(r"^DeviceAllow=", text, re.M), "the relay needs no device"


@pytest.mark.timeout(60)
def test_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze not installed (Debian package: systemd)")
    program = Path(sys.executable).with_name("forecaster")
    if not program.exists():
        pytest.skip(f"{program} not installed; verify needs an existing ExecStart program")
    units = []
    for name, target in (("forecaster.service", "forecaster.service"),
                         ("forecaster@.service", "forecaster@check.service"),
                         ("forecaster-relay.service", "forecaster-relay.service")):
        text = _unit_text(name).replace("/opt/forecaster/.venv/bin/forecaster", str(program))
        (tmp_path / target).write_text(text)
        units.append(str(tmp_path / target))
    result = subprocess.run(
        [analyze, "verify", "--man=no", *units], capture_output=True, text=True, timeout=50
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "" and result.stderr.strip() == "", result.stderr


# -- the daemon under a notification socket -----------------------------------------------


@pytest.mark.timeout(120)
def test_ready_status_watchdog_stall_sighup_and_stopping(tmp_path: Path) -> None:
    listener = NotifySocket(abstract=True)
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    config = config_text(
        endpoint,
        [("cam0", "synthetic:?fps=25&seed=2")],
        {"service": {"stall_timeout_s": 2.0}},
    )
    env = {"NOTIFY_SOCKET": listener.env_value, "WATCHDOG_USEC": "1000000"}  # ping every 0.5 s
    try:
        with Daemon(tmp_path, config, env=env) as daemon, \
                Subscriber(endpoint, kinds=["score"]) as sub:
            wait_for(lambda: listener.since(0, "READY"), 120, "READY=1")
            log = daemon.log()
            # READY=1 only once capture and worker confirmed their start-up
            assert "worker ready" in log and "capture:cam0 ready" in log, log
            began = time.monotonic()
            wait_for(lambda: len(listener.since(began, "WATCHDOG")) >= 3, 10, "watchdog pings")
            status = wait_for(
                lambda: [s for s in listener.since(began, "STATUS") if "fps" in s and "score" in s],
                10, "STATUS with fps and score",
            )
            assert re.search(r"cam0 \d+\.\d fps, score (-?\d+\.\d\d|-)", status[-1]), status

            # SIGHUP is ignored safely: still running and publishing
            daemon.proc.send_signal(signal.SIGHUP)
            daemon.wait_log(r"received SIGHUP: ignored", timeout=10)
            hup = time.monotonic()
            wait_for(lambda: isinstance(sub.recv(timeout=0.5), Score), 10, "scores after SIGHUP")
            assert daemon.proc.poll() is None
            wait_for(lambda: listener.since(hup, "WATCHDOG"), 5, "pings after SIGHUP")

            # a stalled worker stops the pings (systemd would then restart the service) ...
            worker = daemon.child_pid("worker")
            mark = len(daemon.log())  # a stall of a loaded machine before this is not the one
            os.kill(worker, signal.SIGSTOP)
            try:
                stalled = daemon.wait_log(r"stalled \(worker: .*watchdog pings stopped", 15,
                                          after=mark)
                quiet = time.monotonic()
                time.sleep(2.0)  # the absence of pings is the thing under test
                assert listener.since(quiet + 0.1, "WATCHDOG") == []
                assert any(s.startswith("STALLED") for s in listener.since(quiet, "STATUS"))
                assert daemon.child_pid("worker") == worker, "a watchdog leaves it to systemd"
            finally:
                os.kill(worker, signal.SIGCONT)
            # ... and frames flowing again bring them back
            daemon.wait_log(r"no process is stalled any more; watchdog pings resume", 15,
                            after=stalled.end())
            resumed = time.monotonic()
            wait_for(lambda: listener.since(resumed, "WATCHDOG"), 5, "pings after the stall")

            stopping = time.monotonic()
            code = daemon.stop(timeout=15)
            assert time.monotonic() - stopping < 5.0
            assert code == 0, daemon.log()
            wait_for(lambda: listener.since(stopping, "STOPPING"), 5, "STOPPING=1")
            assert "Traceback" not in daemon.log()
    finally:
        listener.close()
