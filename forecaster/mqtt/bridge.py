"""What the MQTT bridge publishes, built from the worker's messages (no network here).

:class:`Bridge` turns the feed's messages into :class:`Publication` values; the process
sends them. With ``<p>`` the topic prefix:

- ``<p>/available``: ``online`` or ``offline``, retained (the last will says ``offline``);
- ``<p>/<camera>/anomaly``: ``ON`` or ``OFF``, retained;
- ``<p>/<camera>/score``: the calibrated score, at most once per ``score_interval_s``;
- ``<p>/<camera>/event``: JSON at an episode's start and at its end;
- ``<p>/<camera>/snapshot``: the JPEG of the episode's peak frame, retained.

An episode's end waits for its recording (the snapshot and the sidecar) up to
``snapshot_wait_s``; then the snapshot goes out, and the end event after it.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from forecaster.protocol import Event, ProtocolError, Score, decode, parse_topic

#: how a publication is handled while the broker is away
STATE = "state"  # the latest value wins; all are sent again at each connect
EVENT = "event"  # queued (bounded, the oldest dropped) and sent at the next connect
SCORE = "score"  # dropped: the next one comes within seconds
#: the largest snapshot read from the recordings (bytes)
MAX_SNAPSHOT_BYTES = 8 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class Publication:
    topic: str
    payload: bytes
    qos: int
    retain: bool
    kind: str = STATE


@dataclass(frozen=True, slots=True)
class BridgeSettings:
    """What the bridge needs of the config; picklable."""

    topic_prefix: str = "forecaster"
    discovery_prefix: str = "homeassistant"
    qos: int = 1
    device_class: str = "motion"
    score_interval_s: float = 1.0
    #: the live page's address ending in "/" (links in events); None: no page
    page_url: str | None = None
    #: the recordings' folder (snapshots); None: not recording
    events_dir: str | None = None
    #: how long an episode's end waits for its snapshot (seconds)
    snapshot_wait_s: float = 60.0
    version: str = ""


def node_id(topic_prefix: str) -> str:
    """The node id of the discovery topics: the topic prefix as one topic level."""
    return topic_prefix.replace("/", "_")


def object_id(camera: str) -> str:
    """A camera id as Home Assistant takes it in ids (letters, digits, ``_``, ``-``)."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", camera)


def utc_text(ts: float | None) -> str | None:
    """UNIX seconds as ISO 8601 UTC with milliseconds; None for none."""
    if ts is None or not math.isfinite(ts):
        return None
    whole = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts))
    return f"{whole}.{int(ts % 1 * 1000):03d}Z"


def availability(settings: BridgeSettings, online: bool) -> Publication:
    return Publication(f"{settings.topic_prefix}/available",
                       b"online" if online else b"offline", settings.qos, True)


def discovery_topics(settings: BridgeSettings, camera: str) -> dict[str, str]:
    """Component -> discovery config topic of one camera's entities."""
    base = f"{settings.discovery_prefix}/{{}}/{node_id(settings.topic_prefix)}/{object_id(camera)}"
    return {"binary_sensor": base.format("binary_sensor") + "_anomaly/config",
            "sensor": base.format("sensor") + "_score/config",
            "image": base.format("image") + "_snapshot/config"}


def discovery_filter(settings: BridgeSettings) -> str:
    """The subscription that finds this daemon's retained discovery configs."""
    return f"{settings.discovery_prefix}/+/{node_id(settings.topic_prefix)}/+/config"


