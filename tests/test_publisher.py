"""Publisher, Subscriber and watch over real ZeroMQ sockets (tcp and ipc)."""

from __future__ import annotations

import dataclasses
import io
import queue
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import pytest
import zmq

from forecaster.client import Subscriber, subscriptions
from forecaster.errors import ConfigError, UsageError
from forecaster.ipc.publisher import Publisher
from forecaster.protocol import Event, Forecast, Message, ProtocolError, Score, Status, encode
from forecaster.relay.watch import score_bar, watch

pytestmark = pytest.mark.timeout(30)

SYNC_TIMEOUT_S = 10.0


@pytest.fixture
def ctx() -> Iterator[zmq.Context]:
    context = zmq.Context()
    yield context
    context.destroy(linger=0)


def _score(camera: str = "cam0", seq: int = 0, score: float = 1.5, anomaly: bool = False) -> Score:
    return Score(
        camera=camera,
        seq=seq,
        ts=1700000000.0 + seq / 25,
        mse=0.002,
        psnr=27.0,
        score=score,
        anomaly=anomaly,
        latency_ms=4.0,
    )


def _event(camera: str = "cam0", seq: int = 0) -> Event:
    return Event(camera=camera, seq=seq, ts=1700000000.0, state="start", peak_score=5.0)


def _status(camera: str = "cam0", seq: int = 0) -> Status:
    return Status(
        camera=camera,
        seq=seq,
        ts=1700000000.0,
        fps=25.0,
        frames_captured=seq + 1,
        frames_dropped=0,
        state_resets=0,
        connected=True,
        ended=False,
    )


def _forecast(camera: str = "cam0", seq: int = 0, fill: int = 7) -> Forecast:
    frame = np.full((64, 64), fill, dtype=np.uint8)
    frame[0, :8] = np.arange(8, dtype=np.uint8)
    return Forecast(camera=camera, seq=seq, ts=1700000000.0, target_seq=seq + 1, frame=frame)


def _sync(pub: Publisher, subs: Sequence[Subscriber], msgs: Sequence[Message]) -> None:
    """Publish ``msgs`` repeatedly until every subscriber has received one (slow joiner)."""
    pending = list(subs)
    deadline = time.monotonic() + SYNC_TIMEOUT_S
    while pending:
        if time.monotonic() > deadline:
            pytest.fail(f"{len(pending)} subscriber(s) received nothing within {SYNC_TIMEOUT_S}s")
        for msg in msgs:
            pub.send(msg)
        pending = [sub for sub in pending if sub.recv(timeout=0.01) is None]


def _collect_until(sub: Subscriber, done: Callable[[Message], bool]) -> list[Message]:
    """Receive messages until ``done(msg)``; return all of them, the last included."""
    got: list[Message] = []
    deadline = time.monotonic() + SYNC_TIMEOUT_S
    while time.monotonic() < deadline:
        msg = sub.recv(timeout=0.1)
        if msg is None:
            continue
        got.append(msg)
        if done(msg):
            return got
    pytest.fail(f"end marker not received within {SYNC_TIMEOUT_S}s; got {len(got)} messages")


def test_pubsub_over_tcp_random_port(ctx: zmq.Context) -> None:
    with Publisher("tcp://127.0.0.1:*", linger_ms=0, context=ctx) as pub:
        assert re.fullmatch(r"tcp://127\.0\.0\.1:\d+", pub.last_endpoint)
        with Subscriber(pub.last_endpoint, context=ctx) as sub:
            _sync(pub, [sub], [_status("sync")])
            sent = [_forecast(seq=1), _score(seq=1), _event(seq=1), _status(seq=1)]
            for msg in sent:
                assert pub.send(msg) is True
            marker = _score(seq=999)
            pub.send(marker)
            got = [m for m in _collect_until(sub, lambda m: m == marker) if m.camera != "sync"]
    assert got == [*sent, marker]
    forecast = got[0]
    assert isinstance(forecast, Forecast)
    assert forecast.frame.dtype == np.uint8 and forecast.frame.shape == (64, 64)
    assert forecast.frame[0, 5] == 5 and forecast.frame[10, 10] == 7
    assert pub.sent >= len(sent) + 2 and pub.dropped == 0
    assert pub.closed


