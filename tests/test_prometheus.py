"""Prometheus metrics: served by the supervisor over HTTP, read with urllib."""

from __future__ import annotations

import socket
import subprocess
import sys
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from forecaster.config import Config, parse_config
from forecaster.daemon.prometheus import MetricsServer
from forecaster.ipc.health import CameraField, Health
from forecaster.ipc.ring import FrameRing
from tests.conftest import free_port
from tests.daemon_harness import Daemon, config_text, daemon_env, wait_for

pytestmark = pytest.mark.timeout(60)

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(port: int) -> Samples:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        assert response.status == 200
        text = response.read().decode()
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


class FakeDaemon:
    """What the collector reads, without processes."""

    def __init__(self, ring: FrameRing) -> None:
        self.camera_ids = ["cam0"]
        self.rings = [ring]
        self.health = Health(1)
        self.restarts = {"worker": 0, "capture:cam0": 0}
        self.healthy = True


@pytest.fixture
def ring() -> Iterator[FrameRing]:
    ring = FrameRing.create(f"forecaster_test_{uuid.uuid4().hex[:8]}", 16, 16, slots=4)
    yield ring
    ring.close()
    ring.unlink()


def test_metrics_are_off_by_default_and_loopback() -> None:
    assert Config().metrics.enabled is False
    assert Config().metrics.address == "127.0.0.1"


@pytest.mark.parametrize("address", ["0.0.0.0", "192.168.1.10", "::"])
def test_non_loopback_metrics_address_needs_allow_insecure(tmp_path: Path, address: str) -> None:
    config = tmp_path / "c.toml"
    config.write_text(f'[metrics]\nenabled = true\naddress = "{address}"\nport = {free_port()}\n')
    for command in (["check-config", str(config)], ["run", "--config", str(config)]):
        result = subprocess.run(
            [sys.executable, "-m", "forecaster", *command],
            cwd=tmp_path, env=daemon_env(), capture_output=True, text=True, timeout=60,
        )
        assert result.returncode == 2, result.stderr
        assert "Traceback" not in result.stderr
        lines = [line for line in result.stderr.splitlines() if "error" in line.lower()]
        assert len(lines) == 1, result.stderr
        assert f"metrics.address = {address!r}" in lines[0] and "allow_insecure" in lines[0]
    allowed = {"enabled": True, "address": address, "allow_insecure": True}
    assert parse_config({"metrics": allowed}).metrics.address == address
    assert parse_config({"metrics": {"address": address}}).metrics.enabled is False  # no socket
    assert parse_config({"metrics": {"enabled": True, "address": "::1"}}).metrics.address == "::1"


