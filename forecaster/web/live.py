"""What the live page shows, gathered in the web process at no cost to the worker.

The worker publishes every message a second time on a private ``ipc://`` socket (see
:class:`~forecaster.web.process.Tee`). :class:`LiveFeed` subscribes there to ``score/``,
``event/`` and ``status/`` (small messages: the score chart, the events and the health
need their history when a viewer arrives) and to ``forecast/`` (a frame each) only while at
least one viewer is connected. The actual frames come from the cameras' shared-memory
rings, read by seq; the error is ``|actual - forecast made for that frame|``. Images are
enlarged and JPEG-encoded here, at most ``image_fps`` times a second per camera whatever
the number of viewers, and only while there are viewers.

Each camera's tile shows the camera's own picture: the capture process writes it as a JPEG
into the ring's picture area (:mod:`forecaster.ipc.picture`) only while this process asks
for it (a page is open), and it is sent on as it is, with the error heat map at the
model's size (the browser lays it over the picture). The three enlarged panels (frame,
forecast, error) are made only for the cameras a viewer has open in the detail view.
"""

from __future__ import annotations

import json
import logging
import math
import struct
from collections import OrderedDict, deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from forecaster.ipc.picture import PictureSlot
from forecaster.ipc.ring import FrameRing
from forecaster.protocol import (
    Forecast,
    ProtocolError,
    Score,
    Status,
    decode,
    loads_bounded,
    parse_topic,
)
from forecaster.recording.event_index import EventIndex

log = logging.getLogger("forecaster.web")

#: seconds of scores kept for the chart
HISTORY_S = 300.0
#: anomaly episodes kept for the page (the newest)
MAX_EVENTS = 50
#: forecasts kept per camera, by the frame they are for
FORECASTS_KEPT = 8
#: the error image: |actual - forecast| times this, clipped to 255, colour-mapped
ERROR_GAIN = 6.0
#: height in pixels of each enlarged image
PANEL_HEIGHT = 256
JPEG_QUALITY = 85


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


@dataclass(frozen=True, slots=True)
class Panels:
    """One camera's three images for one frame, JPEG-encoded, and the binary WebSocket
    message that carries them to every viewer (made once)."""

    camera: str
    seq: int
    ts: float
    jpegs: tuple[bytes, bytes, bytes]  # actual, forecast, error
    message: bytes


def panels_message(camera: str, seq: int, ts: float, jpegs: tuple[bytes, ...]) -> bytes:
    """4-byte big-endian header length, the JSON header, then the JPEGs back to back
    (their sizes are in the header)."""
    header = json.dumps({"camera": camera, "seq": seq, "ts": ts,
                         "sizes": [len(j) for j in jpegs]}).encode()
    return struct.pack(">I", len(header)) + header + b"".join(jpegs)


