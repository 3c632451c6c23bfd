"""Attacks on the wire side: endpoints, publishing, the relay, message decoding.

Each test is a hostile or careless use seen to fail once: an ``ipc://`` endpoint naming a
file, a replay publishing around the daemon's rules, a header of brackets, a relay fed
its own feed, a flood of camera ids. Real sockets, real subprocesses, real files.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
import zmq

from forecaster.client import CurveClient, Subscriber
from forecaster.config import Config, PublishConfig
from forecaster.errors import ConfigError
from forecaster.ipc.publisher import Publisher
from forecaster.keys import generate_keypair
from forecaster.offline.scores_csv import read_scores_csv
from forecaster.protocol import (
    MAX_HEADER_BYTES,
    MAX_HEADER_DEPTH,
    MAX_WIRE_CAMERA_ID,
    ProtocolError,
    Score,
    Status,
    decode,
    encode,
)
from forecaster.relay.health import MAX_CAMERAS_PER_UPSTREAM
from tests.conftest import free_port
from tests.daemon_harness import daemon_env, wait_for
from tests.test_relay import RelayProcess, _health, _sub
from tests.test_web import page_server

pytestmark = pytest.mark.timeout(120)

#: the header of the attack: a RecursionError in json.loads before the bound
DEEP = b"[" * 100_000
#: nested too deep but within the size bound
DEEP_SMALL = b"[" * 5_000


def _cli(args: list[str], cwd: Path, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "forecaster", *args], cwd=cwd,
                          env=daemon_env(), capture_output=True, text=True, timeout=timeout)


def _error_line(result: subprocess.CompletedProcess[str]) -> str:
    """The one ``forecaster: error:`` line of a command that exited 2."""
    assert result.returncode == 2, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("forecaster: error:")]
    assert len(lines) == 1, result.stderr
    return lines[0]


def _score(camera: str, seq: int) -> Score:
    return Score(camera, seq, time.time(), 0.01, 20.0, 0.5, False, 1.0)


def _status(camera: str, seq: int = 0) -> Status:
    return Status(camera, seq, time.time(), 10.0, seq + 1, 0, 0, True, False)


class HostileUpstream:
    """An XPUB socket in the test that sends whatever it is told, once subscribed to."""

    def __init__(self) -> None:
        self.endpoint = f"tcp://127.0.0.1:{free_port()}"
        self.sock: zmq.Socket = zmq.Context.instance().socket(zmq.XPUB)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.SNDHWM, 100_000)
        self.sock.bind(self.endpoint)
        self.subscriptions: list[bytes] = []

    def wait_subscribed(self, prefix: bytes, timeout: float = 30) -> None:
        def check() -> bool:
            while self.sock.poll(100):
                self.subscriptions.append(self.sock.recv())
            return b"\x01" + prefix in self.subscriptions

        wait_for(check, timeout, f"a subscription to {prefix!r}", interval=0)

    def send(self, parts: list[bytes]) -> None:
        self.sock.send_multipart(parts)

    def close(self) -> None:
        self.sock.close(linger=0)


@pytest.fixture
def hostile() -> Iterator[HostileUpstream]:
    upstream = HostileUpstream()
    try:
        yield upstream
    finally:
        upstream.close()


# -- 1. ipc endpoints naming something that is not a socket ----------------------------------


def test_an_ipc_endpoint_naming_a_file_or_folder_is_refused_and_left_alone(
    tmp_path: Path,
) -> None:
    precious = tmp_path / "precious.txt"
    precious.write_text("do not delete\n")
    folder = tmp_path / "somefolder"
    (folder / "inside").mkdir(parents=True)
    on_file, on_folder = f"ipc://{precious}", f"ipc://{folder}"

    # the publisher itself (run's worker and replay bind through it)
    with pytest.raises(ConfigError, match=re.escape(f"{precious} is a file")) as info:
        Publisher(on_file, linger_ms=0)
    assert on_file in str(info.value) and info.value.exit_code == 2
    with pytest.raises(ConfigError, match=re.escape(f"{folder} is a folder")):
        Publisher(on_folder, linger_ms=0)
    # the config (run, check-config) says so at load
    config = tmp_path / "fc.toml"
    config.write_text(f'[web]\nenabled = false\n[publish]\nendpoint = "{on_file}"\n'
                      f'[[cameras]]\nid = "cam0"\nsource = "synthetic:"\n')
    line = _error_line(_cli(["run", "--config", str(config)], tmp_path))
    assert "publish.endpoint" in line and f"{precious} is a file" in line
    # the relay's bind
    upstream = f"tcp://127.0.0.1:{free_port()}"
    line = _error_line(_cli(["relay", "--upstream", upstream, "--bind", on_file], tmp_path))
    assert "relay.bind" in line and f"{precious} is a file" in line
    line = _error_line(_cli(["relay", "--upstream", upstream, "--bind", on_folder], tmp_path))
    assert f"{folder} is a folder" in line and "already in use" not in line
    # replay --publish --endpoint
    line = _error_line(_cli(["replay", "synthetic:?frames=20", "--out", str(tmp_path / "out"),
                             "--endpoint", on_file], tmp_path))
    assert f"{precious} is a file" in line
    assert precious.read_text() == "do not delete\n"
    assert (folder / "inside").is_dir()
    assert not (tmp_path / "precious.txt.lock").exists()
    assert not (tmp_path / "out").exists()


@pytest.mark.timeout(90)
def test_a_relay_on_an_ipc_socket_locks_it_and_removes_it_at_stop(tmp_path: Path) -> None:
    sock_path = tmp_path / "run" / "relay.sock"
    bind = f"ipc://{sock_path}"
    upstream = f"tcp://127.0.0.1:{free_port()}"
    args = ["--upstream", upstream, "--bind", bind, "--health-interval", "0.2"]
    health = _sub(bind, b"relay/")
    try:
        with RelayProcess(tmp_path, args) as first:
            first.wait_log(r"relaying 1 upstream")
            line = _error_line(_cli(["relay", *args], tmp_path))
            assert bind in line and "another process is publishing" in line
            # the first one still has it
            _health(health, 0, lambda h: True, 20, "the first relay's health")
            assert first.stop() == 0, first.log()
        assert not sock_path.exists()
    finally:
        health.close(linger=0)


# -- 2. replay --publish under the daemon's publishing rules ---------------------------------


@pytest.mark.timeout(180)
def test_replay_publishes_with_the_configs_curve_and_only_to_allowed_subscribers(
    tmp_path: Path,
) -> None:
    from forecaster.offline.replay import replay_command

    keys = tmp_path / "keys"
    server = generate_keypair(keys, "server")
    alice = generate_keypair(keys, "alice")
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    shutil.copy(alice.public, allowed / alice.public.name)
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    config = Config(publish=PublishConfig(endpoint=endpoint, curve_secret_key=str(server.secret),
                                          curve_allowed_clients=str(allowed)))
    curve = CurveClient.from_files(server.public, alice.secret)
    with Subscriber(endpoint, rcvhwm=100_000) as stranger, \
            Subscriber(endpoint, rcvhwm=100_000, curve=curve) as friend:
        replay_command(["synthetic:?frames=60&seed=2"], out=tmp_path / "out", config=config,
                       publish=True, progress=False, chunk=16)
        got: list[object] = []
        while (msg := friend.recv(timeout=5)) is not None:
            got.append(msg)
            if isinstance(msg, Status) and msg.ended:
                break
        assert got and isinstance(got[-1], Status) and got[-1].ended, got[-3:]
        assert stranger.recv(timeout=1.0) is None  # not one message without keys


def test_replay_endpoint_follows_the_publish_rules(tmp_path: Path) -> None:
    port = free_port()
    line = _error_line(_cli(["replay", "synthetic:?frames=20", "--out", str(tmp_path / "a"),
                             "--endpoint", f"tcp://0.0.0.0:{port}"], tmp_path))
    assert "--endpoint" in line and f"refusing to publish unencrypted on tcp://0.0.0.0:{port}" \
        in line
    line = _error_line(_cli(["replay", "synthetic:?frames=20", "--out", str(tmp_path / "b"),
                             "--endpoint", "tcp://127.0.0.1:0"], tmp_path))
    assert "--endpoint" in line and "fixed port" in line
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


# -- 3. malformed messages: bounded before decoding, dropped with a line ---------------------


def test_deep_or_huge_headers_are_protocol_errors_not_recursion() -> None:
    for header in (DEEP, DEEP_SMALL, b"{\"a\":" * 3000 + b"1" + b"}" * 3000):
        with pytest.raises(ProtocolError, match="score/cam0 header"):
            decode([b"score/cam0", header])
    with pytest.raises(ProtocolError, match=f"more than the {MAX_HEADER_BYTES}"):
        decode([b"score/cam0", b" " * (MAX_HEADER_BYTES + 1)])
    with pytest.raises(ProtocolError, match=f"deeper than {MAX_HEADER_DEPTH}"):
        decode([b"score/cam0", b"[" * (MAX_HEADER_DEPTH + 1) + b"]" * (MAX_HEADER_DEPTH + 1)])
    # a camera id that would make every tracked id a megabyte
    for length in (MAX_WIRE_CAMERA_ID + 1, 1_000_000):
        camera = "c" * length
        topic, header = encode(_status(camera))
        with pytest.raises(ProtocolError, match=r"camera id of|longer than any valid"):
            decode([topic, header])
    topic, header = encode(_status("c" * MAX_WIRE_CAMERA_ID))
    assert decode([topic, header]).camera == "c" * MAX_WIRE_CAMERA_ID
    # brackets inside strings are not nesting: a valid header full of them decodes
    topic, header = encode(Status("cam0", 1, 1.0, 1.0, 1, 0, 0, True, False,
                                  reason="[" * 5000 + "\\\"{"))
    msg = decode([topic, header])
    assert isinstance(msg, Status) and msg.reason == "[" * 5000 + "\\\"{"


def test_a_header_of_unclosed_strings_is_refused_at_once() -> None:
    """Quotes and backslashes that never close a string, behind a few brackets: the
    nesting check reads them in one pass (a pattern that retried the string from every
    later quote took 15 s on this header, and a relay's 1 MiB health message far longer)."""
    header = (b"[" * (MAX_HEADER_DEPTH + 1) + b'"\\' * MAX_HEADER_BYTES)[:MAX_HEADER_BYTES]
    started = time.monotonic()
    with pytest.raises(ProtocolError):
        decode([b"score/cam0", header])
    assert time.monotonic() - started < 2.0  # linear: a few ms here


def test_a_subscriber_skips_a_deep_header_with_one_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    ctx = zmq.Context.instance()
    pub = ctx.socket(zmq.PUB)
    pub.setsockopt(zmq.LINGER, 0)
    port = pub.bind_to_random_port("tcp://127.0.0.1")
    endpoint = f"tcp://127.0.0.1:{port}"
    caplog.set_level(logging.WARNING, logger="forecaster.client")
    try:
        with Subscriber(endpoint, skip_invalid=True) as sub, Subscriber(endpoint) as strict:
            def joined() -> bool:
                pub.send_multipart(encode(_score("probe", 0)))
                return sub.recv(timeout=0.05) is not None and strict.recv(timeout=0.05) is not None

            wait_for(joined, 10, "the subscribers to join", interval=0)
            while sub.recv(timeout=0.1) is not None or strict.recv(timeout=0.1) is not None:
                pass
            caplog.clear()
            for _ in range(5):
                pub.send_multipart([b"score/cam0", DEEP])
                pub.send_multipart([b"score/cam0", DEEP_SMALL])
            pub.send_multipart(encode(_score("cam0", 7)))
            msg = sub.recv(timeout=5)
            assert isinstance(msg, Score) and msg.seq == 7
            assert sub.invalid == 10
            lines = [r for r in caplog.records if "malformed" in r.getMessage()]
            assert len(lines) == 1 and endpoint in lines[0].getMessage()
            with pytest.raises(ProtocolError):
                strict.recv(timeout=5)
    finally:
        pub.close(linger=0)


@pytest.mark.timeout(60)
def test_watch_survives_a_header_of_brackets(tmp_path: Path) -> None:
    ctx = zmq.Context.instance()
    pub = ctx.socket(zmq.PUB)
    pub.setsockopt(zmq.LINGER, 0)
    port = pub.bind_to_random_port("tcp://127.0.0.1")
    watch = subprocess.Popen(
        [sys.executable, "-m", "forecaster", "watch", "--endpoint",
         f"tcp://127.0.0.1:{port}", "--seconds", "8"],
        cwd=tmp_path, env=daemon_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True)
    try:
        seq = 0
        while watch.poll() is None and seq < 400:
            pub.send_multipart([b"score/cam0", DEEP])
            pub.send_multipart(encode(_score("cam0", seq)))
            seq += 1
            time.sleep(0.02)
        out, err = watch.communicate(timeout=30)
    finally:
        if watch.poll() is None:
            watch.kill()
            watch.communicate()
        pub.close(linger=0)
    assert watch.returncode == 0, err
    assert "Traceback" not in err, err
    assert re.search(r"^score +cam0 seq=\d+", out, re.M), out


@pytest.mark.timeout(90)
def test_a_relay_drops_malformed_status_messages_and_keeps_relaying(
    tmp_path: Path, hostile: HostileUpstream,
) -> None:
    bind = f"tcp://127.0.0.1:{free_port()}"
    health = _sub(bind, b"relay/")
    try:
        with RelayProcess(tmp_path, ["--upstream", hostile.endpoint, "--bind", bind,
                                     "--health-interval", "0.2"]) as relay:
            hostile.wait_subscribed(b"status/")
            for _ in range(20):
                hostile.send([b"status/cam0", DEEP])
                hostile.send([b"status/cam0", DEEP_SMALL])
            hostile.send(encode(_status("good")))
            _health(health, 0, lambda h: h["cameras"] == ["good"], 30,
                    "the good camera in the relay's health")
            assert relay.proc.poll() is None, relay.log()
            lines = [line for line in relay.log().splitlines() if "malformed" in line]
            assert len(lines) == 1 and "WARNING" in lines[0], relay.log()
            assert relay.stop() == 0, relay.log()
    finally:
        health.close(linger=0)


def test_the_live_page_ignores_deep_json_from_a_viewer(
    tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    with page_server(tmp_path) as server:
        async def viewer() -> list[str]:
            kinds = []
            async with aiohttp.ClientSession() as session, \
                    session.ws_connect(server.url("/feed")) as ws:
                hello = await ws.receive_json(timeout=5)
                assert hello["type"] == "hello"
                await ws.send_str("[" * 4000)  # within the page's 4 KiB message limit
                await ws.send_str("{\"ack\":" * 500 + "1" + "}" * 500)
                # the page's subscription may still be joining: publish until a score comes
                async def publish() -> None:
                    for seq in range(1, 300):
                        server.publish(_score("cam0", seq))
                        await asyncio.sleep(0.1)

                publisher = asyncio.create_task(publish())
                try:
                    while "scores" not in kinds:
                        message = await ws.receive(timeout=30)
                        if message.type != aiohttp.WSMsgType.TEXT:
                            kinds.append(str(message.type))
                            break
                        kinds.append(json.loads(message.data)["type"])
                finally:
                    publisher.cancel()
            return kinds

        kinds = asyncio.run(viewer())
    assert "scores" in kinds, kinds
    assert not [r for r in caplog.records if r.exc_info or "Recursion" in r.getMessage()]


# -- 4. a relay fed its own feed -------------------------------------------------------------


def test_a_relay_refuses_its_own_bind_as_an_upstream(tmp_path: Path) -> None:
    port = free_port()
    for upstream, bind in ((f"tcp://127.0.0.1:{port}", f"tcp://127.0.0.1:{port}"),
                           (f"tcp://localhost:{port}", f"tcp://127.0.0.1:{port}"),
                           (f"tcp://127.0.0.1:{port}", f"tcp://0.0.0.0:{port}"),
                           (f"ipc://{tmp_path}/r.sock", f"ipc://{tmp_path}/./r.sock")):
        line = _error_line(_cli(["relay", "--upstream", upstream, "--bind", bind,
                                 "--allow-insecure"], tmp_path))
        assert f"upstream {upstream} is the relay's own bind {bind}" in line, line
    # a daemon elsewhere on the relay's port is no loop
    from forecaster.relay.forwarder import parse_relay_config

    config = parse_relay_config({"relay": {
        "bind": f"tcp://*:{port}", "allow_insecure": True,
        "upstreams": [{"endpoint": f"tcp://192.0.2.7:{port}"}]}}, "test")
    assert config.upstreams[0].endpoint == f"tcp://192.0.2.7:{port}"


@pytest.mark.timeout(90)
def test_two_relays_upstream_of_each_other_stop_with_a_loop_line(tmp_path: Path) -> None:
    one, two = (f"tcp://127.0.0.1:{free_port()}" for _ in range(2))
    relays = [
        RelayProcess(tmp_path, ["--upstream", two, "--bind", one, "--health-interval", "0.2"],
                     name="one"),
        RelayProcess(tmp_path, ["--upstream", one, "--bind", two, "--health-interval", "0.2"],
                     name="two"),
    ]
    try:
        wait_for(lambda: any(r.proc.poll() is not None for r in relays), 30,
                 "a relay to notice the loop")
        stopped = [r for r in relays if r.proc.poll() is not None]
        for relay in stopped:
            assert relay.proc.returncode == 2, relay.log()
            assert re.search(r"ERROR .*relay loop: this relay's own health message came back "
                             r"from upstream 0", relay.log()), relay.log()
    finally:
        for relay in relays:
            relay.stop()


# -- 5. a flood of camera ids ----------------------------------------------------------------


@pytest.mark.timeout(90)
def test_a_relay_tracks_a_bounded_number_of_camera_ids_and_says_so_once(
    tmp_path: Path, hostile: HostileUpstream,
) -> None:
    bind = f"tcp://127.0.0.1:{free_port()}"
    health = _sub(bind, b"relay/")
    extra = MAX_CAMERAS_PER_UPSTREAM + 200
    try:
        with RelayProcess(tmp_path, ["--upstream", hostile.endpoint, "--bind", bind,
                                     "--health-interval", "0.2"]) as relay:
            hostile.wait_subscribed(b"status/")
            for round_ in range(2):
                for i in range(extra):
                    hostile.send(encode(_status(f"cam{i:05d}", round_)))
            header = _health(health, 0, lambda h: h["status_messages"] >= 2 * extra, 30,
                             "every status message counted")
            assert len(header["cameras"]) == MAX_CAMERAS_PER_UPSTREAM
            assert header["cameras_untracked"] is True
            lines = [line for line in relay.log().splitlines() if "camera ids" in line]
            assert len(lines) == 1 and f"more than {MAX_CAMERAS_PER_UPSTREAM}" in lines[0]
            assert relay.stop() == 0, relay.log()
    finally:
        health.close(linger=0)


# -- 6. minor ---------------------------------------------------------------------------------


def test_watch_refuses_port_0(tmp_path: Path) -> None:
    line = _error_line(_cli(["watch", "--endpoint", "tcp://127.0.0.1:0", "--seconds", "30"],
                            tmp_path, timeout=20))
    assert "tcp://127.0.0.1:0" in line and "port" in line


@pytest.mark.timeout(180)
def test_replay_of_two_videos_of_one_name_uses_the_unique_names_everywhere(
    tmp_path: Path,
) -> None:
    from tests.test_replay import write_avi

    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        write_avi(tmp_path / folder / "clip.avi", 24)
    out = tmp_path / "out"
    result = _cli(["replay", str(tmp_path / "a" / "clip.avi"), str(tmp_path / "b" / "clip.avi"),
                   "--out", str(out)], tmp_path, timeout=170)
    assert result.returncode == 0, result.stderr
    summary = json.loads((out / "summary.json").read_text())
    cameras = [video["camera"] for video in summary["videos"]]
    assert cameras == ["clip", "clip-2"]
    rows = read_scores_csv(out / "scores.csv")
    assert [c for c in dict.fromkeys(r["camera"] for r in rows)] == cameras
    assert re.search(r"^clip: .*\n^clip-2: ", result.stdout, re.M), result.stdout


def test_replay_fps_out_of_range_is_named(tmp_path: Path) -> None:
    line = _error_line(_cli(["replay", "synthetic:?frames=20", "--out", str(tmp_path / "o"),
                             "--fps", "1e308", "--preview"], tmp_path))
    assert "--fps" in line and "1e+308" in line and "encoder" not in line
    assert not (tmp_path / "o").exists()
