"""The relay's knowledge of its upstreams: connections, status messages, camera ids;
published as ``relay/<n>`` health messages and served as Prometheus metrics."""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import zmq

from forecaster.metrics_http import MetricsHTTP

log = logging.getLogger("forecaster.relay")


class Upstream(Protocol):
    """What the health needs of an upstream's config: its endpoint."""

    @property
    def endpoint(self) -> str: ...

#: the topic prefix of the relay's own health messages
HEALTH_PREFIX = "relay/"
#: libzmq's reply to STATISTICS: eight unsigned 64-bit counters
STATS_FIELDS = (
    "frontend_frames_in", "frontend_bytes_in", "frontend_frames_out", "frontend_bytes_out",
    "backend_frames_in", "backend_bytes_in", "backend_frames_out", "backend_bytes_out",
)
#: camera ids the relay tracks per upstream (health messages, metrics, duplicate ids);
#: ids beyond these are still relayed, only not tracked
MAX_CAMERAS_PER_UPSTREAM = 256

# ---------------------------------------------------------------------------- health


@dataclass(slots=True)
class UpstreamHealth:
    """What the relay knows of one upstream. ``connected`` comes from the data path's
    socket monitor; ``status_messages`` and ``last_message_ts`` count the daemon's
    ``status/`` messages (the health watcher's own subscription), not the forwarded
    traffic."""

    index: int
    endpoint: str
    connected: bool = False
    connects: int = 0
    disconnects: int = 0
    handshake_failures: int = 0
    last_error: str | None = None
    status_messages: int = 0
    last_message_ts: float | None = None
    cameras: set[str] = field(default_factory=set)
    #: status messages of camera ids beyond MAX_CAMERAS_PER_UPSTREAM came
    cameras_untracked: bool = False

    def header(self, now: float, relay_id: str) -> dict[str, Any]:
        return {
            "v": 1, "relay_id": relay_id, "upstream": self.endpoint, "index": self.index, "ts": now,
            "connected": self.connected, "connects": self.connects,
            "disconnects": self.disconnects, "handshake_failures": self.handshake_failures,
            "last_error": self.last_error, "status_messages": self.status_messages,
            "last_message_ts": self.last_message_ts, "cameras": sorted(self.cameras),
            "cameras_untracked": self.cameras_untracked,
        }


def health_topic(index: int) -> bytes:
    return f"{HEALTH_PREFIX}{index}".encode("ascii")


def _refusal(event: int, value: int) -> str:
    if event == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
        return "the daemon refused the relay's key (add relay.key to its curve_allowed_clients)"
    if event == zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL:
        if value == zmq.PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH:
            return "CURVE on one side only (server_key set for a daemon without CURVE, or not set for one with it)"
        if value == zmq.PROTOCOL_ERROR_ZMTP_CRYPTOGRAPHIC:
            return "CURVE handshake failed (wrong server key for this daemon?)"
        return f"ZMTP protocol error {value:#x}"
    return "handshake failed (CURVE on one side only, or the relay's key refused?)"