def test_pubsub_over_ipc_in_tmp_path(ctx: zmq.Context, tmp_path: Path) -> None:
    sock_path = tmp_path / "run" / "forecaster" / "pub.sock"  # parents do not exist yet
    endpoint = f"ipc://{sock_path}"
    with Publisher(endpoint, linger_ms=0, context=ctx) as pub:
        assert sock_path.parent.is_dir()
        assert pub.last_endpoint == endpoint
        with Subscriber(endpoint, context=ctx, kinds=["forecast"]) as sub:
            _sync(pub, [sub], [_forecast("sync")])
            marker = _forecast(seq=5, fill=200)
            pub.send(marker)
            got = _collect_until(sub, lambda m: m.camera == "cam0")
    assert got[-1] == marker


def test_second_publisher_on_an_ipc_path_is_refused_and_the_first_keeps_it(
    ctx: zmq.Context, tmp_path: Path
) -> None:
    sock_path = tmp_path / "pub.sock"
    endpoint = f"ipc://{sock_path}"
    with Publisher(endpoint, linger_ms=0, context=ctx) as first:
        with pytest.raises(ConfigError) as info:
            Publisher(endpoint, linger_ms=0, context=ctx)
        assert info.value.exit_code == 2
        assert str(info.value).startswith(f"cannot bind publisher to {endpoint}: another process")
        # the refused one took nothing: a new subscriber still reaches the first
        with Subscriber(endpoint, context=ctx) as sub:
            _sync(first, [sub], [_score(seq=1)])
    assert not sock_path.exists()  # removed at close
    # another program listening on the path (no lock file of ours) is refused too
    with zmq.Context() as other_ctx, other_ctx.socket(zmq.PUB) as other:
        other.bind(endpoint)
        with pytest.raises(ConfigError, match="another process is publishing"):
            Publisher(endpoint, linger_ms=0, context=ctx)
        other.close(linger=0)
    # a stale socket file (its owner gone) is taken over
    assert sock_path.exists()
    with Publisher(endpoint, linger_ms=0, context=ctx) as again:
        assert again.last_endpoint == endpoint


def test_pubsub_over_ipv6_loopback(ctx: zmq.Context) -> None:
    with Publisher("tcp://[::1]:*", linger_ms=0, context=ctx) as pub:
        assert re.fullmatch(r"tcp://\[::1\]:\d+", pub.last_endpoint)
        with Subscriber(pub.last_endpoint, context=ctx) as sub:
            _sync(pub, [sub], [_score(seq=3)])


def test_topic_prefix_filtering_by_camera_and_kind(ctx: zmq.Context) -> None:
    with Publisher("tcp://127.0.0.1:*", linger_ms=0, context=ctx) as pub:
        ep = pub.last_endpoint
        by_camera = Subscriber(ep, cameras=["cam0"], context=ctx)
        by_kind = Subscriber(ep, kinds=["event"], context=ctx)
        by_both = Subscriber(ep, cameras=["cam0"], kinds=["score"], context=ctx)
        subs = [by_camera, by_kind, by_both]
        try:
            _sync(pub, subs, [_score(seq=-1), _event(seq=-1)])
            for camera in ["cam0", "cam01", "cam1"]:  # "cam01" shares the prefix "cam0"
                pub.send(_score(camera, seq=1))
                pub.send(_event(camera, seq=1))
                pub.send(_status(camera, seq=1))
                pub.send(_forecast(camera, seq=1))
            pub.send(_score(seq=1000))
            pub.send(_event(seq=1000))

            def seen(sub: Subscriber, last_kind: str) -> set[tuple[str, str]]:
                msgs = _collect_until(sub, lambda m: m.seq == 1000 and m.kind == last_kind)
                return {(m.kind, m.camera) for m in msgs if 0 <= m.seq < 1000}

            assert seen(by_camera, "event") == {
                ("score", "cam0"),
                ("event", "cam0"),
                ("status", "cam0"),
                ("forecast", "cam0"),
            }
            assert seen(by_kind, "event") == {
                ("event", "cam0"),
                ("event", "cam01"),
                ("event", "cam1"),
            }
            assert seen(by_both, "score") == {("score", "cam0")}
        finally:
            for sub in subs:
                sub.close()


