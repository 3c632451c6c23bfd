"""The MQTT bridge's process (``fc-mqtt``), started and restarted by the supervisor.

It reads the worker's private feed (:mod:`forecaster.ipc.feed`) as the live page does, so
a slow, hung or absent broker never slows the worker: the feed drops what this process
does not take in time. paho-mqtt's network thread connects and reconnects (backoff from
1 s to 60 s); this process's loop publishes only while the link is up and keeps events
in a bounded queue while it is down. Each change of the link is logged once.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any

from forecaster import __version__
from forecaster.config import Config
from forecaster.config.mqtt import read_password
from forecaster.errors import ConfigError, ForecasterError
from forecaster.ipc.channels import Flag, Outbox, start_child
from forecaster.ipc.feed import FEED_SNDHWM
from forecaster.ipc.health import DaemonField, Health, MqttLink
from forecaster.mqtt.bridge import (
    EVENT,
    Bridge,
    BridgeSettings,
    EventQueue,
    Publication,
    availability,
    discovery,
    discovery_filter,
    node_id,
    removals,
)

log = logging.getLogger("forecaster.mqtt")
#: seconds between reconnect attempts: from the first to the last, doubling
BACKOFF_MIN_S, BACKOFF_MAX_S = 1, 60
#: the MQTT keepalive (seconds): a hung broker is noticed within 1.5 times this
KEEPALIVE_S = 15
#: seconds to gather the retained discovery configs after a connect
SWEEP_S = 2.0
#: feed messages handled per turn of the loop, at most
BATCH = 500


@dataclass(frozen=True, slots=True)
class MqttSpec:
    """Everything the bridge process needs; picklable for the spawn start method."""

    cameras: tuple[str, ...]
    feed_endpoint: str
    host: str
    port: int
    bridge: BridgeSettings
    queue_events: int = 100
    client_id: str = ""
    tls: bool = False
    ca_file: str = ""
    cert_file: str = ""
    key_file: str = ""
    username: str = ""
    password_file: str = ""
    log_level: str = "info"


def mqtt_spec(config: Config, feed_endpoint: str, events_dir: str | None) -> MqttSpec:
    """The bridge's spec from the config; ``events_dir``: the recordings' folder, if any."""
    mqtt, web = config.mqtt, config.web
    page_url = None
    if web.enabled:
        host = f"[{web.address}]" if ":" in web.address else web.address
        page_url = mqtt.page_url or f"http://{host}:{web.port}/"
        page_url = page_url if page_url.endswith("/") else page_url + "/"
    settings = BridgeSettings(
        topic_prefix=mqtt.topic_prefix, discovery_prefix=mqtt.discovery_prefix, qos=mqtt.qos,
        device_class=mqtt.device_class, score_interval_s=mqtt.score_interval_s,
        page_url=page_url, events_dir=events_dir,
        snapshot_wait_s=config.recording.post_s + 60.0, version=__version__,
    )
    client_id = mqtt.client_id or f"forecaster-{socket.gethostname()}-{node_id(mqtt.topic_prefix)}"
    return MqttSpec(
        cameras=tuple(camera.id for camera in config.cameras), feed_endpoint=feed_endpoint,
        host=mqtt.host, port=mqtt.port, bridge=settings, queue_events=mqtt.queue_events,
        client_id=client_id.encode()[:128].decode(errors="ignore"), tls=mqtt.tls,
        ca_file=mqtt.ca_file, cert_file=mqtt.cert_file, key_file=mqtt.key_file,
        username=mqtt.username, password_file=mqtt.password_file, log_level=config.log_level,
    )


class Link:
    """The MQTT client, its network thread and what it saw: the link state, the connects
    counted (a new one asks for discovery and states again), and retained discovery
    configs found during a sweep."""

    def __init__(self, spec: MqttSpec) -> None:
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        self.spec = spec
        self.where = f"{spec.host}:{spec.port}"
        self.state = MqttLink.DOWN
        self.connects = 0
        self.found: set[str] = set()
        self.closing = False
        self._logged: MqttLink | None = None
        self._lock = threading.Lock()
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=spec.client_id,
                             protocol=mqtt.MQTTv311, clean_session=True)
        if spec.username:
            try:
                password = read_password(spec.password_file) if spec.password_file else None
            except ValueError as error:
                raise ConfigError(f"mqtt.password_file: {error}") from None
            client.username_pw_set(spec.username, password)
        if spec.tls:
            try:
                client.tls_set(ca_certs=spec.ca_file or None, certfile=spec.cert_file or None,
                               keyfile=spec.key_file or None)
            except (OSError, ValueError) as error:
                raise ConfigError(f"mqtt TLS files: {error}") from None
        client.will_set(availability(spec.bridge, False).topic, b"offline", spec.bridge.qos,
                        retain=True)
        client.reconnect_delay_set(BACKOFF_MIN_S, BACKOFF_MAX_S)
        # paho's own queue, for a broker that hangs while the link still looks up; room
        # for the burst at each connect (discovery, states) and the queued events
        client.max_queued_messages_set(spec.queue_events + 5 * len(spec.cameras) + 10)
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        self.client = client

    def start(self) -> None:
        self.client.connect_async(self.spec.host, self.spec.port, keepalive=KEEPALIVE_S)
        self.client.loop_start()

    def _say(self, state: MqttLink, level: int, text: str) -> None:
        """Set the state; log ``text`` when the state differs from the last one logged."""
        with self._lock:
            self.state = state
            if self._logged == state:
                return
            self._logged = state
        log.log(level, "%s", text)

    # -- paho's callbacks (its network thread) --------------------------------------------

    def _on_connect(self, _client: Any, _userdata: Any, _flags: Any, reason: Any,
                    _properties: Any) -> None:
        if reason.is_failure:
            self._say(MqttLink.REFUSED, logging.ERROR,
                      f"the MQTT broker at {self.where} refused the login: {reason} (check "
                      f"mqtt.username, mqtt.password_file and the broker's ACL); retrying "
                      f"every {BACKOFF_MAX_S} s at most")
            return
        with self._lock:
            self.connects += 1
        self._say(MqttLink.UP, logging.INFO, f"connected to the MQTT broker at {self.where}")

    def _on_connect_fail(self, _client: Any, _userdata: Any) -> None:
        if self.state != MqttLink.REFUSED:
            tls = " over TLS (check mqtt.ca_file if its certificate fails)" if self.spec.tls else ""
            self._say(MqttLink.DOWN, logging.WARNING,
                      f"cannot reach the MQTT broker at {self.where}{tls}: retrying with backoff "
                      f"({BACKOFF_MIN_S} s to {BACKOFF_MAX_S} s); events wait in a queue "
                      f"of {self.spec.queue_events} (mqtt.queue_events)")

    def _on_disconnect(self, _client: Any, _userdata: Any, _flags: Any, reason: Any,
                       _properties: Any) -> None:
        if self.state == MqttLink.UP and not self.closing:
            self._say(MqttLink.DOWN, logging.WARNING,
                      f"lost the MQTT broker at {self.where} ({reason}): retrying with "
                      f"backoff; events wait in a queue of {self.spec.queue_events}")

    def _on_message(self, _client: Any, _userdata: Any, message: Any) -> None:
        if message.retain and message.payload:
            with self._lock:
                self.found.add(message.topic)

    # -- the bridge's loop ----------------------------------------------------------------

    @property
    def up(self) -> bool:
        return self.state == MqttLink.UP and self.client.is_connected()

    def send(self, publication: Publication) -> bool:
        """Hand one publication to paho; False when its queue is full (a hung broker)."""
        from paho.mqtt.enums import MQTTErrorCode

        info = self.client.publish(publication.topic, publication.payload, publication.qos,
                                   publication.retain)
        return info.rc != MQTTErrorCode.MQTT_ERR_QUEUE_SIZE

    def close(self, offline: Publication) -> None:
        """Say ``offline`` (waiting up to a second), disconnect, stop the network thread."""
        self.closing = True
        if self.up:
            info = self.client.publish(offline.topic, offline.payload, offline.qos, True)
            deadline = time.monotonic() + 1.0
            while not info.is_published() and time.monotonic() < deadline and self.up:
                time.sleep(0.01)
        self.client.disconnect()
        # the network thread may be inside a connect attempt: wait a second at most
        stopper = threading.Thread(target=self.client.loop_stop, daemon=True)
        stopper.start()
        stopper.join(timeout=1.0)


class Runner:
    """The bridge's loop: feed messages in, publications out, connects answered."""

    def __init__(self, spec: MqttSpec, health: Health | None) -> None:
        self.spec = spec
        self.health = health
        self.bridge = Bridge(spec.bridge, spec.cameras)
        self.queue = EventQueue(spec.queue_events)
        self.link = Link(spec)
        self.published = 0
        self.refused = 0  # publications paho's queue refused
        self._connects = 0
        self._dropped_said = 0
        self._synced = (0, 0)  # (published, dropped) added to the health block so far
        self._sweep_until: float | None = None

    def deliver(self, publications: list[Publication]) -> None:
        for publication in publications:
            if self.link.up:
                if self.link.send(publication):
                    self.published += 1
                elif publication.kind == EVENT:
                    self.refused += 1
            elif publication.kind == EVENT:
                self.queue.put(publication)
            # states are sent again at the next connect; scores are dropped

    def on_connect(self, now: float) -> None:
        """After each connect: online, discovery, the states, the queued events, and a
        sweep for discovery configs of cameras gone from the config."""
        settings = self.spec.bridge
        queued = self.queue.take()
        if queued:
            dropped = self.queue.dropped - self._dropped_said
            self._dropped_said = self.queue.dropped
            log.info("sending %d event(s) queued while the MQTT broker was away%s", len(queued),
                     f" ({dropped} older one(s) dropped: mqtt.queue_events)" if dropped else "")
        self.deliver([availability(settings, True), *discovery(settings, self.spec.cameras),
                      *self.bridge.retained.values(), *queued])
        with self.link._lock:
            self.link.found.clear()
        self.link.client.subscribe(discovery_filter(settings), qos=0)
        self._sweep_until = now + SWEEP_S

    def turn(self, sub: Any, now: float) -> None:
        import zmq

        publications: list[Publication] = []
        for _ in range(BATCH):
            try:
                parts = sub.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            publications += self.bridge.handle(parts, now)
        publications += self.bridge.poll(now)
        if self.link.up and self.link.connects != self._connects:
            self._connects = self.link.connects
            self.on_connect(now)
        self.deliver(publications)
        if self._sweep_until is not None and now >= self._sweep_until:
            self._sweep_until = None
            with self.link._lock:
                found = set(self.link.found)
            gone = removals(self.spec.bridge, self.spec.cameras, found)
            if gone:
                log.info("removing %d discovery config(s) of cameras no longer configured",
                         len(gone))
            self.deliver(gone)
            self.link.client.unsubscribe(discovery_filter(self.spec.bridge))
        if self.health is not None:  # counters go on across restarts of this process
            values = self.health.values
            values[DaemonField.MQTT_LINK] = int(self.link.state)
            dropped = self.queue.dropped + self.refused
            values[DaemonField.MQTT_PUBLISHED] += self.published - self._synced[0]
            values[DaemonField.MQTT_DROPPED] += dropped - self._synced[1]
            self._synced = (self.published, dropped)


