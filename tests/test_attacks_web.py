"""Attack cases: what a hostile or careless user sends the live page, the metrics server,
the start-up, distributed training and the parsers. Each case gets a clear answer, one log
line, or a clean exit with one line; never a traceback."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

from forecaster.errors import SourceError, UsageError
from forecaster.sources.readers import open_source
from tests.conftest import free_port
from tests.daemon_harness import daemon_env
from tests.test_web import TOKEN, page_server

pytestmark = pytest.mark.timeout(60)


def raw_request(port: int, data: bytes) -> bytes:
    """Bytes sent as they are on a fresh connection; the whole answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as connection:
        connection.sendall(data)
        chunks = []
        while True:
            try:
                chunk = connection.recv(65536)
            except (ConnectionResetError, TimeoutError):
                break
            if not chunk:
                break
            chunks.append(chunk)
    return b"".join(chunks)


def status_of(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/") else 0


def tracebacks(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.exc_info is not None or "Traceback" in r.getMessage()]


# -- the live page's HTTP ------------------------------------------------------------------


def test_recordings_with_a_long_or_null_path_segment_are_404_without_a_traceback(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    events = tmp_path / "events"
    events.mkdir()
    caplog.set_level(logging.INFO)
    with page_server(tmp_path, events_dir=events) as server:
        for path in ("/events/" + "a" * 300, "/events/cam0/" + "b" * 300 + ".mp4",
                     "/events/a%00b", "/events/%00", "/static/" + "c" * 300,
                     "/static/x/" + "d" * 300 + ".js"):
            for _ in range(3):
                status, _, body = server.get(path)
                assert status == 404, (path, status, body)
    assert not tracebacks(caplog)
    refusals = [r for r in caplog.records if "refused" in r.getMessage()]
    # at most one line a second, however many requests were refused (18 here)
    span = max(r.created for r in refusals) - min(r.created for r in refusals) if refusals else 0
    assert 1 <= len(refusals) <= 2 + span, [r.getMessage() for r in refusals]
    assert len(refusals) < 18


@pytest.mark.parametrize("request_bytes", [
    b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nHost: 127.0.0.1\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Long: " + b"x" * 9000 + b"\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n"
    + b"".join(b"X-H%d: v\r\n" % i for i in range(500)) + b"\r\n",
], ids=["duplicate-host", "8k-header-line", "500-headers"])
def test_malformed_http_is_one_log_line_not_a_traceback(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, request_bytes: bytes
) -> None:
    caplog.set_level(logging.DEBUG)
    with page_server(tmp_path) as server:
        answer = raw_request(server.port, request_bytes)
        assert status_of(answer) in (400, 431), answer[:200]
        assert server.get("/")[0] == 200  # the server goes on
    assert not tracebacks(caplog), tracebacks(caplog)
    lines = [r for r in caplog.records if r.name.startswith("aiohttp")
             and r.levelno >= logging.WARNING]
    assert all(r.levelno == logging.WARNING for r in lines)
    assert any("malformed" in r.getMessage() for r in caplog.records)


def test_the_host_check_reads_the_host_header_not_the_request_line(tmp_path: Path) -> None:
    with page_server(tmp_path) as server:
        port = server.port
        absolute = raw_request(port, f"GET http://127.0.0.1:{port}/ HTTP/1.1\r\n"
                                     "Host: evil.com\r\nConnection: close\r\n\r\n".encode())
        assert status_of(absolute) == 403, absolute[:200]
        no_host = raw_request(port, b"GET / HTTP/1.0\r\n\r\n")
        assert status_of(no_host) == 403, no_host[:200]
        assert b"Host" in no_host
        for host in ("127.0.0.1", f"127.0.0.1:{port}", f"localhost:{port}", f"[::1]:{port}",
                     "LOCALHOST"):
            answer = raw_request(port, f"GET / HTTP/1.1\r\nHost: {host}\r\n"
                                       "Connection: close\r\n\r\n".encode())
            assert status_of(answer) == 200, (host, answer[:200])
        for host in ("evil.com", "127.0.0.1.evil.com", f"evil.com:{port}", "[::1]evil",
                     "127.0.0.1:80:80", "127.0.0.1:x"):
            answer = raw_request(port, f"GET / HTTP/1.1\r\nHost: {host}\r\n"
                                       "Connection: close\r\n\r\n".encode())
            assert status_of(answer) == 403, (host, answer[:200])


def test_bearer_scheme_is_case_insensitive_and_wins_over_a_stale_cookie(tmp_path: Path) -> None:
    with page_server(tmp_path, token=TOKEN) as server:
        for scheme in ("bearer", "BEARER", "Bearer"):
            assert server.get("/", {"Authorization": f"{scheme} {TOKEN}"})[0] == 200, scheme
        stale = {"Authorization": f"Bearer {TOKEN}",
                 "Cookie": "forecaster_token=an-old-token-from-before"}
        assert server.get("/", stale)[0] == 200
        assert server.get("/", {"Authorization": "Basic dXNlcjpwYXNz"})[0] == 401


def test_the_token_redirect_stays_on_the_same_origin(tmp_path: Path) -> None:
    with page_server(tmp_path, token=TOKEN) as server:
        for path, expected in ((f"//evil.com/?token={TOKEN}", "/evil.com/"),
                               (f"///evil.com/x?token={TOKEN}&a=1", "/evil.com/x?a=1"),
                               (f"/\\evil.com/?token={TOKEN}", "/evil.com/"),
                               (f"/static/page.js?token={TOKEN}", "/static/page.js")):
            status, headers, _ = server.get(path)
            assert status == 303, (path, status)
            location = headers["Location"]
            assert location == expected, (path, location)
            assert location.startswith("/") and location[1:2] not in ("/", "\\")


def test_metrics_answer_only_loopback_host_headers() -> None:
    from forecaster.daemon.prometheus import MetricsServer
    from forecaster.ipc.ring import FrameRing
    from tests.test_prometheus import FakeDaemon

    ring = FrameRing.create(f"forecaster_test_{uuid.uuid4().hex[:8]}", 16, 16, slots=4)
    server = MetricsServer("127.0.0.1", free_port(), FakeDaemon(ring))
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/metrics",
                                    timeout=5) as response:
            assert response.status == 200
        for host in (b"Host: evil.com\r\n", b"Host: rebind.example:9100\r\n", b""):
            answer = raw_request(server.port, b"GET /metrics HTTP/1.0\r\n" + host + b"\r\n")
            assert status_of(answer) == 403, (host, answer[:200])
            assert b"forecaster_" not in answer
        answer = raw_request(server.port, b"GET /metrics HTTP/1.0\r\nHost: localhost:1\r\n\r\n")
        assert status_of(answer) == 200
    finally:
        server.close()
        ring.close()
        ring.unlink()


def test_relay_metrics_answer_only_loopback_host_headers() -> None:
    """The relay's metrics name its upstreams: the same Host rule as the daemon's."""
    from forecaster.relay.health import Health, serve_metrics

    @dataclass
    class Upstream:
        endpoint: str

    health = Health([Upstream("tcp://127.0.0.1:9")])
    server = serve_metrics("127.0.0.1", free_port(), health)
    try:
        answer = raw_request(server.port, b"GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        assert status_of(answer) == 200 and b"forecaster_relay" in answer
        for host in (b"Host: evil.com\r\n", b""):
            answer = raw_request(server.port, b"GET /metrics HTTP/1.0\r\n" + host + b"\r\n")
            assert status_of(answer) == 403, (host, answer[:200])
            assert b"forecaster_" not in answer
    finally:
        server.close()


# -- parsing: one line and exit 2, never a traceback -----------------------------------------


def forecaster(*args: str, cwd: Path, env: dict[str, str] | None = None,
               timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "forecaster", *args], cwd=cwd,
                          env=daemon_env(env), capture_output=True, text=True, timeout=timeout)


def assert_one_line_exit_2(result: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert result.returncode == 2, (result.returncode, result.stderr[-2000:])
    assert "Traceback" not in result.stderr, result.stderr[-2000:]
    error = [line for line in result.stderr.splitlines() if line.startswith("forecaster: error")]
    assert len(error) == 1, result.stderr[-2000:]
    for needle in needles:
        assert needle in error[0], error[0]


def test_deeply_nested_config_and_labels_are_refused_in_one_line(tmp_path: Path) -> None:
    deep_array = tmp_path / "deep_array.toml"
    deep_array.write_text("x = " + "[" * 100_000 + "]" * 100_000 + "\n")
    deep_table = tmp_path / "deep_table.toml"
    deep_table.write_text("[web]\nport = " + "{a=" * 5000 + "1" + "}" * 5000 + "\n")
    for path in (deep_array, deep_table):
        assert_one_line_exit_2(forecaster("check-config", str(path), cwd=tmp_path),
                               str(path), "nested too deeply")
    shallow = tmp_path / "shallow.toml"  # deep enough to parse: the value is cut short
    shallow.write_text("[web]\nport = " + "[" * 300 + "]" * 300 + "\n")
    result = forecaster("check-config", str(shallow), cwd=tmp_path)
    assert_one_line_exit_2(result, "web.port")
    assert len(result.stderr.strip().splitlines()[-1]) < 300
    labels = tmp_path / "labels.json"
    labels.write_text('{"v": ' + "[" * 100_000 + "]" * 100_000 + "}")
    assert_one_line_exit_2(
        forecaster("replay", "synthetic:", "--labels", str(labels), "--out",
                   str(tmp_path / "out"), cwd=tmp_path),
        str(labels), "nested too deeply")


def test_replay_and_eval_refuse_a_fifo_and_dev_zero(tmp_path: Path) -> None:
    fifo = tmp_path / "clip.mp4"
    os.mkfifo(fifo)
    labels = tmp_path / "labels.json"
    labels.write_text('{"clip": [0, 1]}')
    for source, what in ((str(fifo), "a FIFO"), ("/dev/zero", "a character device")):
        assert_one_line_exit_2(
            forecaster("replay", source, "--out", str(tmp_path / "out"), cwd=tmp_path,
                       timeout=30),
            source, what)
        assert_one_line_exit_2(
            forecaster("eval", source, "--labels", str(labels), "--out",
                       str(tmp_path / "eval"), cwd=tmp_path, timeout=30),
            source, what)
    with pytest.raises(SourceError, match=r"clip.mp4 is a FIFO"):
        open_source(str(fifo))


def test_a_fifo_or_dev_zero_as_config_or_labels_is_refused_not_read(tmp_path: Path) -> None:
    fifo = tmp_path / "named.pipe"
    os.mkfifo(fifo)
    for path, what in ((str(fifo), "a FIFO"), ("/dev/zero", "a character device")):
        assert_one_line_exit_2(forecaster("check-config", path, cwd=tmp_path, timeout=20),
                               f"config file {path} is {what}")
        assert_one_line_exit_2(
            forecaster("replay", "synthetic:", "--labels", path, "--out", str(tmp_path / "o"),
                       cwd=tmp_path, timeout=20),
            f"labels file {path} is {what}")


# -- distributed training: TF_CONFIG, peers that never come, stop signals ---------------------


def _tf_config(workers: list[str], index: int = 0) -> str:
    return json.dumps({"cluster": {"worker": workers}, "task": {"type": "worker",
                                                                 "index": index}})


def test_tf_config_ports_hosts_and_nesting_are_checked() -> None:
    from forecaster.model.distributed import parse_tf_config

    bad = {
        "": "set but empty",
        "   ": "set but empty",
        "[" * 100_000 + "]" * 100_000: "nested too deeply",
        '{"cluster": ' * 50_000 + "1" + "}" * 50_000: "nested too deeply",
        _tf_config(["127.0.0.1:99999"]): r"port must be a number from 1 to 65535, got '99999'",
        _tf_config(["127.0.0.1:0"]): "from 1 to 65535, got '0'",
        _tf_config(["127.0.0.1:١٢٣٤٥"]): "from 1 to 65535",
        _tf_config(["127.0.0.1:+80"]): "from 1 to 65535",
        _tf_config(["bad host:2222"]): "host must be a host name or an IP address",
        _tf_config(["-x:2222"]): "host must be",
        _tf_config(["ex\u00e4mple.com:2222"]): "host must be",
        _tf_config(["[zz]:2222"]): "not an IPv6 address",
        _tf_config([":2222"]): "is not \"host:port\"",
        _tf_config(["a:1", "a:1"]): "more than once",
    }
    for text, reason in bad.items():
        with pytest.raises(UsageError, match=reason) as caught:
            parse_tf_config(text)
        assert len(str(caught.value)) < 400
    good = parse_tf_config(_tf_config(["[::1]:2222", "host-1.example:65535", "10.0.0.1:1"]))
    assert good.num_workers == 3


def _train(tmp_path: Path, tf_config: str, *extra: str) -> subprocess.Popen[str]:
    env = daemon_env({"TF_CONFIG": tf_config, "TF_CPP_MIN_LOG_LEVEL": "3"})
    return subprocess.Popen(
        [sys.executable, "-m", "forecaster", "train", "synthetic:?frames=22", "--out",
         str(tmp_path / "m.keras"), "--size", "16x16", "--epochs", "1", "--distributed",
         *extra],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for_line(process: subprocess.Popen[str], needle: str, timeout: float) -> list[str]:
    """stderr lines up to and with the first one holding ``needle``."""
    assert process.stderr is not None
    lines: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = process.stderr.readline()
        if not line:
            break
        lines.append(line)
        if needle in line:
            return lines
    raise AssertionError(f"no line with {needle!r} in: {''.join(lines)[-3000:]}")


def test_bad_tf_config_ends_train_with_exit_2_before_tensorflow(tmp_path: Path) -> None:
    for tf_config, needle in (("", "set but empty"),
                              (_tf_config(["127.0.0.1:99999"]), "got '99999'"),
                              ('{"a": ' * 5_000 + "1" + "}" * 5_000, "nested too deeply")):
        process = _train(tmp_path, tf_config)
        _, err = process.communicate(timeout=60)
        assert process.returncode == 2, err[-2000:]
        assert "Traceback" not in err and needle in err, err[-2000:]


def test_a_worker_whose_peer_never_comes_gives_up_after_the_peer_timeout(
    tmp_path: Path
) -> None:
    missing = f"127.0.0.1:{free_port()}"
    process = _train(tmp_path, _tf_config([f"127.0.0.1:{free_port()}", missing]),
                     "--peer-timeout", "2")
    began = time.monotonic()
    _, err = process.communicate(timeout=60)
    assert process.returncode == 1, err[-2000:]
    assert time.monotonic() - began < 30
    assert "Traceback" not in err, err[-2000:]
    errors = [line for line in err.splitlines() if line.startswith("forecaster: error")]
    assert len(errors) == 1 and missing in errors[0] and "--peer-timeout" in errors[0], err


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_waiting_worker_stops_on_sigint_and_sigterm(tmp_path: Path, signum: int) -> None:
    process = _train(tmp_path, _tf_config([f"127.0.0.1:{free_port()}",
                                           f"127.0.0.1:{free_port()}"]))
    try:
        _wait_for_line(process, "waiting for all of them to start (at most 300 s)", 30)
        process.send_signal(signum)
        _, err = process.communicate(timeout=10)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 128 + signum, err[-2000:]
    assert "Traceback" not in err
    assert f"stopped by {signal.Signals(signum).name} while waiting for the other workers" in err


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in path.read_text().split()] if path.exists() else []


def _alive(pid: int) -> bool:
    """Running, not a zombie waiting to be reaped."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


@pytest.mark.timeout(180)
@pytest.mark.parametrize("how", ["sigterm", "parent-killed"])
def test_a_worker_stuck_in_tensorflows_wait_stops_on_sigterm(tmp_path: Path, how: str) -> None:
    """The peer listens but speaks no gRPC: TensorFlow's own wait never ends, and holds
    the interpreter; SIGTERM still ends the worker within seconds, with one line. A worker
    killed outright (SIGKILL, the OOM killer) takes its training child with it."""
    peer = socket.create_server(("127.0.0.1", 0))
    peer_address = f"127.0.0.1:{peer.getsockname()[1]}"
    own = free_port()
    process = _train(tmp_path, _tf_config([f"127.0.0.1:{own}", peer_address]))
    try:
        _wait_for_line(process, "other worker(s) listen", 30)
        deadline = time.monotonic() + 45
        while True:  # the worker's port answers again once TensorFlow's server is up
            try:
                socket.create_connection(("127.0.0.1", own), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "TensorFlow's server did not start"
                time.sleep(0.2)
        if how == "parent-killed":
            children = _children(process.pid)
            assert len(children) == 1, children  # the training child, in TensorFlow's wait
            process.kill()
            process.wait()
            deadline = time.monotonic() + 10
            while _alive(children[0]):
                assert time.monotonic() < deadline, "the training child outlived its parent"
                time.sleep(0.1)
            return
        process.send_signal(signal.SIGTERM)
        began = time.monotonic()
        _, err = process.communicate(timeout=10)
        assert time.monotonic() - began < 10
    finally:
        peer.close()
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 128 + signal.SIGTERM, err[-2000:]
    assert "Traceback" not in err
    assert "forecaster: error: stopped by SIGTERM during distributed training (worker 0)" \
        in err.splitlines(), err[-2000:]


# -- start-up: waiting for the start is not a stall ------------------------------------------


def test_a_capture_process_beats_while_it_waits_for_the_start(tmp_path: Path) -> None:
    """A real capture process of eight synthetic cameras, ready, held before the start for
    three times the stall rule: the supervisor's rule sees no stall meanwhile."""
    import multiprocessing as mp

    from forecaster.daemon.capture import CaptureSpec
    from forecaster.daemon.capture_group import capture_group_main, group_specs
    from forecaster.ipc.channels import Flag, Inbox, Outbox, channel_address
    from forecaster.ipc.health import Health, StallDetector
    from forecaster.ipc.ring import FrameRing

    ctx = mp.get_context("spawn")
    instance = f"attack{uuid.uuid4().hex[:8]}"
    control, wakeup = (Inbox(channel_address(instance, name)) for name in ("control", "wakeup"))
    rings = [FrameRing.create(f"forecaster_attack_{uuid.uuid4().hex[:8]}", 64, 64, slots=10)
             for _ in range(8)]
    specs = [CaptureSpec(camera=f"c{i}", index=i, source=f"synthetic:?fps=5&seed={i}",
                         ring=ring.name, size=(64, 64)) for i, ring in enumerate(rings)]
    health = Health(len(specs), ctx)
    stop, go = Flag(ctx), Flag(ctx)
    process = ctx.Process(target=capture_group_main, name="capture:0-7", args=(
        group_specs(specs, 8, "info")[0], wakeup.address, Outbox(control.address), stop, go,
        health))
    process.start()
    try:
        kind, *_ = control.get_message(timeout=60)
        assert kind == "ready"
        stall_s = 5.0  # ten beats: room for a loaded machine's scheduling
        detector = StallDetector([spec.camera for spec in specs], stall_s)
        held_until = time.monotonic() + 3 * stall_s
        while time.monotonic() < held_until:
            stalls = detector.check(health, [-1] * len(specs), False, [True] * len(specs))
            assert not stalls, stalls
            time.sleep(0.1)
        go.set()
    finally:
        stop.set()
        process.join(10)
        if process.is_alive():
            process.kill()
            process.join()
        control.close()
        wakeup.close()
        for ring in rings:
            ring.close()
            ring.unlink()


def test_the_stall_rule_starts_a_captures_clock_when_it_starts_running() -> None:
    """A capture process that was ready, or restarting, long ago is judged from the moment
    it runs, not from a beat before it did."""
    from forecaster.ipc.health import Health, StallDetector

    health = Health(2)
    detector = StallDetector(["a", "b"], 2.0)
    health.beat_capture(0)
    health.beat_capture(1)
    began = time.monotonic()
    assert not detector.check(health, [-1, -1], False, [False, False], now=began + 30)
    # both run from now on; b beats, a has not yet: neither is stalled for 2 s
    health.beat_capture(1)
    assert not detector.check(health, [-1, -1], False, [True, True], now=began + 30.1)
    assert not detector.check(health, [-1, -1], False, [True, True], now=began + 31.9)
    stalls = detector.check(health, [-1, -1], False, [True, True], now=began + 32.5)
    assert [s.role for s in stalls] == ["capture:a", "capture:b"]


@pytest.mark.timeout(240)
def test_a_stopped_page_process_is_restarted_as_stalled(tmp_path: Path) -> None:
    """SIGSTOP on fc-web: the supervisor sees its event loop stop turning, kills it and
    starts a new one, which serves the page; the detector goes on meanwhile."""
    from tests.daemon_harness import Daemon, config_text

    endpoint = f"tcp://127.0.0.1:{free_port()}"
    port = free_port()
    config = config_text(endpoint, [("cam0", "synthetic:?fps=10&anomaly_rate=0")],
                         {"web": {"enabled": True, "port": port},
                          "service": {"stall_timeout_s": 5.0}})
    with Daemon(tmp_path, config) as daemon:
        daemon.wait_log(r"web ready \(pid \d+\)", 180)
        first = daemon.child_pid("web")
        os.kill(first, signal.SIGSTOP)
        try:
            killed = daemon.wait_log(
                rf"web \(pid {first}\) stalled \(its event loop has not turned for \d+ s\) "
                r"and was killed; restarting it", 30)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.kill(first, signal.SIGCONT)
        daemon.wait_log(r"web ready again \(pid \d+\)", 60, after=killed.end())
        assert daemon.child_pid("web") != first
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as response:
            assert response.status == 200
        assert daemon.stop() == 0
    log = daemon.log()
    assert len(re.findall(r"web \(pid \d+\) stalled", log)) == 1, log[-3000:]
    assert "Traceback" not in log


def test_the_stall_rule_judges_the_page_from_when_it_runs() -> None:
    from forecaster.ipc.health import DaemonField, Health, StallDetector

    health = Health(1)
    detector = StallDetector(["a"], 2.0)
    now = time.monotonic()
    health.beat_capture(0)
    assert not detector.check(health, [-1], False, [False], now=now + 10, web_running=True)
    health.values[DaemonField.WEB_BEAT] = now + 11
    assert not detector.check(health, [-1], False, [False], now=now + 12.5, web_running=True)
    stalls = detector.check(health, [-1], False, [False], now=now + 13.5, web_running=True)
    assert [(s.role, s.reason) for s in stalls] == [
        ("web", "its event loop has not turned for 2 s")]
    assert not detector.check(health, [-1], False, [False], now=now + 20, web_running=False)
