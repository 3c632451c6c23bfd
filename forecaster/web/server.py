"""The live page's HTTP server (aiohttp): the page, its static files, the WebSocket feed
and the recordings folder, behind the access rules.

Access rules (every request): on a loopback address, the ``Host`` header must name a
loopback host too (a web site cannot reach the page through DNS rebinding); with a token,
it must come as ``?token=`` (the page's first load, answered with a cookie and a redirect
that drops it from the address bar), as the cookie, or as ``Authorization: Bearer``;
the WebSocket must come from the page's own origin. Refusals are 401 (no token) or 403,
and logged (at most one line a second).

The JSON API (``/api/...``: the cameras and the event index) is
:mod:`forecaster.web.api`, behind the same rules.

The feed (``/feed``, one WebSocket per open page) carries JSON text messages (``hello``,
``scores``, ``state``, ``events``) and binary image messages (see
:func:`~forecaster.web.live.panels_message` and :func:`~forecaster.web.live.tile_message`).
A viewer is sent a camera's next images only after it acknowledged the previous ones, so a
slow browser gets the newest images when it is ready and never a queue.

What a viewer is sent depends on what it says it shows (``{"view": {"tiles": true,
"detail": "cam0"}}``, the page's script): the tiles of every camera, and the panels of the
camera open in the detail view. A client that never says gets the panels of every camera.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import WSMsgType, web

from forecaster.endpoints import host_header_is_loopback
from forecaster.protocol import loads_bounded
from forecaster.web.api import EventsApi
from forecaster.web.live import HISTORY_S, LiveFeed

log = logging.getLogger("forecaster.web")

STATIC_DIR = Path(__file__).with_name("static")
TOKEN_COOKIE = "forecaster_token"
#: seconds between the feed's updates of scores, health and events
UPDATE_S = 0.25
#: a viewer that has not acknowledged images for this long is sent new ones anyway
ACK_TIMEOUT_S = 10.0
#: seconds between checks for finished recordings
RECORDING_CHECK_S = 1.0

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True, slots=True)
class PageSettings:
    threshold_on: float
    threshold_off: float
    image_fps: float = 5.0
    #: the access token; None: none asked (loopback only)
    token: str | None = None
    #: the server listens on a loopback address: only loopback Host headers are answered
    loopback: bool = True


@dataclass(eq=False)
class Viewer:
    """One open page."""

    ws: web.WebSocketResponse
    counts: dict[str, int] = field(default_factory=dict)
    shown: dict[str, int] = field(default_factory=dict)
    #: camera -> when images were sent that are not acknowledged yet
    waiting: dict[str, float] = field(default_factory=dict)
    state: list[dict[str, Any]] | None = None
    events_version: int = -1
    #: shows the tiles (the page); None: has not said (a script: the panels of each camera)
    tiles: bool | None = None
    #: the camera open in the detail view
    detail: str | None = None

    def wants_panels(self, camera: str) -> bool:
        return self.tiles is None or self.detail == camera

    def view(self, message: Any) -> None:
        """Take a viewer's ``{"tiles": bool, "detail": camera or null}``."""
        if isinstance(message, dict):
            self.tiles = bool(message.get("tiles"))
            detail = message.get("detail")
            self.detail = detail if isinstance(detail, str) else None


def bearer_token(header: str) -> str | None:
    """The token of an ``Authorization: Bearer TOKEN`` header (the scheme in any case)."""
    scheme, _, value = header.strip().partition(" ")
    return value.strip() or None if scheme.lower() == "bearer" else None


def same_origin_path(location: str) -> str:
    """``location`` (a path and query) with its leading slashes collapsed to one, so that
    a browser cannot read it as another host's address (``//evil.com/``)."""
    return "/" + location.lstrip("/\\")


class ServerLog(logging.LoggerAdapter):
    """aiohttp's server logger for the page: a malformed request (a client's error, not
    the server's) is one warning line, at most one a second; the rest goes through."""

    def __init__(self, logger: logging.Logger) -> None:
        super().__init__(logger, {})
        self._logged_at = -math.inf
        self._unlogged = 0

    def exception(self, msg: object, *args: object, exc_info: Any = True,
                  **kwargs: Any) -> None:
        from aiohttp.http_exceptions import HttpProcessingError

        if not isinstance(exc_info, HttpProcessingError):
            self.logger.exception(msg, *args, exc_info=exc_info, **kwargs)
            return
        self._unlogged += 1
        now = time.monotonic()
        if now - self._logged_at < 1.0:
            return
        more = self._unlogged - 1
        detail = " ".join(str(exc_info.message or exc_info).split())[:200]
        self.logger.warning("live page: malformed request (%d %s)%s", exc_info.code, detail,
                            f" ({more} more since the last line)" if more else "")
        self._logged_at, self._unlogged = now, 0