def bridge(spec: MqttSpec, stop: Flag, ready: Any = None, health: Health | None = None) -> None:
    """Run the bridge until ``stop`` is set; ``ready()`` is called once it reads the feed
    (the broker may still be away)."""
    import zmq

    runner = Runner(spec, health)
    context = zmq.Context()
    sub = context.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.RCVHWM, FEED_SNDHWM)
    for kind in (b"score/", b"event/"):
        sub.setsockopt(zmq.SUBSCRIBE, kind)
    sub.connect(spec.feed_endpoint)
    runner.link.start()
    try:
        if ready is not None:
            ready()
        while not stop.is_set():
            if health is not None:
                health.beat_mqtt()
            sub.poll(100)
            runner.turn(sub, time.monotonic())
        runner.deliver(runner.bridge.poll(time.monotonic(), final=True))
    finally:
        runner.link.close(availability(spec.bridge, False))
        sub.close(linger=0)
        context.term()
        if health is not None:
            health.values[DaemonField.MQTT_LINK] = int(MqttLink.DOWN)


def mqtt_main(spec: MqttSpec, control: Outbox, stop: Flag, health: Health | None = None) -> None:
    """Entry point of the bridge's process (spawned, and restarted, by the supervisor)."""
    start_child("fc-mqtt", stop, spec.log_level)
    if health is not None:
        health.beat_mqtt()
    try:
        bridge(spec, stop, lambda: control.put(("ready", "mqtt", 0, "")), health)
    except ForecasterError as error:
        control.put(("error", "mqtt", error.exit_code, str(error)))