def test_subscription_prefixes() -> None:
    assert subscriptions() == [b""]
    assert subscriptions(kinds=["score", "event"]) == [b"score/", b"event/"]
    assert subscriptions(cameras=["cam0"], kinds=["score"]) == [b"score/cam0"]
    assert subscriptions(cameras=["a", "b"]) == [
        f"{kind}/{cam}".encode()
        for kind in ["forecast", "score", "event", "status"]
        for cam in "ab"
    ]
    with pytest.raises(ProtocolError, match="kind"):
        subscriptions(kinds=["scores"])
    with pytest.raises(ProtocolError, match="camera"):
        subscriptions(cameras=["cam 0"])
    with pytest.raises(ValueError, match="cameras must not be empty"):
        subscriptions(cameras=[])
    with pytest.raises(ValueError, match="not a single string"):
        subscriptions(cameras="cam0")


def test_stalled_subscriber_never_blocks_publisher(ctx: zmq.Context) -> None:
    n = 20_000
    with Publisher("tcp://127.0.0.1:*", sndhwm=10, linger_ms=0, context=ctx) as pub:
        stalled = ctx.socket(zmq.SUB)
        stalled.setsockopt(zmq.LINGER, 0)
        stalled.setsockopt(zmq.RCVHWM, 10)
        stalled.setsockopt(zmq.SUBSCRIBE, b"")
        stalled.connect(pub.last_endpoint)
        reader = Subscriber(pub.last_endpoint, context=ctx, kinds=["forecast"])
        try:
            # handshake: both connected (the stalled one reads exactly once, then never again)
            deadline = time.monotonic() + SYNC_TIMEOUT_S
            while not stalled.poll(10):
                assert time.monotonic() < deadline, "stalled subscriber never connected"
                pub.send(_forecast("sync"))
            stalled.recv_multipart()
            _sync(pub, [reader], [_forecast("sync")])

            frame_msgs = [_forecast(seq=i, fill=i % 256) for i in range(16)]
            received = 0
            results = []
            start = time.monotonic()
            for i in range(n):
                results.append(pub.send(frame_msgs[i % 16]))
                if i % 200 == 0:
                    while reader.recv(timeout=0) is not None:
                        received += 1
            elapsed = time.monotonic() - start
            assert elapsed < 20.0, f"{n} sends took {elapsed:.1f}s"
            assert all(isinstance(r, bool) for r in results)
            assert pub.sent + pub.dropped >= n

            received += _drain_until_end_marker(pub, reader)
            assert received > 0  # the reading subscriber kept receiving

            # the stalled subscriber holds only what fit in its queues and socket buffers
            backlog = 0
            while backlog < n and stalled.poll(200):
                stalled.recv_multipart()
                backlog += 1
            assert backlog < n
        finally:
            reader.close()
            stalled.close(linger=0)


def _drain_until_end_marker(pub: Publisher, reader: Subscriber) -> int:
    """Send an end marker until ``reader`` gets it; return the other messages read."""
    end_marker = _forecast("end")
    count = 0
    deadline = time.monotonic() + SYNC_TIMEOUT_S
    while time.monotonic() < deadline:
        pub.send(end_marker)
        msg = reader.recv(timeout=0.02)
        while msg is not None:
            if msg.camera == "end":
                return count
            count += 1
            msg = reader.recv(timeout=0)
    pytest.fail("reader never received the end marker")


def test_endpoint_in_use_is_a_config_error(ctx: zmq.Context) -> None:
    with Publisher("tcp://127.0.0.1:*", linger_ms=0, context=ctx) as first:
        endpoint = first.last_endpoint
        with pytest.raises(ConfigError, match=re.escape(endpoint)) as info:
            Publisher(endpoint, linger_ms=0, context=ctx)
    assert "in use" in str(info.value).lower()
    assert info.value.exit_code == 2