def test_counters_move_between_two_scrapes(ring: FrameRing) -> None:
    daemon = FakeDaemon(ring)
    server = MetricsServer("127.0.0.1", 0, daemon)
    try:
        ring.set_connected(True)
        ring.write(np.zeros((16, 16), np.uint8), 1.0)
        daemon.health.add(0, CameraField.PROCESSED)
        daemon.health.add(0, CameraField.PRIMES)  # the first prime is not a reset
        daemon.health.observe_inference(0.004)
        daemon.health.count_message("score")
        first = scrape(server.port)
        assert value(first, "forecaster_frames_total", camera="cam0") == 1
        assert value(first, "forecaster_frames_processed_total", camera="cam0") == 1
        assert value(first, "forecaster_state_resets_total", camera="cam0") == 0
        assert value(first, "forecaster_source_up", camera="cam0") == 1
        assert value(first, "forecaster_inference_duration_seconds_count") == 1
        assert value(first, "forecaster_inference_duration_seconds_bucket", le="0.005") == 1
        assert value(first, "forecaster_inference_duration_seconds_bucket", le="0.0025") == 0
        assert value(first, "forecaster_messages_published_total", kind="score") == 1
        for reason in ("worker_behind", "bad_frame", "rate_limited"):
            assert value(first, "forecaster_frames_dropped_total", camera="cam0", reason=reason) == 0
        assert value(first, "forecaster_healthy") == 1

        for _ in range(3):
            ring.write(np.zeros((16, 16), np.uint8), 2.0)
        ring.count_skipped(2)
        ring.count_rate_limited(5)
        ring.set_connected(False)
        daemon.health.add(0, CameraField.DROPPED, 4)
        daemon.health.add(0, CameraField.PRIMES)
        daemon.health.add(0, CameraField.ANOMALY_EVENTS)
        daemon.health.observe_inference(0.3)
        daemon.restarts["worker"] = 1
        daemon.healthy = False
        second = scrape(server.port)
        assert value(second, "forecaster_frames_total", camera="cam0") == 4
        assert value(second, "forecaster_frames_dropped_total", camera="cam0",
                     reason="worker_behind") == 4
        assert value(second, "forecaster_frames_dropped_total", camera="cam0",
                     reason="bad_frame") == 2
        assert value(second, "forecaster_frames_dropped_total", camera="cam0",
                     reason="rate_limited") == 5
        assert value(second, "forecaster_state_resets_total", camera="cam0") == 1
        assert value(second, "forecaster_anomaly_events_total", camera="cam0") == 1
        assert value(second, "forecaster_source_up", camera="cam0") == 0
        assert value(second, "forecaster_inference_duration_seconds_count") == 2
        assert value(second, "forecaster_inference_duration_seconds_sum") == pytest.approx(0.304)
        assert value(second, "forecaster_process_restarts_total", role="worker") == 1
        assert value(second, "forecaster_healthy") == 0
    finally:
        server.close()


def test_metrics_port_in_use_exit_2(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        config = tmp_path / "c.toml"
        config.write_text(f"[metrics]\nenabled = true\nport = {port}\n")
        result = subprocess.run(
            [sys.executable, "-m", "forecaster", "run", "--config", str(config)],
            cwd=tmp_path, env=daemon_env(), capture_output=True, text=True, timeout=60,
        )
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if "error" in line.lower()]
    assert len(lines) == 1 and "metrics.port" in lines[0] and str(port) in lines[0], result.stderr


@pytest.mark.timeout(150)
def test_daemon_metrics_move_while_frames_flow(tmp_path: Path) -> None:
    port = free_port()
    config = config_text(
        f"tcp://127.0.0.1:{free_port()}",
        [("cam0", "synthetic:?fps=25&seed=6")],
        {"metrics": {"enabled": True, "port": port}},
    )
    with Daemon(tmp_path, config) as daemon:

        def scores_published() -> Samples | None:
            assert daemon.proc.poll() is None, daemon.log()
            try:
                samples = scrape(port)
            except OSError:
                return None
            published = value(samples, "forecaster_messages_published_total", kind="score")
            return samples if published > 0 else None

        first = wait_for(scores_published, 120, "scores counted in the metrics", interval=0.2)
        second = wait_for(
            lambda: (s := scrape(port))
            and value(s, "forecaster_frames_total", camera="cam0")
            >= value(first, "forecaster_frames_total", camera="cam0") + 10
            and s,
            10, "frames counted", interval=0.2,
        )
        for name, labels in (
            ("forecaster_frames_total", {"camera": "cam0"}),
            ("forecaster_frames_processed_total", {"camera": "cam0"}),
            ("forecaster_inference_duration_seconds_count", {}),
            ("forecaster_messages_published_total", {"kind": "score"}),
            ("forecaster_messages_published_total", {"kind": "forecast"}),
        ):
            assert value(second, name, **labels) > value(first, name, **labels), name
        assert value(second, "forecaster_source_up", camera="cam0") == 1
        assert value(second, "forecaster_healthy") == 1
        assert value(second, "forecaster_process_restarts_total", role="worker") == 0
        assert value(second, "forecaster_build_info", version="0.1.0") == 1
        assert daemon.stop() == 0
        log = daemon.log()
        assert f"serving Prometheus metrics on http://127.0.0.1:{port}/metrics" in log
        assert "GET /metrics" not in log  # no access log per scrape
