"""The live page's server: real HTTP and WebSocket on loopback, a real ZeroMQ feed (the
test plays the worker on an XPUB socket, which also shows what the page subscribes to),
a real shared-memory ring. The page in a browser: tests/test_web_browser.py."""

from __future__ import annotations

import asyncio
import http.client
import json
import struct
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import cv2
import numpy as np
import pytest
import zmq

from forecaster.config import Config, parse_config
from forecaster.errors import ConfigError
from forecaster.ipc.ring import FrameRing
from forecaster.protocol import Forecast, Score, encode
from forecaster.web.live import EventLog
from forecaster.web.process import WebSpec
from tests.conftest import free_port
from tests.daemon_harness import daemon_env
from tests.web_harness import serving

pytestmark = pytest.mark.timeout(60)
TOKEN = "s3cret-token-for-the-live-page"


@dataclass
class PageServer:
    port: int
    ring: FrameRing
    xpub: zmq.Socket

    def url(self, path: str = "/") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def get(self, path: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
        """A GET with the path sent as it is (no client-side normalisation of ``..``)."""
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
        try:
            connection.request("GET", path, headers=headers or {})
            response = connection.getresponse()
            return response.status, dict(response.getheaders()), response.read()
        finally:
            connection.close()

    def subscriptions(self, timeout: float = 0.0) -> list[bytes]:
        """Subscription changes the page sent to its feed (b"\\x01topic" / b"\\x00topic")."""
        found = []
        while self.xpub.poll(int(timeout * 1000)):
            found.append(self.xpub.recv())
            timeout = 0.0
        return found

    def publish(self, message: Forecast | Score) -> None:
        self.xpub.send_multipart(encode(message))


@contextmanager
def page_server(tmp_path: Path, token: str | None = None,
                events_dir: Path | None = None) -> Iterator[PageServer]:
    ring = FrameRing.create(f"forecaster_webtest_{uuid.uuid4().hex[:8]}", 64, 64, slots=10)
    endpoint = f"ipc://{tmp_path}/feed.sock"
    xpub = zmq.Context.instance().socket(zmq.XPUB)
    xpub.setsockopt(zmq.LINGER, 0)
    xpub.bind(endpoint)
    port = free_port()
    spec = WebSpec(cameras=(("cam0", ring.name),), feed_endpoint=endpoint, address="127.0.0.1",
                   port=port, threshold_on=3.0, threshold_off=2.0, image_fps=10.0, token=token,
                   events_dir=str(events_dir) if events_dir else None)
    try:
        with serving(spec):
            yield PageServer(port, ring, xpub)
    finally:
        xpub.close()
        ring.close()
        ring.unlink()


# -- config ---------------------------------------------------------------------------------


def test_web_config_defaults_and_security_rule(tmp_path: Path) -> None:
    web = Config().web
    assert (web.enabled, web.address, web.port) == (True, "127.0.0.1", 8088)
    with pytest.raises(ConfigError, match=r"web: web.address = '0.0.0.0' is not a loopback"):
        parse_config({"web": {"address": "0.0.0.0"}})
    with pytest.raises(ConfigError, match=r"set web.token_file"):
        parse_config({"web": {"address": "0.0.0.0", "allow_insecure": True}})
    short = tmp_path / "short"
    short.write_text("abc\n")
    with pytest.raises(ConfigError, match=rf"web.token_file: token file {short} must hold"):
        parse_config({"web": {"token_file": str(short)}})
    with pytest.raises(ConfigError, match=r"web.token_file: token file not found"):
        parse_config({"web": {"token_file": str(tmp_path / "absent")}})
    good = tmp_path / "token"
    good.write_text(TOKEN + "\n")
    config = parse_config({"web": {"address": "0.0.0.0", "allow_insecure": True,
                                   "token_file": str(good)}})
    assert config.web.token_file == str(good)
    assert parse_config({"web": {"address": "0.0.0.0", "enabled": False}}).web.enabled is False
    with pytest.raises(ConfigError, match=r"web.address: address must be an IP address"):
        parse_config({"web": {"address": "example.com"}})


def test_check_config_refuses_a_remote_page_without_the_switch(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text('[web]\naddress = "0.0.0.0"\n')
    result = subprocess.run([sys.executable, "-m", "forecaster", "check-config", str(config)],
                            cwd=tmp_path, env=daemon_env(), capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert "web.address = '0.0.0.0' is not a loopback address" in result.stderr


# -- events ---------------------------------------------------------------------------------


def test_event_log_pairs_start_and_end_and_marks_finished_recordings(tmp_path: Path) -> None:
    log = EventLog(tmp_path)
    log.add("cam0", {"v": 1, "seq": 10, "ts": 1.0, "state": "start", "peak_score": 3.5,
                     "clip": "cam0/e1.mp4", "snapshot": "/etc/passwd"})
    log.add("cam1", {"v": 1, "seq": 4, "ts": 1.5, "state": "start", "peak_score": 4.0})
    log.add("cam0", {"v": 1, "seq": 30, "ts": 2.0, "state": "end", "peak_score": 6.0,
                     "clip": "../outside.mp4"})
    first, *_ = [e for e in log.listing() if e["camera"] == "cam0"]
    assert (first["start_seq"], first["end_seq"], first["peak"]) == (10, 30, 6.0)
    assert first["clip"] == "cam0/e1.mp4" and first["snapshot"] is None  # unsafe paths ignored
    assert first["clip_ready"] is False
    (tmp_path / "cam0").mkdir()
    (tmp_path / "cam0" / "e1.mp4").write_bytes(b"x")
    assert log.refresh() is False  # no sidecar yet: still being written
    (tmp_path / "cam0" / "e1.json").write_text("{}")
    version = log.version
    assert log.refresh() is True and log.version > version
    assert log.listing()[1]["clip_ready"] is True
    assert [e["end_seq"] for e in log.listing()] == [None, 30]  # newest first


# -- the server -----------------------------------------------------------------------------


def test_page_and_static_files_are_served_from_the_package(tmp_path: Path) -> None:
    with page_server(tmp_path) as server:
        status, headers, body = server.get("/")
        assert status == 200 and headers["Content-Type"].startswith("text/html")
        assert b'src="/static/page.js"' in body and b"http" not in body.replace(b"http-equiv", b"")
        for name, kind in (("page.js", "javascript"), ("page.css", "text/css")):
            status, headers, body = server.get(f"/static/{name}")
            assert status == 200 and kind in headers["Content-Type"] and len(body) > 500
        assert server.get("/static/../process.py")[0] in (403, 404)
        # a web site cannot reach the page by pointing its own name at 127.0.0.1
        status, _, body = server.get("/", headers={"Host": "attacker.example:8088"})
        assert status == 403 and b"not a loopback" in body
        assert server.get("/events/x.mp4")[0] == 404  # no recordings folder given


def _images(data: bytes) -> tuple[dict[str, object], list[np.ndarray]]:
    (length,) = struct.unpack(">I", data[:4])
    header = json.loads(data[4:4 + length])
    images, offset = [], 4 + length
    for size in header["sizes"]:
        images.append(cv2.imdecode(np.frombuffer(data[offset:offset + size], np.uint8),
                                   cv2.IMREAD_UNCHANGED))
        offset += size
    return header, images


def test_feed_sends_scores_and_latest_images_only_to_a_reader_that_keeps_up(
    tmp_path: Path,
) -> None:
    with page_server(tmp_path) as server:
        assert b"\x01forecast/" not in server.subscriptions(timeout=1.0)  # nobody watches
        rng = np.random.default_rng(0)
        frames = [rng.integers(0, 255, (64, 64), dtype=np.uint8) for _ in range(6)]

        def feed() -> int:
            """The next frame in the ring; its score, and the forecast of it (made from the
            frame before)."""
            seq = server.ring.latest_seq + 1
            server.publish(Forecast("cam0", seq - 1, time.time(), seq, frames[seq] // 2))
            assert server.ring.write(frames[seq], time.time()) == seq
            server.publish(Score("cam0", seq, time.time(), 0.01, 20.0, 0.5 + seq, False, 5.0))
            return seq

        async def watch() -> None:
            async with aiohttp.ClientSession() as session:
                foreign = {"Origin": "http://attacker.example"}
                with pytest.raises(aiohttp.WSServerHandshakeError, match="403"):
                    await session.ws_connect(server.url("/feed"), headers=foreign)
                async with session.ws_connect(server.url("/feed")) as ws:
                    hello = await ws.receive_json(timeout=5)
                    assert hello["type"] == "hello" and hello["cameras"] == ["cam0"]
                    assert (hello["threshold_on"], hello["threshold_off"]) == (3.0, 2.0)
                    deadline = time.monotonic() + 10
                    while b"\x01forecast/" not in server.subscriptions(timeout=0.1):
                        assert time.monotonic() < deadline, "forecast/ never subscribed"
                    scores: list[float] = []
                    image = None
                    feed()
                    while image is None or len(scores) < 2:
                        if server.ring.latest_seq < 2:
                            feed()
                        message = await ws.receive(timeout=5)
                        if message.type == aiohttp.WSMsgType.BINARY:
                            image = message.data
                        elif json.loads(message.data)["type"] == "scores":
                            scores += [p[1] for p in json.loads(message.data)["points"]]
                    header, (actual, forecast, error) = _images(image)
                    shown = int(header["seq"])  # type: ignore[call-overload]
                    assert actual.shape == forecast.shape == (256, 256)
                    assert error.shape == (256, 256, 3)  # colour-mapped
                    assert np.abs(actual[::4, ::4].astype(int) - frames[shown]).mean() < 8
                    assert np.abs(forecast[::4, ::4].astype(int) - frames[shown] // 2).mean() < 8
                    assert scores[:2] == [0.5, 1.5]
                    # newer frames, but no acknowledgement: nothing more is sent (dropped)
                    while server.ring.latest_seq < 4:
                        feed()
                    quiet_until = time.monotonic() + 1.0
                    while (left := quiet_until - time.monotonic()) > 0:
                        try:
                            message = await ws.receive(timeout=left)
                        except asyncio.TimeoutError:
                            break
                        assert message.type != aiohttp.WSMsgType.BINARY
                    assert feed() == 5
                    # acknowledged: the newest images come, never the ones between. The
                    # forecast of 5 reaches the server over ZeroMQ, so 4 may still be the
                    # newest it has when the acknowledgement arrives.
                    seen: list[int] = []
                    while not seen or seen[-1] < 5:
                        await ws.send_json({"ack": "cam0"})
                        while True:
                            message = await ws.receive(timeout=5)
                            if message.type == aiohttp.WSMsgType.BINARY:
                                break
                        seen.append(int(_images(message.data)[0]["seq"]))  # type: ignore[call-overload]
                    assert seen in ([5], [4, 5]), seen
            deadline = time.monotonic() + 10
            while b"\x00forecast/" not in server.subscriptions(timeout=0.1):
                assert time.monotonic() < deadline, "forecast/ still subscribed without viewers"

        asyncio.run(watch())


def test_token_is_required_and_recordings_are_served_read_only(tmp_path: Path) -> None:
    events = tmp_path / "events"
    (events / "cam0").mkdir(parents=True)
    (events / "cam0" / "e1.mp4").write_bytes(b"clip-bytes")
    (tmp_path / "secret.txt").write_text("not for the page")
    (events / "cam0" / "link.txt").symlink_to(tmp_path / "secret.txt")
    with page_server(tmp_path, token=TOKEN, events_dir=events) as server:
        assert server.get("/")[0] == 401
        assert server.get("/static/page.js")[0] == 401
        assert server.get("/", {"Authorization": "Bearer wrong-token-wrong-token"})[0] == 403
        assert server.get("/", {"Authorization": f"Bearer {TOKEN}"})[0] == 200
        status, headers, _ = server.get(f"/?token={TOKEN}")
        assert status == 303 and headers["Location"] == "/"
        cookie = headers["Set-Cookie"].split(";")[0]
        assert "HttpOnly" in headers["Set-Cookie"]
        auth = {"Cookie": cookie}
        assert server.get("/", auth)[0] == 200
        status, _, body = server.get("/events/cam0/e1.mp4", auth)
        assert (status, body) == (200, b"clip-bytes")
        assert server.get("/events/cam0/e1.mp4")[0] == 401
        for path in ("/events/../secret.txt", "/events/cam0/../../secret.txt",
                     "/events/%2e%2e/secret.txt", "/events/cam0/%2E%2E/%2E%2E/secret.txt",
                     "/events/cam0/link.txt", "/events//etc/passwd", "/events/cam0/absent.mp4"):
            status, _, body = server.get(path, auth)
            assert status in (403, 404), (path, status)
            assert b"not for the page" not in body and b"root:" not in body


def test_a_disabled_page_starts_no_process_and_no_feed(tmp_path: Path) -> None:
    """The supervisor's plan with [web] enabled = false: no web process, no feed socket,
    no runtime folder (the children are not spawned here: that needs TensorFlow)."""
    from forecaster.daemon.supervisor import WEB, Supervisor

    class Planner(Supervisor):
        def _start_child(self, index: int) -> None:
            self.planned.append(index)

        def _await_ready(self, timeout_s: float) -> None:
            return None

    for enabled in (False, True):
        planner = Planner(parse_config({"web": {"enabled": enabled, "port": free_port()}}))
        planner.planned = []  # type: ignore[attr-defined]
        try:
            planner.start()
            assert (WEB in planner.planned) is enabled  # type: ignore[attr-defined]
            assert planner._worker_spec is not None
            feed = planner._worker_spec.feed_endpoint
            if not enabled:
                assert feed == "" and planner._web_dir is None
            else:
                folder = Path(feed.removeprefix("ipc://")).parent
                assert folder.is_dir() and folder.stat().st_mode & 0o077 == 0
        finally:
            planner.shutdown(grace_s=0.1)
        if enabled:
            assert not folder.exists()


def test_the_page_files_are_package_data() -> None:
    """A wheel (not only an editable install) ships the page: every file under static/ is
    matched by the package-data globs of pyproject.toml."""
    import fnmatch

    from forecaster.config import tomllib
    from tests.conftest import ROOT

    globs = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-data"]["forecaster.web"]
    static = ROOT / "forecaster" / "web" / "static"
    files = [p.relative_to(static.parent).as_posix() for p in static.iterdir()]
    assert {"static/index.html", "static/page.js", "static/page.css"} <= set(files)
    for name in files:
        assert any(fnmatch.fnmatch(name, g) for g in globs), name


def test_a_taken_port_ends_the_start_with_exit_2_naming_it(tmp_path: Path) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = tmp_path / "c.toml"
        config.write_text(f'[publish]\nendpoint = "tcp://127.0.0.1:{free_port()}"\n'
                          f"[web]\nport = {port}\n")
        result = subprocess.run([sys.executable, "-m", "forecaster", "run", "--config",
                                 str(config)], cwd=tmp_path, env=daemon_env(),
                                capture_output=True, text=True, timeout=60)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert f"cannot serve the live page on 127.0.0.1 port {port} (web.address, web.port)" \
        in result.stderr