class Health:
    """The health of every upstream; updated by the main thread, read by scrapes."""

    def __init__(self, upstreams: Sequence[Upstream]) -> None:
        self.upstreams = [UpstreamHealth(i, u.endpoint) for i, u in enumerate(upstreams)]
        self._by_endpoint = {u.endpoint: u for u in self.upstreams}
        self.lock = threading.Lock()
        self.stats: dict[str, int] = dict.fromkeys(STATS_FIELDS, 0)
        self._reported: set[tuple[str, int, int]] = set()

    def on_monitor_event(self, event: int, value: int, endpoint: str) -> None:
        upstream = self._by_endpoint.get(endpoint)
        if upstream is None:
            return  # the inproc health socket
        with self.lock:
            if event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                upstream.connected = True
                upstream.connects += 1
                upstream.last_error = None
                log.info("upstream %d connected: %s", upstream.index, endpoint)
            elif event == zmq.EVENT_DISCONNECTED and upstream.connected:
                upstream.connected = False
                upstream.disconnects += 1
                log.warning("upstream %d disconnected: %s (reconnecting)", upstream.index,
                            endpoint)
            elif event & (zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL | zmq.EVENT_HANDSHAKE_FAILED_AUTH
                          | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL):
                upstream.connected = False
                upstream.handshake_failures += 1
                reason = _refusal(event, value)
                if reason != upstream.last_error:
                    log.error("upstream %d (%s): %s", upstream.index, endpoint, reason)
                upstream.last_error = reason

    def on_status(self, index: int, camera: str, now: float) -> None:
        upstream = self.upstreams[index]
        with self.lock:
            upstream.status_messages += 1
            upstream.last_message_ts = now
            if camera in upstream.cameras:
                return
            if len(upstream.cameras) >= MAX_CAMERAS_PER_UPSTREAM:
                if not upstream.cameras_untracked:
                    upstream.cameras_untracked = True
                    log.warning(
                        "upstream %d (%s) sends status messages of more than %d camera ids: "
                        "tracking the first %d in the health messages and metrics; the "
                        "messages of all are relayed", upstream.index, upstream.endpoint,
                        MAX_CAMERAS_PER_UPSTREAM, MAX_CAMERAS_PER_UPSTREAM)
                return
            upstream.cameras.add(camera)
        for other in self.upstreams:
            key = (camera, min(index, other.index), max(index, other.index))
            if other.index != index and camera in other.cameras and key not in self._reported:
                self._reported.add(key)
                log.error(
                    "camera %s is published by two upstreams, %s and %s: camera ids must be "
                    "unique across the daemons of one relay (their messages are mixed under "
                    "one topic)", camera, other.endpoint, upstream.endpoint,
                )

    def duplicate_cameras(self) -> list[str]:
        seen: dict[str, int] = {}
        for upstream in self.upstreams:
            for camera in upstream.cameras:
                seen[camera] = seen.get(camera, 0) + 1
        return sorted(c for c, n in seen.items() if n > 1)


# ---------------------------------------------------------------------------- metrics


def serve_metrics(address: str, port: int, health: Health) -> Any:
    from prometheus_client import CollectorRegistry
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
    from prometheus_client.registry import Collector

    class RelayCollector(Collector):
        def collect(self) -> Iterator[Metric]:
            labels = ["upstream"]
            up = GaugeMetricFamily("forecaster_relay_upstream_up",
                                   "1 while the relay's connection to the daemon is up.",
                                   labels=labels)
            connects = CounterMetricFamily("forecaster_relay_upstream_connects",
                                           "Connections to the daemon made (handshakes "
                                           "completed).", labels=labels)
            disconnects = CounterMetricFamily("forecaster_relay_upstream_disconnects",
                                              "Connections to the daemon lost.", labels=labels)
            status = CounterMetricFamily("forecaster_relay_upstream_status_messages",
                                         "status/ messages received from the daemon.",
                                         labels=labels)
            last = GaugeMetricFamily("forecaster_relay_upstream_last_message_timestamp_seconds",
                                     "UNIX time of the last status/ message from the daemon "
                                     "(NaN before the first).", labels=labels)
            cameras = GaugeMetricFamily("forecaster_relay_upstream_cameras",
                                        "Camera ids seen in the daemon's status/ messages.",
                                        labels=labels)
            with health.lock:
                for u in health.upstreams:
                    up.add_metric([u.endpoint], 1.0 if u.connected else 0.0)
                    connects.add_metric([u.endpoint], u.connects)
                    disconnects.add_metric([u.endpoint], u.disconnects)
                    status.add_metric([u.endpoint], u.status_messages)
                    ts = u.last_message_ts
                    last.add_metric([u.endpoint], math.nan if ts is None else ts)
                    cameras.add_metric([u.endpoint], len(u.cameras))
                stats = dict(health.stats)
                duplicates = len(health.duplicate_cameras())
            yield from (up, connects, disconnects, status, last, cameras)
            frames = CounterMetricFamily(
                "forecaster_relay_frames",
                "ZeroMQ message parts through the proxy (libzmq's STATISTICS): received "
                "from the upstreams, sent to the subscribers (once per message, however "
                "many subscribers).", labels=["direction"])
            frames.add_metric(["received"], stats["frontend_frames_in"])
            frames.add_metric(["sent"], stats["backend_frames_out"])
            yield frames
            yield GaugeMetricFamily("forecaster_relay_duplicate_cameras",
                                    "Camera ids published by more than one upstream.",
                                    value=duplicates)

    registry = CollectorRegistry(auto_describe=False)
    registry.register(RelayCollector())
    server = MetricsHTTP(address, port, registry, "metrics_address, metrics_port")
    log.info("serving Prometheus metrics on http://%s:%d/metrics", address, server.port)
    return server


