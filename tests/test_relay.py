"""``forecaster relay``: a real relay process between real ZeroMQ publishers and subscribers.

Most tests stand in for the daemons with publishers in a thread of the test (protocol
messages of one camera every 20 ms): that is enough for everything the relay does, and
they can see the subscriptions that reach them. One test runs three real daemons.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zmq

from forecaster.client import CurveClient, Subscriber
from forecaster.ipc.publisher import CurveServer, Publisher
from forecaster.keys import generate_keypair
from forecaster.protocol import Forecast, Score, Status, decode, encode
from tests.conftest import free_port
from tests.daemon_harness import Daemon, config_text, daemon_env, wait_for


class FakeDaemon:
    """A publisher of one camera's score, forecast and status messages, in a thread.

    Without CURVE it is an XPUB socket that records the subscriptions reaching it; with
    CURVE it is the daemon's own :class:`Publisher`.
    """

    def __init__(self, camera: str, curve: CurveServer | None = None) -> None:
        self.camera = camera
        self.endpoint = f"tcp://127.0.0.1:{free_port()}"
        self.curve = curve
        self.subscriptions: list[bytes] = []
        self._stop = threading.Event()
        self._bound = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        assert self._bound.wait(10), "fake daemon did not bind"

    def _messages(self, seq: int) -> list[list[bytes]]:
        now = time.time()
        frame = np.full((8, 8), seq % 256, np.uint8)
        return [
            encode(Score(self.camera, seq, now, 0.01, 20.0, 0.5, False, 1.0)),
            encode(Forecast(self.camera, seq, now, seq + 1, frame)),
            encode(Status(self.camera, seq, now, 50.0, seq + 1, 0, 0, True, False)),
        ]

    def _run(self) -> None:
        ctx = zmq.Context()
        publisher: Publisher | None = None
        sock: zmq.Socket | None = None
        try:
            if self.curve is not None:
                publisher = Publisher(self.endpoint, linger_ms=0, context=ctx, curve=self.curve)
            else:
                sock = ctx.socket(zmq.XPUB)
                sock.setsockopt(zmq.LINGER, 0)
                sock.setsockopt(zmq.XPUB_VERBOSE, 1)
                sock.bind(self.endpoint)
            self._bound.set()
            seq = 0
            while not self._stop.is_set():
                for parts in self._messages(seq):
                    if publisher is not None:
                        publisher.send_parts(parts)
                    else:
                        assert sock is not None
                        sock.send_multipart(parts, zmq.NOBLOCK)
                seq += 1
                if sock is not None:
                    while sock.poll(20):
                        self.subscriptions.append(sock.recv())
                else:
                    time.sleep(0.02)  # the publishing rate of this stand-in
        finally:
            if publisher is not None:
                publisher.close()
            if sock is not None:
                sock.close(linger=0)
            ctx.term()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


class RelayProcess:
    """``python -m forecaster relay ...`` in a subprocess, its stderr in a file."""

    def __init__(self, tmp_path: Path, args: list[str], name: str = "relay") -> None:
        self.log_path = tmp_path / f"{name}.log"
        self._log = self.log_path.open("w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "forecaster", "relay", *args],
            cwd=tmp_path, env=daemon_env(), stdout=subprocess.DEVNULL, stderr=self._log,
        )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_log(self, pattern: str, timeout: float = 30.0) -> re.Match[str]:
        regex = re.compile(pattern)

        def check() -> re.Match[str] | None:
            match = regex.search(self.log())
            if match is None and self.proc.poll() is not None:
                raise AssertionError(f"relay exited ({self.proc.returncode}) before logging "
                                     f"{pattern!r}:\n{self.log()}")
            return match

        return wait_for(check, timeout, f"relay log line {pattern!r}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout=timeout)
        finally:
            self.close()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self._log.close()

    def __enter__(self) -> RelayProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _sub(endpoint: str, *prefixes: bytes, curve: CurveClient | None = None) -> zmq.Socket:
    sock: zmq.Socket = zmq.Context.instance().socket(zmq.SUB)
    sock.setsockopt(zmq.LINGER, 0)
    if curve is not None:
        sock.curve_serverkey = curve.server_public_key
        sock.curve_publickey = curve.public_key
        sock.curve_secretkey = curve.secret_key
    for prefix in prefixes:
        sock.setsockopt(zmq.SUBSCRIBE, prefix)
    sock.connect(endpoint)
    return sock


def _receive(sock: zmq.Socket, seconds: float) -> list[list[bytes]]:
    """Every message that arrives within ``seconds``."""
    deadline = time.monotonic() + seconds
    got: list[list[bytes]] = []
    while (left := deadline - time.monotonic()) > 0:
        if sock.poll(int(left * 1000) + 1):
            got.append(sock.recv_multipart())
    return got


def _health(sock: zmq.Socket, index: int, check: Any, timeout: float, what: str) -> dict:
    """The first ``relay/<index>`` header for which ``check(header)`` holds."""

    def poll() -> dict | None:
        if sock.poll(200):
            topic, header, *_ = sock.recv_multipart()
            if topic == f"relay/{index}".encode():
                parsed = json.loads(header)
                if check(parsed):
                    return parsed
        return None

    return wait_for(poll, timeout, what, interval=0)


def _one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("forecaster: error: "), result.stderr
    return lines[0]


def _relay_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "forecaster", "relay", *args], cwd=cwd,
                          env=daemon_env(), capture_output=True, text=True, timeout=60)


# -- bad input ------------------------------------------------------------------------------


@pytest.mark.timeout(120)
def test_bad_input_is_one_line_and_exit_2(tmp_path: Path) -> None:
    up = "tcp://127.0.0.1:5556"
    assert "--upstream" in _one_line_error(_relay_cli(cwd=tmp_path))
    line = _one_line_error(_relay_cli("--upstream", "tcp//edge1:5556", cwd=tmp_path))
    assert "relay.upstreams.0.endpoint" in line and "tcp//edge1:5556" in line
    line = _one_line_error(_relay_cli("--upstream", "tcp://edge1:*", cwd=tmp_path))
    assert "port" in line
    line = _one_line_error(_relay_cli("--upstream", up, "--bind", "tcp://0.0.0.0:5560",
                                      cwd=tmp_path))
    assert "refusing to relay unencrypted on tcp://0.0.0.0:5560" in line
    line = _one_line_error(_relay_cli("--upstream", "tcp://192.0.2.7:5556", cwd=tmp_path))
    assert "refusing to receive unencrypted from tcp://192.0.2.7:5556" in line
    line = _one_line_error(_relay_cli("--upstream", up, "--server-key",
                                      str(tmp_path / "nope.key"), cwd=tmp_path))
    assert "nope.key" in line
    line = _one_line_error(_relay_cli("--upstream", up, "--metrics-port", "http",
                                      cwd=tmp_path))
    assert "relay.metrics_port" in line and "'http'" in line
    config = tmp_path / "relay.toml"
    config.write_text(f'[relay]\nbind = "tcp://127.0.0.1:5560"\nhealth_intervall_s = 1\n'
                      f'[[relay.upstreams]]\nendpoint = "{up}"\n')
    line = _one_line_error(_relay_cli("--config", str(config), cwd=tmp_path))
    assert "relay.health_intervall_s: unknown key" in line and str(config) in line
    config.write_text(f'[[relay.upstreams]]\nendpoint = "{up}"\n[[relay.upstreams]]\n'
                      f'endpoint = "{up}"\n')
    line = _one_line_error(_relay_cli("--config", str(config), cwd=tmp_path))
    assert "upstreams listed twice" in line
    # a taken port: the bind fails before anything connects
    taken: zmq.Socket
    with zmq.Context.instance().socket(zmq.PUB) as taken:
        taken.setsockopt(zmq.LINGER, 0)
        port = free_port()
        taken.bind(f"tcp://127.0.0.1:{port}")
        line = _one_line_error(_relay_cli("--upstream", up, "--bind",
                                          f"tcp://127.0.0.1:{port}", cwd=tmp_path))
        assert f"cannot bind relay to tcp://127.0.0.1:{port}" in line


# -- forwarding, subscriptions, health --------------------------------------------------------


@pytest.mark.timeout(120)
def test_subscriptions_flow_upstream_and_health_is_its_own_topic(tmp_path: Path) -> None:
    fakes = [FakeDaemon("door"), FakeDaemon("yard")]
    bind = f"tcp://127.0.0.1:{free_port()}"
    args = ["--bind", bind, "--health-interval", "0.3"]
    for fake in fakes:
        args += ["--upstream", fake.endpoint]
    health = scores = None
    try:
        with RelayProcess(tmp_path, args) as relay:
            relay.wait_log(r"relaying 2 upstream\(s\) to " + re.escape(bind))
            scores = Subscriber(bind, kinds=["score"])
            health = _sub(bind, b"relay/")
            for index, fake in enumerate(fakes):
                header = _health(health, index, lambda h: h["connected"] and h["cameras"], 30,
                                 f"relay/{index} connected")
                assert header["upstream"] == fake.endpoint and header["index"] == index
                assert header["cameras"] == [fake.camera] and header["status_messages"] > 0
                assert header["connects"] == 1 and header["disconnects"] == 0
            cameras: set[str] = set()

            def both() -> bool:
                msg = scores.recv(timeout=0.5)
                assert msg is None or isinstance(msg, Score), msg  # score/ only, no relay/
                if msg is not None:
                    cameras.add(msg.camera)
                return cameras == {"door", "yard"}

            wait_for(both, 30, "scores of both cameras", interval=0)
            for _ in range(50):
                msg = scores.recv(timeout=0.1)
                assert msg is None or isinstance(msg, Score), msg
            # the daemons were asked for score/ and relay/ (the subscribers), status/ (the
            # relay's health watcher): never for everything, never for forecast frames
            for fake in fakes:
                asked = set(fake.subscriptions)
                assert b"\x01score/" in asked and b"\x01status/" in asked, asked
                assert b"\x01" not in asked and not any(s.startswith(b"\x01forecast") for s in
                                                        asked), asked
            code = relay.stop(signal.SIGTERM)
            assert code == 0, relay.log()
            assert "received SIGTERM: stopping" in relay.log()
            assert "Traceback" not in relay.log()
    finally:
        for sock in (health,):
            if sock is not None:
                sock.close(linger=0)
        if scores is not None:
            scores.close()
        for fake in fakes:
            fake.close()


@pytest.mark.timeout(120)
def test_config_file_duplicate_camera_metrics_and_subscribers_of_everything(
    tmp_path: Path,
) -> None:
    fakes = [FakeDaemon("cam0"), FakeDaemon("cam1"), FakeDaemon("cam0")]
    port = free_port()
    bind = f"tcp://127.0.0.1:{free_port()}"
    config = tmp_path / "relay.toml"
    config.write_text(
        f'[relay]\nbind = "{bind}"\nhealth_interval_s = 0.3\nmetrics_port = {port}\n'
        + "".join(f'[[relay.upstreams]]\nendpoint = "{fake.endpoint}"\n' for fake in fakes)
    )
    everything = _sub(bind, b"")
    client = Subscriber(bind)  # subscribes to "" too
    try:
        with RelayProcess(tmp_path, ["--config", str(config)]) as relay:
            line = relay.wait_log(r"ERROR .*camera cam0 is published by two upstreams.*")
            assert fakes[0].endpoint in line.group(0) and fakes[2].endpoint in line.group(0)
            assert fakes[1].endpoint not in line.group(0)

            def scrape() -> str | None:
                url = f"http://127.0.0.1:{port}/metrics"
                with urllib.request.urlopen(url, timeout=5) as response:
                    text = response.read().decode()
                received = re.search(r'^forecaster_relay_frames_total\{direction="received"\} '
                                     r'(\S+)', text, re.M)
                if received and float(received.group(1)) > 0:
                    return text
                return None

            text = wait_for(scrape, 30, "metrics with frames counted", interval=0.3)
            for fake in fakes:
                assert f'forecaster_relay_upstream_up{{upstream="{fake.endpoint}"}} 1.0' in text
                assert f'forecaster_relay_upstream_cameras{{upstream="{fake.endpoint}"}} 1.0' \
                    in text
            assert "forecaster_relay_duplicate_cameras 1.0" in text
            # a subscriber of everything gets the relay's health too; the client skips it
            wait_for(lambda: any(m[0].startswith(b"relay/") for m in _receive(everything, 0.5)),
                     10, "relay/ messages on a subscription to everything", interval=0)
            kinds = {type(client.recv(timeout=5)).__name__ for _ in range(200)}
            assert kinds == {"Score", "Forecast", "Status"}, kinds
            assert client.invalid == 0
            assert relay.stop(signal.SIGINT) == 0, relay.log()
            assert "received SIGINT: stopping" in relay.log()
    finally:
        everything.close(linger=0)
        client.close()
        for fake in fakes:
            fake.close()


# -- CURVE ------------------------------------------------------------------------------------


@pytest.mark.timeout(120)
def test_curve_on_both_sides_admits_only_allowed_subscribers(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    daemon_keys = generate_keypair(keys, "server")
    relay_keys = generate_keypair(keys, "relay")
    alice = generate_keypair(keys, "alice")
    bob = generate_keypair(keys, "bob")
    daemon_clients = tmp_path / "daemon-clients"  # the daemon admits the relay
    daemon_clients.mkdir()
    (daemon_clients / "relay.key").write_text(relay_keys.public.read_text())
    relay_clients = tmp_path / "relay-clients"  # the relay admits alice
    relay_clients.mkdir()
    (relay_clients / "alice.key").write_text(alice.public.read_text())

    fake = FakeDaemon("gate", CurveServer.from_files(str(daemon_keys.secret),
                                                     str(daemon_clients)))
    plain = FakeDaemon("lobby")  # a loopback daemon without CURVE, after the CURVE one
    bind = f"tcp://127.0.0.1:{free_port()}"
    args = ["--upstream", fake.endpoint, "--server-key", str(daemon_keys.public),
            "--upstream", plain.endpoint, "--server-key", "",
            "--curve-secret-key", str(relay_keys.secret),
            "--curve-allowed-clients", str(relay_clients), "--bind", bind,
            "--health-interval", "0.3"]
    socks: list[zmq.Socket] = []
    try:
        with RelayProcess(tmp_path, args) as relay:
            relay.wait_log(r"relaying 2 upstream\(s\) to .* \(CURVE\)")
            allowed = CurveClient.from_files(relay_keys.public, alice.secret)
            refused = CurveClient.from_files(relay_keys.public, bob.secret)
            socks = [_sub(bind, b"score/", b"relay/", curve=allowed),
                     _sub(bind, b"", curve=refused), _sub(bind, b"")]
            header = _health(socks[0], 0, lambda h: h["connected"], 30, "relay/0 connected")
            assert header["handshake_failures"] == 0 and header["last_error"] is None
            header = _health(socks[0], 1, lambda h: h["connected"], 30, "relay/1 connected")
            assert header["cameras"] == ["lobby"]
            topics: set[bytes] = set()

            def both() -> bool:
                topics.update(m[0] for m in _receive(socks[0], 0.5))
                return {b"score/gate", b"score/lobby"} <= topics

            wait_for(both, 30, "alice's scores of both daemons through the CURVE relay")
            assert {m[0].split(b"/")[0] for m in _receive(socks[0], 1.0)} <= {b"score", b"relay"}
            # bob's key is not allowed, the plain subscriber has no CURVE: nothing arrives
            assert _receive(socks[1], 2.0) == []
            assert _receive(socks[2], 0.5) == []
            assert relay.stop() == 0, relay.log()
    finally:
        for sock in socks:
            sock.close(linger=0)
        fake.close()
        plain.close()


@pytest.mark.timeout(120)
def test_upstream_refusing_the_relay_key_is_reported(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    daemon_keys = generate_keypair(keys, "server")
    relay_keys = generate_keypair(keys, "relay")
    empty = tmp_path / "daemon-clients"
    empty.mkdir()  # the relay's key was never installed on the daemon
    fake = FakeDaemon("gate", CurveServer.from_files(str(daemon_keys.secret), str(empty)))
    bind = f"tcp://127.0.0.1:{free_port()}"
    args = ["--upstream", fake.endpoint, "--server-key", str(daemon_keys.public),
            "--curve-secret-key", str(relay_keys.secret), "--bind", bind,
            "--health-interval", "0.3"]
    health = None
    try:
        with RelayProcess(tmp_path, args) as relay:
            relay.wait_log(r"upstream 0 \(.*\): the daemon refused the relay's key")
            health = _sub(bind, b"relay/")
            header = _health(health, 0, lambda h: h["handshake_failures"] > 0, 30,
                             "relay/0 with a handshake failure")
            assert not header["connected"] and "refused the relay's key" in header["last_error"]
            assert relay.stop() == 0, relay.log()
    finally:
        if health is not None:
            health.close(linger=0)
        fake.close()


# -- three real daemons -----------------------------------------------------------------------


def _start_daemon(folder: Path, endpoint: str, camera: str, seed: int) -> Daemon:
    folder.mkdir(parents=True, exist_ok=True)
    config = config_text(endpoint, [(camera, f"synthetic:?fps=10&seed={seed}")],
                         {"scorer": {"mode": "global"}})
    return Daemon(folder, config)


@pytest.mark.timeout(600)
def test_three_daemons_through_one_relay_and_a_restart(tmp_path: Path) -> None:
    endpoints = [f"tcp://127.0.0.1:{free_port()}" for _ in range(3)]
    cameras = ["north", "south", "east"]
    daemons = [_start_daemon(tmp_path / f"d{i}", e, c, i)
               for i, (e, c) in enumerate(zip(endpoints, cameras, strict=True))]
    bind = f"tcp://127.0.0.1:{free_port()}"
    args = ["--bind", bind, "--health-interval", "0.5"]
    for endpoint in endpoints:
        args += ["--upstream", endpoint]
    sub = None
    try:
        with RelayProcess(tmp_path, args) as relay:
            sub = _sub(bind, b"score/", b"relay/1")
            seen: dict[str, int] = {}

            def every_camera() -> bool:
                for topic, header, *_ in _receive(sub, 0.5):
                    if topic.startswith(b"score/"):
                        msg = decode([topic, header])
                        seen[msg.camera] = msg.seq
                return set(seen) == set(cameras)

            wait_for(every_camera, 300, "scores of all three cameras through the relay",
                     interval=0)
            # one daemon stops; the relay sees it go, and its camera come back on restart
            assert daemons[1].stop() == 0, daemons[1].log()
            _health(sub, 1, lambda h: not h["connected"] and h["disconnects"] == 1, 30,
                    "relay/1 disconnected")
            daemons[1] = _start_daemon(tmp_path / "d1-again", endpoints[1], cameras[1], 1)
            seen.clear()
            wait_for(every_camera, 300,
                     "scores of all three cameras after the restart", interval=0)
            header = _health(sub, 1, lambda h: h["connected"], 30, "relay/1 connected again")
            assert header["connects"] == 2 and header["cameras"] == ["south"]
            assert relay.stop() == 0, relay.log()
            assert "upstream 1 disconnected" in relay.log()
            assert "Traceback" not in relay.log()
    finally:
        if sub is not None:
            sub.close(linger=0)
        for daemon in daemons:
            daemon.close()