class LivePage:
    """The aiohttp application of the live page, fed by a :class:`LiveFeed`."""

    def __init__(self, feed: LiveFeed, settings: PageSettings,
                 events_dir: Path | None = None,
                 on_viewers: Callable[[int], None] | None = None,
                 names: dict[str, str] | None = None) -> None:
        self.feed = feed
        self.settings = settings
        self.events_dir = events_dir.resolve() if events_dir is not None else None
        self.on_viewers = on_viewers
        self.viewers: set[Viewer] = set()
        self.images_encoded = 0
        self._render_task: asyncio.Task[None] | None = None
        self._recordings_task: asyncio.Task[None] | None = None
        self._refused_at = 0.0
        self._refused_unlogged = 0
        app = web.Application(middlewares=[self._guard])
        app.router.add_get("/", self._index)
        app.router.add_get("/favicon.ico", self._favicon)
        app.router.add_get("/feed", self._feed)
        app.router.add_get("/events/{path:.+}", self._recording)
        app.router.add_static("/static/", STATIC_DIR, follow_symlinks=False)
        EventsApi(self.events_dir, list(feed.cameras), names).add_routes(app)
        app.on_startup.append(self._start_background)
        app.on_shutdown.append(self._close_viewers)
        self.app = app

    # -- access ---------------------------------------------------------------------------

    def _refuse(self, request: web.Request, status: int, why: str) -> web.Response:
        self._refused_unlogged += 1
        now = time.monotonic()
        if now - self._refused_at >= 1.0:
            more = self._refused_unlogged - 1
            log.warning("live page: refused %s %s from %s: %s%s", request.method,
                        request.path, request.remote, why,
                        f" ({more} more refusal(s) since the last line)" if more else "")
            self._refused_at, self._refused_unlogged = now, 0
        return web.Response(status=status, text=f"{status}: {why}\n")

    @web.middleware
    async def _guard(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        settings = self.settings
        host = request.headers.get("Host")
        if settings.loopback and not host_header_is_loopback(host):
            what = "no Host header" if host is None else f"Host {host!r} is not a loopback address"
            return self._refuse(request, 403, f"{what} (open the page as "
                                "http://127.0.0.1:PORT/)")
        origin = request.headers.get("Origin")
        if request.path == "/feed" and origin is not None and origin not in (
            f"http://{request.host}", f"https://{request.host}"
        ):
            return self._refuse(request, 403, f"WebSocket from another origin {origin!r}")
        token = settings.token
        if token is None:
            return await self._serve(request, handler)
        in_query = request.query.get("token")
        # what the client sends on purpose comes first: a stale cookie never wins
        given = (in_query or bearer_token(request.headers.get("Authorization", ""))
                 or request.cookies.get(TOKEN_COOKIE))
        if not given:
            return self._refuse(request, 401, "access token required: open the page as "
                                "/?token=TOKEN (the token is in web.token_file)")
        if not hmac.compare_digest(given.encode(), token.encode()):
            return self._refuse(request, 403, "wrong access token")
        if in_query is not None and request.method == "GET":
            # answer with the cookie and the same address without the token in it
            query = {k: v for k, v in request.query.items() if k != "token"}
            location = same_origin_path(str(request.rel_url.with_query(query)))
            response = web.Response(status=303, headers={"Location": location})
            response.set_cookie(TOKEN_COOKIE, token, httponly=True, samesite="Strict",
                                path="/")
            return response
        return await self._serve(request, handler)

    async def _serve(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if not request.path.startswith("/static/"):
            return await handler(request)
        try:
            return await handler(request)
        except (OSError, ValueError) as error:  # aiohttp's files: a name too long
            why = error.strerror if isinstance(error, OSError) and error.strerror else error
            return self._refuse(request, 404, f"no file {request.path[:80]!r} ({why})")

    # -- pages and files ------------------------------------------------------------------

    async def _index(self, _request: web.Request) -> web.StreamResponse:
        return web.FileResponse(STATIC_DIR / "index.html",
                                headers={"Cache-Control": "no-cache"})

    async def _favicon(self, _request: web.Request) -> web.StreamResponse:
        return web.FileResponse(STATIC_DIR / "favicon.svg",
                                headers={"Content-Type": "image/svg+xml",
                                         "Cache-Control": "max-age=86400"})

    async def _recording(self, request: web.Request) -> web.StreamResponse:
        """A file of the recordings folder, read-only; nothing outside it."""
        root = self.events_dir
        if root is None:
            raise web.HTTPNotFound(text="no recordings folder\n")
        relative = request.match_info["path"]
        try:
            target = (root / relative).resolve()
            inside = target.is_relative_to(root) and not any(
                p.startswith(".") for p in Path(relative).parts)
            # the event index is read through the API, never as a file
            found = inside and target.is_file() and target.parent != root
        except (OSError, ValueError) as error:  # a name too long, a NUL byte
            why = error.strerror if isinstance(error, OSError) and error.strerror else error
            return self._refuse(request, 404, f"no recording {relative[:80]!r} ({why})")
        if not inside:
            return self._refuse(request, 403, f"{relative[:80]!r} is outside the recordings "
                                "folder")
        if not found:
            raise web.HTTPNotFound(text=f"no recording {relative[:80]}\n")
        return web.FileResponse(target)

    # -- the feed -------------------------------------------------------------------------

    def _viewers_changed(self) -> None:
        if self.on_viewers is not None:
            self.on_viewers(len(self.viewers))
        if self.viewers and (self._render_task is None or self._render_task.done()):
            self._render_task = asyncio.create_task(self._render_loop())

    async def _render_loop(self) -> None:
        """Render each camera's newest images at most ``image_fps`` times a second, while
        anybody watches."""
        period = 1.0 / self.settings.image_fps
        while self.viewers:
            began = time.monotonic()
            tiles = any(viewer.tiles for viewer in self.viewers)
            for name, camera in self.feed.cameras.items():
                if tiles:
                    camera.want_pictures(period)
                panels = any(viewer.wants_panels(name) for viewer in self.viewers)
                if camera.render(panels) is not None:
                    self.images_encoded += 3
                if tiles:
                    camera.render_tile()
            await asyncio.sleep(max(0.0, period - (time.monotonic() - began)))

    async def _feed(self, request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse(heartbeat=30.0, max_msg_size=4096)
        await ws.prepare(request)
        viewer = Viewer(ws)
        self.viewers.add(viewer)
        self._viewers_changed()
        sender = asyncio.create_task(self._send_loop(viewer))
        try:
            async for message in ws:
                if message.type != WSMsgType.TEXT:
                    continue
                with contextlib.suppress(ValueError, TypeError, AttributeError):
                    # ProtocolError is a ValueError: too deep or not JSON, ignored
                    said = loads_bounded(message.data, "a viewer's message")
                    if "view" in said:
                        viewer.view(said["view"])
                        self._viewers_changed()
                    viewer.waiting.pop(str(said.get("ack")), None)
        finally:
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConnectionError):
                await sender
            self.viewers.discard(viewer)
            self._viewers_changed()
        return ws

    async def _send_loop(self, viewer: Viewer) -> None:
        ws = viewer.ws
        settings = self.settings
        await ws.send_json({
            "type": "hello", "cameras": list(self.feed.cameras),
            "threshold_on": settings.threshold_on, "threshold_off": settings.threshold_off,
            "image_fps": settings.image_fps, "history_s": HISTORY_S,
            "recordings": self.events_dir is not None,
        })
        period = min(UPDATE_S, 1.0 / settings.image_fps)
        while not ws.closed:
            now = time.monotonic()
            for name, camera in self.feed.cameras.items():
                points = camera.points_since(viewer.counts.get(name, 0))
                viewer.counts[name] = camera.score_count
                if points:
                    await ws.send_json({"type": "scores", "camera": name, "points": points})
            state = [camera.state() for camera in self.feed.cameras.values()]
            if state != viewer.state:
                viewer.state = state
                await ws.send_json({"type": "state", "cameras": state, "now": time.time()})
            events = self.feed.events
            if events.version != viewer.events_version:
                viewer.events_version = events.version
                await ws.send_json({"type": "events", "events": events.listing()})
            for name, camera in self.feed.cameras.items():
                tile = camera.tile
                key = f"tile/{name}"
                sent_at = viewer.waiting.get(key)
                if (viewer.tiles and tile is not None and viewer.shown.get(key) != tile.seq
                        and (sent_at is None or now - sent_at >= ACK_TIMEOUT_S)):
                    viewer.shown[key] = tile.seq
                    viewer.waiting[key] = now
                    await ws.send_bytes(tile.message)
                if not viewer.wants_panels(name):
                    continue
                panels = camera.panels
                sent_at = viewer.waiting.get(name)
                if sent_at is not None and now - sent_at < ACK_TIMEOUT_S:
                    continue  # the previous images are still on their way: drop, never queue
                if panels is None or viewer.shown.get(name) == panels.seq:
                    continue
                viewer.shown[name] = panels.seq
                viewer.waiting[name] = now
                await ws.send_bytes(panels.message)
            await asyncio.sleep(period)

    # -- background -----------------------------------------------------------------------

    async def _start_background(self, app: web.Application) -> None:
        if self.events_dir is not None:
            self._recordings_task = asyncio.create_task(self._watch_recordings())

    async def _watch_recordings(self) -> None:
        while True:
            self.feed.events.refresh()
            await asyncio.sleep(RECORDING_CHECK_S)

    async def _close_viewers(self, app: web.Application) -> None:
        if self._recordings_task is not None:
            self._recordings_task.cancel()
        for viewer in list(self.viewers):
            await viewer.ws.close(code=1001, message=b"daemon stopping")
