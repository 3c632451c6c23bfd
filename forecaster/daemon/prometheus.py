"""Prometheus metrics over HTTP, served by the supervisor.

One process serves them: the supervisor, which outlives every child. It reads the capture
counters from the rings' headers and the worker's from the shared :class:`Health` block at
each scrape (a custom collector), so no multiprocess mode is needed and the counters keep
counting across restarts of the worker. All names start with ``forecaster_``; times are in
seconds.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from typing import Protocol

from prometheus_client import CollectorRegistry
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from forecaster import __version__
from forecaster.ipc.health import (
    INFERENCE_BUCKETS,
    MESSAGE_KINDS,
    CameraField,
    DaemonField,
    Health,
    MqttLink,
)
from forecaster.ipc.ring import FrameRing
from forecaster.metrics_http import MetricsHTTP

log = logging.getLogger("forecaster.metrics")


class MetricsSource(Protocol):
    """What the collector reads (the supervisor provides it)."""

    camera_ids: list[str]
    rings: list[FrameRing]
    health: Health
    restarts: dict[str, int]
    healthy: bool


class DaemonCollector(Collector):
    """Builds every metric from the shared counters at scrape time."""

    def __init__(self, source: MetricsSource) -> None:
        self.source = source

    def collect(self) -> Iterator[Metric]:
        src = self.source
        health = src.health
        frames = CounterMetricFamily(
            "forecaster_frames", "Frames captured from the source.", labels=["camera"]
        )
        processed = CounterMetricFamily(
            "forecaster_frames_processed", "Frames fed to the model.", labels=["camera"]
        )
        dropped = CounterMetricFamily(
            "forecaster_frames_dropped",
            "Frames not processed: worker_behind (skipped to stay current), bad_frame "
            "(unreadable or wrong size), rate_limited (over the camera's fps).",
            labels=["camera", "reason"],
        )
        resets = CounterMetricFamily(
            "forecaster_state_resets",
            "Times a camera's recurrent state was rebuilt (reconnect, gap, restart).",
            labels=["camera"],
        )
        events = CounterMetricFamily(
            "forecaster_anomaly_events", "Anomaly episodes started.", labels=["camera"]
        )
        up = GaugeMetricFamily(
            "forecaster_source_up", "1 while the source delivers frames.", labels=["camera"]
        )
        score = GaugeMetricFamily(
            "forecaster_anomaly_score", "Calibrated score of the last scored frame.",
            labels=["camera"],
        )
        for index, (camera, ring) in enumerate(zip(src.camera_ids, src.rings, strict=True)):
            stats = ring.stats()
            frames.add_metric([camera], stats.frames_captured)
            processed.add_metric([camera], health.get(index, CameraField.PROCESSED))
            dropped.add_metric([camera, "worker_behind"], health.get(index, CameraField.DROPPED))
            dropped.add_metric([camera, "bad_frame"], stats.frames_skipped)
            dropped.add_metric([camera, "rate_limited"], stats.frames_rate_limited)
            resets.add_metric([camera], max(health.get(index, CameraField.PRIMES) - 1, 0))
            events.add_metric([camera], health.get(index, CameraField.ANOMALY_EVENTS))
            up.add_metric([camera], 1.0 if stats.connected and not stats.ended else 0.0)
            last = health.get(index, CameraField.LAST_SCORE)
            score.add_metric([camera], last if math.isfinite(last) else math.nan)
        yield from (frames, processed, dropped, resets, events, up, score)

        buckets, total = health.inference_histogram()
        bounds = [*(repr(b) for b in INFERENCE_BUCKETS), "+Inf"]
        inference = HistogramMetricFamily(
            "forecaster_inference_duration_seconds",
            "Duration of one model call (one or more frames of one camera).",
        )
        inference.add_metric([], buckets=list(zip(bounds, buckets, strict=True)), sum_value=total)
        yield inference

        published = CounterMetricFamily(
            "forecaster_messages_published", "Messages queued on the PUB socket.",
            labels=["kind"],
        )
        for offset, kind in enumerate(MESSAGE_KINDS):
            published.add_metric([kind], health.get_global(DaemonField.MESSAGES + offset))
        yield published
        yield CounterMetricFamily(
            "forecaster_messages_dropped",
            "Messages the PUB socket could not queue.",
            value=health.get_global(DaemonField.PUBLISH_DROPPED),
        )
        restarts = CounterMetricFamily(
            "forecaster_process_restarts",
            "Crashed or stalled processes restarted by the supervisor.", labels=["role"],
        )
        for role, count in sorted(src.restarts.items()):
            restarts.add_metric([role], count)
        yield restarts
        yield GaugeMetricFamily(
            "forecaster_healthy",
            "1 while frames flow through every process (the systemd watchdog rule).",
            value=1.0 if src.healthy else 0.0,
        )
        yield from self._mqtt(health)
        info = GaugeMetricFamily("forecaster_build_info", "Version of forecaster.",
                                 labels=["version"])
        info.add_metric([__version__], 1.0)
        yield info


    @staticmethod
    def _mqtt(health: Health) -> Iterator[Metric]:
        """The MQTT bridge's link and counters, with ``[mqtt]`` on."""
        link = health.mqtt_link()
        if link == MqttLink.OFF:
            return
        state = GaugeMetricFamily(
            "forecaster_mqtt_link",
            "1 for the MQTT link's state: up (connected), down (connecting or the broker "
            "is away) or refused (the broker refused the login).", labels=["state"],
        )
        for each in (MqttLink.UP, MqttLink.DOWN, MqttLink.REFUSED):
            state.add_metric([each.name.lower()], 1.0 if link == each else 0.0)
        yield state
        yield CounterMetricFamily(
            "forecaster_mqtt_messages_published", "Messages handed to the MQTT broker.",
            value=health.get_global(DaemonField.MQTT_PUBLISHED),
        )
        yield CounterMetricFamily(
            "forecaster_mqtt_events_dropped",
            "Events dropped while the MQTT broker was away (the oldest first).",
            value=health.get_global(DaemonField.MQTT_DROPPED),
        )


class MetricsServer:
    """An HTTP server on ``address:port`` answering Prometheus scrapes in a thread."""

    def __init__(self, address: str, port: int, source: MetricsSource) -> None:
        registry = CollectorRegistry(auto_describe=False)
        registry.register(DaemonCollector(source))
        self._http = MetricsHTTP(address, port, registry, "metrics.address, metrics.port")
        self.port = self._http.port
        log.info("serving Prometheus metrics on http://%s:%d/metrics", address, self.port)

    def close(self) -> None:
        self._http.close()