def discovery(settings: BridgeSettings, cameras: Iterable[str]) -> list[Publication]:
    """Home Assistant's discovery configs: each camera a device with an anomaly
    binary_sensor, a score sensor and a snapshot image, all tied to availability."""
    prefix, node = settings.topic_prefix, node_id(settings.topic_prefix)
    publications = []
    for camera in cameras:
        unique = f"{node}_{object_id(camera)}"
        common = {
            "availability_topic": f"{prefix}/available",
            "payload_available": "online",
            "payload_not_available": "offline",
            "device": {"identifiers": [unique], "name": f"forecaster {camera}",
                       "manufacturer": "forecaster", "model": "frame forecaster",
                       "sw_version": settings.version},
        }
        configs: dict[str, dict[str, Any]] = {
            "binary_sensor": {"name": "Anomaly", "unique_id": f"{unique}_anomaly",
                              "state_topic": f"{prefix}/{camera}/anomaly",
                              "payload_on": "ON", "payload_off": "OFF",
                              "device_class": settings.device_class},
            "sensor": {"name": "Anomaly score", "unique_id": f"{unique}_score",
                       "state_topic": f"{prefix}/{camera}/score",
                       "state_class": "measurement", "suggested_display_precision": 2},
            "image": {"name": "Snapshot", "unique_id": f"{unique}_snapshot",
                      "image_topic": f"{prefix}/{camera}/snapshot",
                      "content_type": "image/jpeg"},
        }
        for component, topic in discovery_topics(settings, camera).items():
            payload = json.dumps({**configs[component], **common}, separators=(",", ":"))
            publications.append(Publication(topic, payload.encode(), settings.qos, True))
    return publications


def removals(settings: BridgeSettings, cameras: Iterable[str],
             found: Iterable[str]) -> list[Publication]:
    """Empty retained configs (Home Assistant removes the entity) for the discovery topics
    ``found`` on the broker that no camera of ``cameras`` publishes any more."""
    kept = {topic for camera in cameras for topic in discovery_topics(settings, camera).values()}
    return [Publication(topic, b"", settings.qos, True) for topic in sorted(set(found) - kept)]


class EventQueue:
    """Events waiting for the broker: at most ``limit``; the oldest are dropped, counted."""

    def __init__(self, limit: int) -> None:
        self.items: deque[Publication] = deque()
        self.limit = limit
        self.dropped = 0

    def put(self, publication: Publication) -> None:
        if len(self.items) >= self.limit:
            self.items.popleft()
            self.dropped += 1
        self.items.append(publication)

    def take(self) -> list[Publication]:
        items = list(self.items)
        self.items.clear()
        return items

    def __len__(self) -> int:
        return len(self.items)


def _relative(value: str | None) -> str | None:
    """A recording path from an event: relative, no ``..``; else None."""
    if not value or len(value) > 1024 or "\0" in value:
        return None
    path = Path(value)
    return None if path.is_absolute() or ".." in path.parts else path.as_posix()


@dataclass(slots=True)
class Pending:
    """An episode's end that waits for its recording."""

    camera: str
    record: dict[str, Any]
    snapshot: str
    deadline: float