def test_unbindable_endpoints_are_config_errors(ctx: zmq.Context, tmp_path: Path) -> None:
    blocker = tmp_path / "afile"
    blocker.write_text("not a folder")
    endpoint = f"ipc://{blocker}/pub.sock"
    with pytest.raises(ConfigError, match=re.escape(endpoint)):
        Publisher(endpoint, linger_ms=0, context=ctx)
    with pytest.raises(ConfigError, match="bogus://x"):
        Publisher("bogus://x", linger_ms=0, context=ctx)
    with pytest.raises(ValueError, match="sndhwm"):
        Publisher("tcp://127.0.0.1:*", sndhwm=-1, context=ctx)


def test_publisher_close_is_idempotent(ctx: zmq.Context) -> None:
    pub = Publisher("tcp://127.0.0.1:*", linger_ms=0, context=ctx)
    assert pub.send(_score()) is True  # no subscriber: PUB discards, never blocks
    assert pub.sent == 1
    pub.close()
    pub.close()
    with pytest.raises(RuntimeError, match="closed"):
        pub.send(_score())


def test_subscriber_recv_timeout_and_invalid_messages(ctx: zmq.Context) -> None:
    raw = ctx.socket(zmq.PUB)
    raw.setsockopt(zmq.LINGER, 0)
    port = raw.bind_to_random_port("tcp://127.0.0.1")
    endpoint = f"tcp://127.0.0.1:{port}"
    strict = Subscriber(endpoint, context=ctx)
    lenient = Subscriber(endpoint, context=ctx, skip_invalid=True)
    try:
        start = time.monotonic()
        assert strict.recv(timeout=0.05) is None
        assert time.monotonic() - start >= 0.04
        deadline = time.monotonic() + SYNC_TIMEOUT_S
        pending = [strict, lenient]
        while pending:
            assert time.monotonic() < deadline, "subscribers never connected"
            raw.send_multipart(encode(_status("sync")))
            pending = [s for s in pending if s.recv(timeout=0.01) is None]
        raw.send_multipart([b"score/cam0", b"{not json"])
        raw.send_multipart(encode(_score(seq=77)))
        got = _collect_until(lenient, lambda m: m.seq == 77)
        assert lenient.invalid == 1
        assert got[-1] == _score(seq=77)
        with pytest.raises(ProtocolError, match="not valid UTF-8 JSON"):
            _collect_until(strict, lambda m: m.seq == 77)
    finally:
        strict.close()
        lenient.close()
        raw.close(linger=0)


# ------------------------------------------------------------------------------ watch


class _Feed:
    """A publisher in its own thread sending cam0 and cam1 traffic until stopped."""

    def __init__(self, ctx: zmq.Context) -> None:
        self._ctx = ctx
        self._stop = threading.Event()
        self._endpoint: queue.Queue[str] = queue.Queue()
        self.errors: list[BaseException] = []
        self._thread = threading.Thread(target=self._run, name="publisher:test", daemon=True)
        self._thread.start()
        self.endpoint = self._endpoint.get(timeout=SYNC_TIMEOUT_S)

    def _run(self) -> None:
        try:
            with Publisher("tcp://127.0.0.1:*", linger_ms=0, context=self._ctx) as pub:
                self._endpoint.put(pub.last_endpoint)
                seq = 0
                while not self._stop.is_set():
                    pub.send(_score("cam0", seq, score=1.5))
                    pub.send(_score("cam1", seq, score=4.5, anomaly=True))
                    if seq % 5 == 0:
                        pub.send(_status("cam0", seq))
                    seq += 1
                    self._stop.wait(0.002)  # pacing, not synchronisation
        except BaseException as exc:
            self.errors.append(exc)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=SYNC_TIMEOUT_S)
        assert not self._thread.is_alive()
        assert self.errors == []