def _enlarge(image: np.ndarray) -> np.ndarray:
    height, width = image.shape[:2]
    scale = max(1, PANEL_HEIGHT // height)
    return cv2.resize(image, (width * scale, height * scale), interpolation=cv2.INTER_NEAREST)


def _jpeg(image: np.ndarray) -> bytes:
    ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:  # pragma: no cover - OpenCV encodes any uint8 image
        raise RuntimeError("JPEG encoding failed")
    return data.tobytes()


def heat_map(actual: np.ndarray, forecast: np.ndarray) -> np.ndarray:
    """|actual - forecast|, amplified and colour-mapped (BGR)."""
    error = np.abs(actual.astype(np.int16) - forecast.astype(np.int16)).astype(np.float32)
    heat = np.clip(error * ERROR_GAIN, 0, 255).astype(np.uint8)
    return cv2.applyColorMap(heat, cv2.COLORMAP_INFERNO)


def render_panels(camera: str, seq: int, ts: float, actual: np.ndarray,
                  forecast: np.ndarray, heat: np.ndarray | None = None) -> Panels:
    """Enlarge and encode the actual frame, its forecast and their error as a heat map."""
    heat = heat_map(actual, forecast) if heat is None else heat
    jpegs = (_jpeg(_enlarge(actual)), _jpeg(_enlarge(forecast)), _jpeg(_enlarge(heat)))
    return Panels(camera, seq, ts, jpegs, panels_message(camera, seq, ts, jpegs))


@dataclass(frozen=True, slots=True)
class Tile:
    """One camera's tile images: the picture (the source frame, or the model's frame
    until the capture process has written one) and the heat map (the model's size)."""

    camera: str
    seq: int
    message: bytes


def tile_message(camera: str, seq: int, ts: float, picture: bytes, heat: bytes,
                 source: bool, heat_seq: int) -> bytes:
    """As :func:`panels_message`, with ``"kind": "tile"``: the picture then the heat map
    (size 0: none yet). ``ack`` is what the viewer sends back once it has shown them."""
    header = json.dumps({"kind": "tile", "camera": camera, "seq": seq, "ts": ts,
                         "heat_seq": heat_seq, "source": source, "ack": f"tile/{camera}",
                         "sizes": [len(picture), len(heat)]}).encode()
    return struct.pack(">I", len(header)) + header + picture + heat


class LiveCamera:
    """One camera's recent scores, health, forecasts and latest images."""

    def __init__(self, camera: str, ring: FrameRing) -> None:
        self.camera = camera
        self.ring = ring
        #: (ts, seq, score) of the last HISTORY_S seconds
        self.scores: deque[tuple[float, int, float]] = deque()
        #: scores received since the start (viewers remember how many they were sent)
        self.score_count = 0
        self.last_score: Score | None = None
        #: the anomalous region of the newest frame that had one, while its episode is open
        self.box: tuple[int, int, int, int] | None = None
        self.status: Status | None = None
        self.forecasts: OrderedDict[int, np.ndarray] = OrderedDict()
        self.panels: Panels | None = None
        self.tile: Tile | None = None
        self.picture = PictureSlot(ring)
        #: seq and JPEG of the newest heat map, and of the model's frame it was made for
        self._heat: tuple[int, bytes, bytes] | None = None
        self._picture_seq = -1
        self._picture: tuple[int, float, bytes] | None = None
        self._tile_key = (-1, -1)
        self._frame = np.empty((1, ring.height, ring.width), np.uint8)
        self._stamp = np.empty((1,), np.float64)

    def add_score(self, score: Score) -> None:
        self.scores.append((score.ts, score.seq, score.score))
        self.score_count += 1
        self.last_score = score
        # the box stays while the episode is open, through its frames without one
        if score.box is not None:
            self.box = score.box
        elif not score.anomaly:
            self.box = None
        while self.scores and self.scores[0][0] < score.ts - HISTORY_S:
            self.scores.popleft()

    def points_since(self, count: int) -> list[list[float | None]]:
        """Chart points ``[ts, score]`` of the scores after the first ``count`` received
        (all those kept when older ones are gone)."""
        new = min(self.score_count - count, len(self.scores))
        if new <= 0:
            return []
        items = list(self.scores)[len(self.scores) - new:]
        return [[ts, _finite(score)] for ts, _, score in items]

    def add_forecast(self, forecast: Forecast) -> None:
        self.forecasts[forecast.target_seq] = np.array(forecast.frame, copy=True)
        while len(self.forecasts) > FORECASTS_KEPT:
            self.forecasts.popitem(last=False)

    def render(self, panels: bool = True) -> Panels | None:
        """New images when a forecast newer than the last shown has its frame in the
        ring (the newest such), else None. The heat map is made for the tile either way;
        the enlarged panels only with ``panels``."""
        shown = self._heat[0] if self._heat is not None else -1
        latest = self.ring.latest_seq
        for target in sorted(self.forecasts, reverse=True):
            if target <= shown:
                return None
            if target > latest:
                continue
            if self.ring.read(target, target, self._frame, self._stamp):
                actual, forecast = self._frame[0], self.forecasts[target]
                heat = heat_map(actual, forecast)
                self._heat = (target, _jpeg(heat), _jpeg(actual))
                if not panels:
                    return None
                self.panels = render_panels(self.camera, target, float(self._stamp[0]),
                                            actual, forecast, heat)
                return self.panels
        return None

    def want_pictures(self, interval_s: float) -> None:
        """Ask the capture process for the camera's picture (renewed while anybody
        watches; it stops by itself a few seconds after the last renewal)."""
        self.picture.want(interval_s)

    def render_tile(self) -> Tile | None:
        """The tile's new message when its picture or its heat map changed, else None."""
        picture = self.picture.read(self._picture_seq)
        if picture is not None:
            self._picture_seq = picture.seq
            self._picture = (picture.seq, picture.ts, picture.jpeg)
        heat = self._heat
        heat_seq = heat[0] if heat is not None else -1
        key = (self._picture_seq, heat_seq)
        if key == self._tile_key:
            return None
        if self._picture is not None:
            seq, ts, jpeg = self._picture
            source = True
        elif heat is not None:  # no picture yet: the model's frame
            seq, ts, jpeg, source = heat[0], 0.0, heat[2], False
        else:
            return None
        self._tile_key = key
        message = tile_message(self.camera, seq, ts, jpeg, heat[1] if heat else b"", source,
                               heat_seq)
        self.tile = Tile(self.camera, max(seq, heat_seq), message)
        return self.tile

    def state(self) -> dict[str, Any]:
        """Health for the page: the ring's own counters and the worker's last status."""
        stats = self.ring.stats()
        last_frame = self.ring.latest_ts()
        status = self.status
        score = self.last_score
        if stats.ended:
            source = "ended"
        elif not stats.connected:
            source = "reconnecting" if stats.frames_captured else "connecting"
        else:
            source = "live"
        return {
            "camera": self.camera,
            "source": source,
            "frames_captured": stats.frames_captured,
            "fps": status.fps if status else None,
            "frames_dropped": status.frames_dropped if status else None,
            "state_resets": status.state_resets if status else None,
            "model_fit": status.model_fit if status else None,
            "reason": status.reason if status else None,
            "score": _finite(score.score) if score else None,
            "anomaly": score.anomaly if score else False,
            "seq": score.seq if score else None,
            "box": list(self.box) if self.box is not None else None,
            "frame_size": [self.ring.width, self.ring.height],
            "last_frame_ts": last_frame,
        }


def _relative_path(value: Any) -> str | None:
    """A recording path from an event header: relative, no ``..``; else None."""
    if not isinstance(value, str) or not value or len(value) > 1024:
        return None
    path = Path(value)
    if path.is_absolute() or ".." in path.parts:
        return None
    return path.as_posix()


def _complete(events_dir: Path | None, relative: str | None) -> bool:
    """Whether a recording is complete: it exists, and its sidecar ``<name>.json`` (or
    ``<name>.<ext>.json``) beside it (an event cut at a stop may have a sidecar and no clip)."""
    if events_dir is None or relative is None:
        return False
    path = events_dir / relative
    return path.is_file() and (path.with_suffix(".json").is_file()
                               or path.with_name(path.name + ".json").is_file())


class EventLog:
    """Anomaly episodes, newest last: a ``start`` message opens one, ``end`` closes it."""

    def __init__(self, events_dir: Path | None) -> None:
        self.events_dir = events_dir
        #: the event index: each card's clip state ('recording', 'ready', 'interrupted',
        #: 'none'); an event whose files were not written loses its clip and snapshot
        self.index = EventIndex(events_dir) if events_dir is not None else None
        self.items: deque[dict[str, Any]] = deque(maxlen=MAX_EVENTS)
        #: bumped on every change, for viewers to know when to send the list again
        self.version = 0
        self._next_id = 0

    def add(self, camera: str, header: dict[str, Any]) -> None:
        state = header.get("state")
        seq, ts, peak = header.get("seq"), header.get("ts"), header.get("peak_score")
        if state not in ("start", "end") or not isinstance(seq, int):
            return
        open_one = next((e for e in reversed(self.items)
                         if e["camera"] == camera and e["end_seq"] is None), None)
        if state == "start" or open_one is None:
            open_one = {"id": self._next_id, "camera": camera, "start_seq": seq,
                        "start_ts": ts, "end_seq": None, "end_ts": None, "peak": None,
                        "clip": None, "snapshot": None, "clip_ready": False,
                        "snapshot_ready": False, "clip_state": None}
            self._next_id += 1
            self.items.append(open_one)
        if state == "end":
            open_one["end_seq"], open_one["end_ts"] = seq, ts
        if isinstance(peak, (int, float)) and math.isfinite(peak):
            open_one["peak"] = float(peak)
        for key in ("clip", "snapshot"):
            path = _relative_path(header.get(key))
            if path is not None:
                open_one[key] = path
        self.refresh()
        self.version += 1

    def refresh(self) -> bool:
        """Mark recordings whose sidecar has appeared; True when any changed."""
        changed = False
        for item in self.items:
            for key in ("clip", "snapshot"):
                ready = f"{key}_ready"
                if item[key] and not item[ready] and _complete(self.events_dir, item[key]):
                    item[ready] = True
                    changed = True
        changed = self._index_states() or changed
        if changed:
            self.version += 1
        return changed

    def _index_states(self) -> bool:
        """Take each unsettled card's clip state from the index; True when any changed."""
        index = self.index
        stems = {item["clip"].rsplit(".", 1)[0]: item for item in self.items
                 if item["clip"] and item["clip_state"] not in ("ready", "interrupted", "none")}
        if index is None or not stems:
            return False
        states = index.quietly("read clip states", index.states, list(stems)) or {}
        changed = False
        for stem, state in states.items():
            item = stems[stem]
            if state == item["clip_state"]:
                continue
            item["clip_state"] = state
            changed = True
            if state in ("interrupted", "none") and not item["clip_ready"]:
                item["clip"] = None  # no clip will come
                if not item["snapshot_ready"]:
                    item["snapshot"] = None
        return changed

    def listing(self) -> list[dict[str, Any]]:
        return [dict(item) for item in reversed(self.items)]


class LiveFeed:
    """The web process's view of the daemon: one :class:`LiveCamera` per camera and the
    :class:`EventLog`, fed by :meth:`handle` with the worker's messages."""

    def __init__(self, cameras: dict[str, LiveCamera], events_dir: Path | None) -> None:
        self.cameras = cameras
        self.events = EventLog(events_dir)
        self.bad_messages = 0

    def handle(self, parts: list[bytes]) -> None:
        """Take one multipart message; malformed ones are counted and logged once."""
        try:
            kind, camera_id = parse_topic(parts[0])
            camera = self.cameras.get(camera_id)
            if camera is None:
                return
            if kind == "event":
                header = loads_bounded(parts[1], f"event/{camera_id} header")
                if isinstance(header, dict) and header.get("v") == 1:
                    self.events.add(camera_id, header)
                return
            message = decode(parts)
        except (ProtocolError, ValueError, IndexError) as error:
            self.bad_messages += 1
            if self.bad_messages == 1:
                log.warning("ignoring a malformed message from the worker: %s", error)
            return
        if isinstance(message, Score):
            camera.add_score(message)
        elif isinstance(message, Forecast):
            camera.add_forecast(message)
        elif isinstance(message, Status):
            camera.status = message