@dataclass(slots=True)
class Bridge:
    """The bridge's state: each camera's anomaly flag, last score time, open episode, and
    the ends that wait for their recordings."""

    settings: BridgeSettings
    cameras: tuple[str, ...]
    #: retained states by topic (the anomaly flags, the latest snapshots)
    retained: dict[str, Publication] = field(default_factory=dict)
    anomaly: dict[str, bool] = field(default_factory=dict)
    last_score: dict[str, float] = field(default_factory=dict)
    open: dict[str, dict[str, Any]] = field(default_factory=dict)
    pending: list[Pending] = field(default_factory=list)
    bad_messages: int = 0

    def handle(self, parts: list[bytes], now: float) -> list[Publication]:
        """The publications one feed message makes (malformed ones are counted)."""
        try:
            _, camera = parse_topic(parts[0])
            if camera not in self.cameras:
                return []
            message = decode(parts)
        except (ProtocolError, ValueError, IndexError):
            self.bad_messages += 1
            return []
        if isinstance(message, Score):
            return self._score(message, now)
        if isinstance(message, Event):
            return self._event(message, now)
        return []

    def _state(self, camera: str, on: bool) -> list[Publication]:
        if self.anomaly.get(camera) == on:
            return []
        self.anomaly[camera] = on
        publication = Publication(f"{self.settings.topic_prefix}/{camera}/anomaly",
                                  b"ON" if on else b"OFF", self.settings.qos, True)
        self.retained[publication.topic] = publication
        return [publication]

    def _score(self, message: Score, now: float) -> list[Publication]:
        camera = message.camera
        publications = self._state(camera, message.anomaly)
        last = self.last_score.get(camera)
        if math.isfinite(message.score) and (
                last is None or now - last >= self.settings.score_interval_s):
            self.last_score[camera] = now
            publications.append(Publication(f"{self.settings.topic_prefix}/{camera}/score",
                                            f"{message.score:.3f}".encode(), 0, False, SCORE))
        return publications

    def _event(self, message: Event, now: float) -> list[Publication]:
        camera = message.camera
        peak = message.peak_score if math.isfinite(message.peak_score) else None
        if message.state == "start":
            record: dict[str, Any] = {"camera": camera, "state": "start", "start": utc_text(message.ts),
                      "start_ts": message.ts, "start_seq": message.seq, "end": None,
                      "end_ts": None, "end_seq": None, "peak": peak, "clip": None,
                      "snapshot": None}
            self.open[camera] = record
            return [*self._state(camera, True), self._event_publication(camera, record)]
        opened = self.open.pop(camera, None) or {
            "camera": camera, "start": None, "start_ts": None, "start_seq": None}
        record = {**opened, "state": "end", "end": utc_text(message.ts), "end_ts": message.ts,
                  "end_seq": message.seq, "peak": peak, "clip": None, "snapshot": None}
        publications = self._state(camera, False)
        snapshot = _relative(message.snapshot)
        if snapshot is not None and self.settings.events_dir is not None:
            self.pending.append(Pending(camera, record, snapshot,
                                        now + self.settings.snapshot_wait_s))
        else:
            publications.append(self._event_publication(camera, record))
        return publications

    def _event_publication(self, camera: str, record: dict[str, Any]) -> Publication:
        payload = json.dumps(record, separators=(",", ":"), allow_nan=False).encode()
        return Publication(f"{self.settings.topic_prefix}/{camera}/event", payload,
                           self.settings.qos, False, EVENT)

    def poll(self, now: float, final: bool = False) -> list[Publication]:
        """The ends whose recording is complete (or whose wait is over, or all when
        ``final``): the snapshot first, then the end event."""
        publications: list[Publication] = []
        waiting = []
        for item in self.pending:
            sidecar = self._sidecar(item.snapshot)
            if sidecar is None and now < item.deadline and not final:
                waiting.append(item)
                continue
            publications += self._finish(item, sidecar)
        self.pending = waiting
        return publications

    def _sidecar(self, snapshot: str) -> dict[str, Any] | None:
        """The sidecar beside ``snapshot`` once it is written (it comes last); else None."""
        assert self.settings.events_dir is not None
        path = Path(self.settings.events_dir) / Path(snapshot).with_suffix(".json")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def _finish(self, item: Pending, sidecar: dict[str, Any] | None) -> list[Publication]:
        publications = []
        record = dict(item.record)
        if sidecar is not None:
            peak = sidecar.get("peak_score")
            if isinstance(peak, (int, float)) and math.isfinite(peak):
                record["peak"] = float(peak)
            folder = Path(self.settings.events_dir or ".")
            for key in ("clip", "snapshot"):
                name = _relative(sidecar.get(key)) if isinstance(sidecar.get(key), str) else None
                if name is not None and (folder / name).is_file() and self.settings.page_url:
                    record[key] = f"{self.settings.page_url}events/{name}"
            jpeg = self._read_snapshot(folder / item.snapshot)
            if jpeg is not None:
                topic = f"{self.settings.topic_prefix}/{item.camera}/snapshot"
                publication = Publication(topic, jpeg, self.settings.qos, True)
                self.retained[topic] = publication
                publications.append(publication)
        publications.append(self._event_publication(item.camera, record))
        return publications

    @staticmethod
    def _read_snapshot(path: Path) -> bytes | None:
        try:
            with path.open("rb") as file:
                data = file.read(MAX_SNAPSHOT_BYTES + 1)
        except OSError:
            return None
        return data if 0 < len(data) <= MAX_SNAPSHOT_BYTES else None