@pytest.fixture
def feed(ctx: zmq.Context) -> Iterator[_Feed]:
    running = _Feed(ctx)
    yield running
    running.stop()


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_watch_plain_output_for_one_camera(feed: _Feed) -> None:
    out = io.StringIO()
    assert watch(feed.endpoint, "cam0", max_messages=12, out=out) == 0
    lines = out.getvalue().splitlines()
    assert len(lines) == 12
    assert all(" cam0 seq=" in line for line in lines)
    assert "cam1" not in out.getvalue()
    assert any(line.startswith("score") and "score=1.50" in line for line in lines)
    assert "\x1b[" not in out.getvalue()


def test_watch_live_lines_on_a_terminal(feed: _Feed) -> None:
    out = _Tty()
    assert watch(feed.endpoint, None, max_messages=40, out=out) == 0
    text = out.getvalue()
    assert "\x1b[" in text  # lines rewritten in place
    final = text.rsplit("\x1b[2K", 2)[-2:]  # the last redraw: one line per camera
    by_camera = {line.split()[0]: line for line in (part.strip() for part in final)}
    assert set(by_camera) == {"cam0", "cam1"}
    assert "1.50" in by_camera["cam0"] and f"[{score_bar(1.5)}]" in by_camera["cam0"]
    assert score_bar(1.5) == "##........"
    assert "ANOMALY" in by_camera["cam1"] and "ANOMALY" not in by_camera["cam0"]


def test_watch_waits_marks_a_silent_camera_stale_and_shows_the_end(
        ctx: zmq.Context, capsys: pytest.CaptureFixture[str]) -> None:
    out = io.StringIO()
    result: list[int] = []
    with Publisher("tcp://127.0.0.1:*", linger_ms=0, context=ctx) as pub:
        endpoint = pub.last_endpoint
        watcher = threading.Thread(
            target=lambda: result.append(watch(endpoint, None, seconds=4.0, out=out)))
        watcher.start()
        # status every 0.1 s (the watcher learns the interval), then cam0 falls silent
        # while cam1 goes on and ends
        def status(camera: str, seq: int) -> Status:
            return dataclasses.replace(_status(camera, seq), ts=time.time())

        for seq in range(12):
            pub.send(status("cam0", seq))
            pub.send(status("cam1", seq))
            time.sleep(0.1)  # pacing a live feed, not synchronisation
        for seq in range(12, 20):
            pub.send(status("cam1", seq))
            time.sleep(0.1)
        pub.send(Status(camera="cam1", seq=20, ts=0.0, fps=0.0, frames_captured=21,
                        frames_dropped=0, state_resets=0, connected=False, ended=True,
                        reason="end of stream"))
        watcher.join(timeout=20)
    assert result == [0]
    assert f"waiting for {endpoint}" in capsys.readouterr().err
    text = out.getvalue()
    stale = [line for line in text.splitlines() if line.startswith("stale")]
    assert len(stale) == 1 and "cam0" in stale[0], text  # once, and not the ended cam1
    assert "ended=yes" in text


def test_watch_once_and_ctrl_c(feed: _Feed) -> None:
    out = io.StringIO()
    assert watch(feed.endpoint, "cam1", once=True, out=out) == 0
    assert len(out.getvalue().splitlines()) == 1 and "cam1" in out.getvalue()

    class Interrupting(io.StringIO):
        def write(self, text: str) -> int:
            raise KeyboardInterrupt

    assert watch(feed.endpoint, None, out=Interrupting()) == 0


@pytest.mark.parametrize("endpoint", ["tcp://127.0.0.1:70000", "tcp://127.0.0.1", "tcp://::1:5556"])
def test_watch_rejects_a_bad_endpoint_exit_2(endpoint: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "forecaster", "watch", "--endpoint", endpoint, "--camera", "cam0"],
        capture_output=True, text=True, timeout=30,
    )
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and f"cannot connect subscriber to {endpoint}: " in lines[0], lines


def test_watch_rejects_bad_camera() -> None:
    with pytest.raises(UsageError, match="cam 0"):
        watch("tcp://127.0.0.1:1", "cam 0", max_messages=1, out=io.StringIO())
