"""The live page's process (``fc-web``), started and restarted by the supervisor.

The page lives in its own process so that a slow browser, a slow encode or a crash of the
server never slows the worker. It reads the worker's private feed
(:mod:`forecaster.ipc.feed`). It subscribes to forecasts only while somebody watches, so
their pixels cross only then.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from forecaster.errors import ConfigError, ForecasterError
from forecaster.ipc.channels import Flag, Outbox, start_child
from forecaster.ipc.feed import FEED_SNDHWM
from forecaster.ipc.health import Health
from forecaster.ipc.ring import FrameRing

log = logging.getLogger("forecaster.web")


@dataclass(frozen=True, slots=True)
class WebSpec:
    """Everything the web process needs; picklable for the spawn start method."""

    cameras: tuple[tuple[str, str], ...]  # (camera id, ring name)
    feed_endpoint: str
    address: str
    port: int
    threshold_on: float
    threshold_off: float
    image_fps: float = 5.0
    token: str | None = None
    events_dir: str | None = None
    log_level: str = "info"
    #: (camera id, display name) of the cameras with a name
    names: tuple[tuple[str, str], ...] = ()


def bind_error(address: str, port: int, error: OSError) -> ConfigError:
    return ConfigError(
        f"cannot serve the live page on {address} port {port} (web.address, web.port): "
        f"{error.strerror or error}"
    )


def check_port(address: str, port: int) -> None:
    """ConfigError now, before any process starts, when ``address:port`` cannot be bound
    (the web process binds it again, and reports the same error if it lost a race)."""
    import socket

    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((address, port))
        except OSError as error:
            raise bind_error(address, port, error) from None


def page_address(address: str, port: int) -> str:
    host = f"[{address}]" if ":" in address else address
    return f"http://{host}:{port}/"


async def serve(spec: WebSpec, stop: Flag, ready: Any = None, beat: Any = None) -> None:
    """Serve the page until ``stop`` is set; ``ready()`` is called once it listens, and
    ``beat()`` at every turn of the event loop's watch (the supervisor's stall rule).
    ConfigError when the address cannot be bound."""
    import zmq
    import zmq.asyncio
    from aiohttp import web

    from forecaster.endpoints import is_loopback_host
    from forecaster.web.live import LiveCamera, LiveFeed
    from forecaster.web.server import LivePage, PageSettings, ServerLog

    rings = [(camera, FrameRing.attach(name)) for camera, name in spec.cameras]
    feed = LiveFeed({camera: LiveCamera(camera, ring) for camera, ring in rings},
                    Path(spec.events_dir) if spec.events_dir else None)
    context = zmq.asyncio.Context()
    sub = context.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.RCVHWM, FEED_SNDHWM)
    for kind in (b"score/", b"event/", b"status/"):
        sub.setsockopt(zmq.SUBSCRIBE, kind)
    sub.connect(spec.feed_endpoint)
    forecasts = [False]

    def on_viewers(count: int) -> None:
        """Forecasts (a frame each) flow only while somebody watches."""
        wanted = count > 0
        if wanted != forecasts[0]:
            sub.setsockopt(zmq.SUBSCRIBE if wanted else zmq.UNSUBSCRIBE, b"forecast/")
            forecasts[0] = wanted

    page = LivePage(
        feed,
        PageSettings(spec.threshold_on, spec.threshold_off, spec.image_fps, spec.token,
                     loopback=is_loopback_host(spec.address)),
        Path(spec.events_dir) if spec.events_dir else None,
        on_viewers,
        dict(spec.names),
    )
    runner = web.AppRunner(page.app, access_log=None, handle_signals=False, shutdown_timeout=1.0,
                           logger=ServerLog(logging.getLogger("aiohttp.server")))
    await runner.setup()
    reader: asyncio.Task[None] | None = None
    try:
        site = web.TCPSite(runner, spec.address, spec.port)
        try:
            await site.start()
        except OSError as error:
            raise bind_error(spec.address, spec.port, error) from None

        async def read() -> None:
            while True:
                feed.handle(await sub.recv_multipart())

        reader = asyncio.create_task(read())
        if ready is not None:
            ready()
        log.info("live page on %s%s", page_address(spec.address, spec.port),
                 " (open it with ?token=TOKEN, the token in web.token_file)" if spec.token
                 else "")
        while not stop.is_set():
            if beat is not None:
                beat()
            await asyncio.sleep(0.1)
            if reader.done():
                reader.result()  # the reader's error, if it failed
    finally:
        if reader is not None:
            reader.cancel()
        await runner.cleanup()
        sub.close(linger=0)
        context.term()
        for camera in feed.cameras.values():
            camera.picture.close()
        for _, ring in rings:
            ring.close()


def web_main(spec: WebSpec, control: Outbox, stop: Flag, health: Health | None = None) -> None:
    """Entry point of the web process (spawned, and restarted, by the supervisor)."""
    start_child("fc-web", stop, spec.log_level)
    role = "web"
    beat = health.beat_web if health is not None else None
    if beat is not None:
        beat()
    try:
        asyncio.run(serve(spec, stop, lambda: control.put(("ready", role, 0, "")), beat))
    except ForecasterError as error:
        control.put(("error", role, error.exit_code, str(error)))
