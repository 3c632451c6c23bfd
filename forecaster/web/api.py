"""The live page's JSON API: the cameras and the event index, for the page and for scripts.

Routes (behind the page's own access rules, :mod:`forecaster.web.server`):

- ``GET /api/cameras``: each camera's id, display name, unacknowledged events and newest
  event's start; the total; the daemon's time zone.
- ``GET /api/events``: events newest first, ``camera``, ``since``, ``until`` (seconds
  since the epoch, or ISO 8601 dates), ``before`` (an event id: the next page), ``limit``
  (1-500, default 50) and ``include_dismissed`` (0 or 1).
- ``GET /api/events/{id}``: one event.
- ``POST /api/events/{id}/ack``, ``POST /api/events/{id}/dismiss``, and
  ``POST /api/events/ack?camera=ID``, ``POST /api/events/dismiss?camera=ID`` (every event
  of a camera): an optional JSON body ``{"by": "name"}``. A dismissed event is
  acknowledged too, and left out of the listing unless ``include_dismissed=1``.

A POST must come from the page's own origin (a browser's ``Origin`` header, when it sends
one): another site cannot acknowledge events through a visitor's browser. Bad parameters
are a 400 whose JSON ``error`` names the parameter and the value. Without an event index
(``[recording] enabled = false``) every route is a 404.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import math
import os
import re
import sqlite3
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote

from aiohttp import web

from forecaster.protocol import is_camera_id, loads_bounded
from forecaster.recording.event_index import EventIndex

log = logging.getLogger("forecaster.web")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

#: the most events one page may hold
MAX_LIMIT = 500
DEFAULT_LIMIT = 50
#: the longest ``by`` name kept
MAX_BY = 64
#: bytes of a POST body read at most
MAX_BODY = 4096
DEFAULT_BY = "operator"


def local_zone() -> str:
    """The daemon's time zone: an IANA name (``TZ``, ``/etc/localtime``, ``/etc/timezone``)
    when one is known, else its UTC offset now (``+01:00``), ``UTC`` at offset 0."""
    names = [os.environ.get("TZ", "").lstrip(":")]
    try:
        target = os.readlink("/etc/localtime")
        names.append(target.split("zoneinfo/", 1)[1] if "zoneinfo/" in target else "")
    except OSError:
        pass
    with contextlib.suppress(OSError, UnicodeDecodeError):
        names.append(Path("/etc/timezone").read_text("utf-8").strip())
    for name in names:
        if name and re.fullmatch(r"[A-Za-z][A-Za-z0-9_+\-]*(/[A-Za-z0-9_+\-]+)*", name) \
                and _known_zone(name):
            return name
    offset = dt.datetime.now().astimezone().utcoffset() or dt.timedelta(0)
    if not offset:
        return "UTC"
    minutes = int(offset.total_seconds() // 60)
    sign = "+" if minutes >= 0 else "-"
    return f"{sign}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}"


def _known_zone(name: str) -> bool:
    try:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError
    except ImportError:  # pragma: no cover - Python 3.9
        return False
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        return False
    return True


class BadParameter(ValueError):
    """A query parameter or body the API cannot take (answered 400, with this text)."""


def _error(status: int, text: str) -> web.Response:
    return web.json_response({"error": text}, status=status)


def parse_time(name: str, value: str) -> float:
    """Seconds since the epoch from a number or an ISO 8601 date (a date without a time
    zone is the daemon's local time)."""
    text = value.strip()
    try:
        number = float(text)
    except ValueError:
        pass
    else:
        if not math.isfinite(number):
            raise BadParameter(f"{name}: not a finite time ({value[:40]!r})")
        return number
    try:
        when = dt.datetime.fromisoformat(text.replace("Z", "+00:00").replace(" ", "T", 1))
    except ValueError:
        raise BadParameter(f"{name}: not a time: seconds since the epoch or an ISO 8601 "
                           f"date ({value[:40]!r})") from None
    try:
        if when.tzinfo is None:
            when = when.astimezone()
        return when.timestamp()
    except (ValueError, OverflowError, OSError):  # a year the clock cannot hold
        raise BadParameter(f"{name}: a time out of range ({value[:40]!r})") from None


def _int(name: str, value: str, low: int, high: int) -> int:
    try:
        number = int(value)
    except ValueError:
        raise BadParameter(f"{name}: not a whole number ({value[:40]!r})") from None
    if not low <= number <= high:
        raise BadParameter(f"{name}: must be {low}-{high} (got {number})")
    return number


def _camera(value: str) -> str:
    if not is_camera_id(value):
        raise BadParameter(f"camera: not a camera id ({value[:40]!r})")
    return value


def _flag(name: str, value: str) -> bool:
    if value.lower() in ("1", "true", "yes"):
        return True
    if value.lower() in ("0", "false", "no", ""):
        return False
    raise BadParameter(f"{name}: must be 0 or 1 (got {value[:40]!r})")


def listing_query(query: Mapping[str, str]) -> dict[str, Any]:
    """The keyword arguments of :meth:`EventIndex.page` from a query string."""
    known = {"camera", "since", "until", "before", "limit", "include_dismissed", "token"}
    unknown = sorted(set(query) - known)
    if unknown:
        raise BadParameter(f"unknown parameter {unknown[0][:40]!r} (known: "
                           f"{', '.join(sorted(known - {'token'}))})")
    args: dict[str, Any] = {"limit": DEFAULT_LIMIT}
    if "camera" in query:
        args["camera"] = _camera(query["camera"])
    for name in ("since", "until"):
        if query.get(name):
            args[name] = parse_time(name, query[name])
    if query.get("before"):
        args["before"] = _int("before", query["before"], 1, 2**62)
    if "limit" in query:
        args["limit"] = _int("limit", query["limit"], 1, MAX_LIMIT)
    if "include_dismissed" in query:
        args["include_dismissed"] = _flag("include_dismissed", query["include_dismissed"])
    return args


def recording_url(path: str | None) -> str | None:
    """The page's address of a file of the recordings folder."""
    if not path:
        return None
    return "/events/" + "/".join(quote(part) for part in path.split("/"))


class EventsApi:
    """The API's routes over one recordings folder's index (None: no recordings)."""

    def __init__(self, events_dir: Path | None, cameras: list[str],
                 names: Mapping[str, str] | None = None, zone: str | None = None) -> None:
        self.index = EventIndex(events_dir) if events_dir is not None else None
        self.cameras = list(cameras)
        self.names = dict(names or {})
        self.zone = zone or local_zone()
        self._warned_at = -math.inf

    def add_routes(self, app: web.Application) -> None:
        guarded = self._unreadable_index
        app.router.add_get("/api/cameras", guarded(self._cameras))
        app.router.add_get("/api/events", guarded(self._events))
        # ids: SQLite's whole numbers (up to 2**63 - 1, 19 digits); a longer one is no event
        app.router.add_get(r"/api/events/{id:\d{1,18}}", guarded(self._event))
        app.router.add_post(r"/api/events/{id:\d{1,18}}/{action:ack|dismiss}",
                            guarded(self._act_one))
        app.router.add_post("/api/events/{action:ack|dismiss}", guarded(self._act_camera))
        app.on_cleanup.append(self._close)

    def _unreadable_index(self, handler: Handler) -> Handler:
        """``handler``, answering 503 (one warning a minute in the log) when the index
        cannot be read or written: a broken or locked file."""
        async def guarded(request: web.Request) -> web.StreamResponse:
            try:
                return await handler(request)
            except sqlite3.Error as error:
                now = time.monotonic()
                if now - self._warned_at >= 60.0:
                    self._warned_at = now
                    log.warning("live page: the event index %s cannot be used: %s",
                                self.index.path if self.index else "", error)
                return _error(503, f"the event index cannot be used: {error}")
        return guarded

    async def _close(self, _app: web.Application) -> None:
        if self.index is not None:
            self.index.close()

    def name(self, camera: str) -> str:
        return self.names.get(camera) or camera

    def event(self, row: dict[str, Any]) -> dict[str, Any]:
        """An index row as the API shows it."""
        stem = row["stem"]
        has_files = row["clip"] is not None or row["snapshot"] is not None
        return {
            "id": row["id"], "camera": row["camera"], "name": self.name(row["camera"]),
            "start_ts": row["start_ts"], "end_ts": row["end_ts"],
            "start_seq": row["start_seq"], "end_seq": row["end_seq"],
            "peak": row["peak"], "peak_ts": row["peak_ts"], "peak_seq": row["peak_seq"],
            "clip_url": recording_url(row["clip"]),
            "snapshot_url": recording_url(row["snapshot"]),
            "sidecar_url": recording_url(f"{stem}.json") if has_files else None,
            "clip_start_ts": row["clip_start_ts"], "clip_end_ts": row["clip_end_ts"],
            "clip_state": row["clip_state"], "acked_by": row["acked_by"],
            "acked_at": row["acked_at"], "dismissed": row["dismissed"],
        }

    # -- handlers -------------------------------------------------------------------------

    def _need_index(self) -> EventIndex:
        if self.index is None:
            raise web.HTTPNotFound(text='{"error": "no event index: recording is off '
                                   '([recording] enabled = false)"}\n',
                                   content_type="application/json")
        return self.index

    async def _cameras(self, _request: web.Request) -> web.StreamResponse:
        index = self._need_index()
        summary = await asyncio.to_thread(index.summary)
        cameras = []
        for camera in self.cameras:
            unacked, last = summary.get(camera, (0, None))
            cameras.append({"id": camera, "name": self.name(camera), "unacked": unacked,
                            "last_event_ts": last})
        return web.json_response({"cameras": cameras,
                                  "unacked_total": sum(c["unacked"] for c in cameras),
                                  "tz": self.zone})

    async def _events(self, request: web.Request) -> web.StreamResponse:
        index = self._need_index()
        try:
            args = listing_query(request.query)
        except BadParameter as error:
            return _error(400, str(error))
        page = await asyncio.to_thread(lambda: index.page(**args))
        return web.json_response({"events": [self.event(row) for row in page.events],
                                  "next_before": page.next_before, "tz": self.zone})

    async def _event(self, request: web.Request) -> web.StreamResponse:
        index = self._need_index()
        row = await asyncio.to_thread(index.get, int(request.match_info["id"]))
        if row is None:
            return _error(404, f"no event {request.match_info['id'][:20]}")
        return web.json_response({"event": self.event(row), "tz": self.zone})

    async def _by(self, request: web.Request) -> str:
        """The ``by`` of a POST's body (optional JSON); BadParameter when unusable."""
        origin = request.headers.get("Origin")
        if origin is not None and origin not in (f"http://{request.host}",
                                                 f"https://{request.host}"):
            raise web.HTTPForbidden(text=f"403: a POST from another origin {origin[:80]!r}\n")
        if request.content_length is not None and request.content_length > MAX_BODY:
            raise BadParameter(f"body: more than {MAX_BODY} bytes")
        body = b""
        while len(body) <= MAX_BODY:  # read() gives what has arrived: read to the end
            chunk = await request.content.read(MAX_BODY + 1 - len(body))
            if not chunk:
                break
            body += chunk
        if len(body) > MAX_BODY:
            raise BadParameter(f"body: more than {MAX_BODY} bytes")
        if not body.strip():
            return DEFAULT_BY
        try:
            data = loads_bounded(body, "the request's body")
        except ValueError:
            raise BadParameter('body: not JSON (send {"by": "name"} or nothing)') from None
        if not isinstance(data, dict):
            raise BadParameter('body: not a JSON object (send {"by": "name"} or nothing)')
        by = data.get("by", DEFAULT_BY)
        if not isinstance(by, str) or not by.strip() or len(by) > MAX_BY \
                or not by.isprintable():
            raise BadParameter(f"by: 1-{MAX_BY} printable characters (got {str(by)[:40]!r})")
        return by.strip()

    async def _act_one(self, request: web.Request) -> web.StreamResponse:
        index = self._need_index()
        event_id = int(request.match_info["id"])
        dismiss = request.match_info["action"] == "dismiss"
        try:
            by = await self._by(request)
        except BadParameter as error:
            return _error(400, str(error))
        changed = await asyncio.to_thread(lambda: index.ack(by=by, event_id=event_id,
                                                            dismiss=dismiss))
        row = await asyncio.to_thread(index.get, event_id)
        if row is None:
            return _error(404, f"no event {event_id}")
        return web.json_response({"changed": changed, "event": self.event(row)})

    async def _act_camera(self, request: web.Request) -> web.StreamResponse:
        index = self._need_index()
        dismiss = request.match_info["action"] == "dismiss"
        try:
            if "camera" not in request.query:
                raise BadParameter("camera: required (POST /api/events/ack?camera=ID)")
            camera = _camera(request.query["camera"])
            by = await self._by(request)
        except BadParameter as error:
            return _error(400, str(error))
        changed = await asyncio.to_thread(lambda: index.ack(by=by, camera=camera,
                                                            dismiss=dismiss))
        return web.json_response({"changed": changed, "camera": camera})
