"""The MQTT bridge against a real mosquitto started here (its own config, port and folder):
a daemon on a synthetic scene, the broker away, killed and restarted, wrong credentials,
an ACL, and the bounded queue. Clients are real paho clients."""

from __future__ import annotations

import itertools
import json
import logging
import multiprocessing as mp
import os
import re
import shutil
import signal
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import zmq

from forecaster.config import parse_config
from forecaster.errors import ConfigError
from forecaster.ipc.channels import Flag
from forecaster.ipc.health import DaemonField, Health, MqttLink
from forecaster.mqtt.process import bridge, mqtt_spec
from forecaster.protocol import Event, Score, encode
from tests.daemon_harness import Daemon, config_text, wait_for
from tests.mqtt_broker import (
    MOSQUITTO,
    MOSQUITTO_PASSWD,
    Broker,
    Listener,
    free_port,
    make_certificates,
    mosquitto_version,
)

pytestmark = pytest.mark.skipif(
    MOSQUITTO is None,
    reason="mosquitto is not installed (Debian: apt-get install mosquitto): the MQTT tests "
           "need a real broker",
)
needs_passwd = pytest.mark.skipif(MOSQUITTO_PASSWD is None,
                                  reason="mosquitto_passwd is not installed")
#: frequent anomalies: with the bundled model, an event starts within the first 100 frames
SCENE = "synthetic:?seed=1&anomaly_rate=0.2&fps=25"
DISCOVERY = ("homeassistant/binary_sensor/forecaster/cam0_anomaly/config",
             "homeassistant/sensor/forecaster/cam0_score/config",
             "homeassistant/image/forecaster/cam0_snapshot/config")


def events(listener: Listener, camera: str = "cam0") -> list[dict[str, Any]]:
    return [json.loads(p) for p in listener.payloads(f"forecaster/{camera}/event")]


def metric(port: int, line: str) -> bool:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
        return line in answer.read().decode()


def publish_retained(port: int, topic: str, payload: bytes) -> None:
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv311)
    client.connect("127.0.0.1", port)
    client.loop_start()
    client.publish(topic, payload, qos=1, retain=True).wait_for_publish(10)
    client.disconnect()
    client.loop_stop()


# -- a daemon on a synthetic scene ---------------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_a_daemon_publishes_discovery_states_and_an_event_with_its_snapshot(
        tmp_path: Path) -> None:
    web_port = free_port()
    with Broker(tmp_path / "broker") as broker:
        # a camera that has left the config: its discovery config is removed
        gone = "homeassistant/binary_sensor/forecaster/gone_anomaly/config"
        publish_retained(broker.port, gone, b'{"name": "Anomaly"}')
        config = config_text(
            f"tcp://127.0.0.1:{free_port()}", [("cam0", SCENE)],
            {"mqtt": {"enabled": True, "port": broker.port, "host": "127.0.0.1"},
             "recording": {"dir": str(tmp_path / "events"), "pre_s": 0.5, "post_s": 0.25},
             "web": {"enabled": True, "port": web_port}})
        with Listener(broker.port, ("forecaster/#", "homeassistant/#")) as live, \
                Daemon(tmp_path, config) as daemon:
            def ended() -> bool:
                if daemon.proc.poll() is not None:
                    raise AssertionError(daemon.log())
                return any(e["state"] == "end" for e in events(live))

            wait_for(ended, 180, "an event's end on forecaster/cam0/event")
            end = next(e for e in events(live) if e["state"] == "end")
            # the links in the event lead to the live page's copies of the recording
            assert end["snapshot"].startswith(f"http://127.0.0.1:{web_port}/events/cam0/")
            with urllib.request.urlopen(end["snapshot"], timeout=10) as answer:
                served = answer.read()
            assert daemon.stop() == 0
        log = daemon.log()
        assert "Traceback" not in log and "refused" not in log
        # one episode: ON, then OFF, then the snapshot, then the end event
        states = live.payloads("forecaster/cam0/anomaly")
        assert b"ON" in states and b"OFF" in states[states.index(b"ON"):], states
        starts = [e for e in events(live) if e["state"] == "start"]
        assert starts and starts[0]["start_seq"] == end["start_seq"] < end["end_seq"]
        assert end["peak"] >= starts[0]["peak"] > 0 and end["clip"].endswith(".mp4")
        snapshots = live.on("forecaster/cam0/snapshot")
        assert snapshots and snapshots[0].payload == served
        assert snapshots[0].at <= live.on("forecaster/cam0/event")[-1].at
        image = cv2.imdecode(np.frombuffer(served, np.uint8), cv2.IMREAD_UNCHANGED)
        assert image is not None and image.shape[0] > 0
        # scores: numbers, at most one a second
        scores = live.on("forecaster/cam0/score")
        assert len(scores) >= 2 and all(np.isfinite(float(s.payload)) for s in scores)
        gaps = [b.at - a.at for a, b in itertools.pairwise(scores)]
        assert min(gaps) > 0.8, gaps
        for topic in DISCOVERY:
            config_json = json.loads(live.payloads(topic)[0])
            assert config_json["availability_topic"] == "forecaster/available"
            assert config_json["device"]["identifiers"] == ["forecaster_cam0"]
        assert json.loads(live.payloads(DISCOVERY[0])[0])["device_class"] == "motion"
        assert json.loads(live.payloads(DISCOVERY[2])[0])["image_topic"] == \
            "forecaster/cam0/snapshot"
        assert live.payloads(gone)[-1] == b""  # removed
        # what a client joining later gets: the retained states
        with Listener(broker.port, ("forecaster/#", "homeassistant/#")) as late:
            wait_for(lambda: late.on("forecaster/cam0/snapshot") and late.on(DISCOVERY[2]),
                     10, "the retained messages")
            time.sleep(0.5)  # retained messages come at once; this lets a stray one show
            retained = {m.topic: m.payload for m in late.messages if m.retain}
        assert retained["forecaster/available"] == b"offline"
        assert retained["forecaster/cam0/anomaly"] == states[-1]
        assert retained["forecaster/cam0/snapshot"] == served
        assert set(DISCOVERY) <= set(retained) and gone not in retained
        assert "forecaster/cam0/score" not in retained
        assert "forecaster/cam0/event" not in retained


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_the_broker_away_at_start_then_killed_and_restarted(tmp_path: Path) -> None:
    """The daemon runs without its broker, says so once, connects when it comes, says
    once that it was lost, and publishes the events after the restart; Prometheus shows
    the link."""
    broker = Broker(tmp_path / "broker")  # not started yet
    metrics_port = free_port()
    config = config_text(
        f"tcp://127.0.0.1:{free_port()}", [("cam0", SCENE)],
        {"mqtt": {"enabled": True, "port": broker.port, "host": "127.0.0.1"},
         "recording": {"enabled": False}, "metrics": {"enabled": True, "port": metrics_port}})
    with Daemon(tmp_path, config) as daemon:
        try:
            daemon.wait_log(r"cannot reach the MQTT broker at 127\.0\.0\.1:\d+: retrying", 60)
            daemon.wait_log(r"worker ready", 120)
            assert metric(metrics_port, 'forecaster_mqtt_link{state="down"} 1.0')
            time.sleep(3.5)  # paho retries after 1 s, 2 s, ...: the log says it once
            broker.start()
            with Listener(broker.port, ("forecaster/#",)) as first:
                daemon.wait_log(r"connected to the MQTT broker", 90)
                wait_for(lambda: first.payloads("forecaster/available") == [b"online"], 10,
                         "online")
                wait_for(lambda: metric(metrics_port, 'forecaster_mqtt_link{state="up"} 1.0'),
                         10, "the link up in the metrics")
            broker.kill()
            daemon.wait_log(r"lost the MQTT broker", 60)
            wait_for(lambda: metric(metrics_port, 'forecaster_mqtt_link{state="down"} 1.0'),
                     10, "the link down in the metrics")
            broker.start()  # the same port
            restarted = time.time()
            with Listener(broker.port, ("forecaster/#",)) as second:
                wait_for(lambda: [e for e in events(second) if e["start_ts"]
                                  and e["start_ts"] > restarted], 120,
                         "an event that started after the restart")
                # the states came again: the broker kept nothing
                assert second.payloads("forecaster/available")[-1] == b"online"
                assert second.payloads("forecaster/cam0/anomaly")
                # the bridge's process killed: the supervisor starts it again
                os.kill(daemon.child_pid("mqtt"), signal.SIGKILL)
                daemon.wait_log(r"mqtt \(pid \d+\) was killed by SIGKILL; restarting it", 30)
                daemon.wait_log(r"mqtt ready again", 60)
                wait_for(lambda: daemon.log().count("connected to the MQTT broker") == 3, 30,
                         "the new bridge connected")
                assert daemon.proc.poll() is None
            assert daemon.stop() == 0
        finally:
            broker.kill()
    log = daemon.log()
    assert log.count("cannot reach the MQTT broker") == 1, log
    assert log.count("lost the MQTT broker") == 1, log
    assert log.count("connected to the MQTT broker") == 3, log
    assert "Traceback" not in log


# -- the bridge alone, fed as the worker feeds it ------------------------------------------


class Feed:
    """The worker's side of the private feed: an XPUB that sees the bridge subscribe."""

    def __init__(self, folder: Path) -> None:
        self.context = zmq.Context()
        self.socket = self.context.socket(zmq.XPUB)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.endpoint = f"ipc://{folder}/feed.sock"
        self.socket.bind(self.endpoint)

    def wait_subscribed(self) -> None:
        wait_for(lambda: self.socket.poll(100) and self.socket.recv(), 10, "the subscription")

    def send(self, message: Event | Score) -> None:
        self.socket.send_multipart(encode(message))

    def close(self) -> None:
        self.socket.close(linger=0)
        self.context.term()


class Running:
    """:func:`bridge` in a thread of this process, until :meth:`stop`."""

    def __init__(self, config: dict[str, Any], feed: Feed) -> None:
        self.health = Health(1)
        self.stop_flag = Flag(mp.get_context("spawn"))
        spec = mqtt_spec(parse_config({"mqtt": {"enabled": True, "host": "127.0.0.1", **config},
                                       "web": {"enabled": False}}), feed.endpoint, None)
        self.error: BaseException | None = None

        def run() -> None:
            try:
                bridge(spec, self.stop_flag, None, self.health)
            except BaseException as error:  # shown by stop()
                self.error = error

        self.thread = threading.Thread(target=run, name="bridge", daemon=True)
        self.thread.start()

    def link(self) -> MqttLink:
        return self.health.mqtt_link()

    def stop(self) -> None:
        self.stop_flag.set()
        self.thread.join(timeout=10)
        assert not self.thread.is_alive()
        assert self.error is None, self.error


@pytest.fixture
def feed(tmp_path: Path) -> Iterator[Feed]:
    feed = Feed(tmp_path)
    yield feed
    feed.close()


def start(seq: int, state: str = "start") -> Event:
    return Event("cam0", seq, time.time(), state, 3.0)  # type: ignore[arg-type]


ACL = """user forecaster
topic readwrite forecaster/#
topic readwrite homeassistant/#

user homeassistant
topic read forecaster/#
topic read homeassistant/#

user guest
topic readwrite public/#
"""
USERS = {"forecaster": "daemon-secret", "homeassistant": "ha-secret", "guest": "guest-secret"}


@needs_passwd
@pytest.mark.timeout(60)
def test_wrong_credentials_give_one_line(tmp_path: Path, feed: Feed,
                                         caplog: pytest.LogCaptureFixture) -> None:
    secret = tmp_path / "password"
    secret.write_text("not-the-password\n")
    with Broker(tmp_path / "broker", USERS, ACL) as broker:
        caplog.set_level(logging.INFO, logger="forecaster.mqtt")
        running = Running({"port": broker.port, "username": "forecaster",
                           "password_file": str(secret)}, feed)
        try:
            wait_for(lambda: running.link() == MqttLink.REFUSED, 20, "the refusal")
            # more attempts, refused each time (the broker logs each one)
            wait_for(lambda: broker.log.read_text().count("not authorised") >= 3, 30,
                     "three refused attempts")
        finally:
            running.stop()
    lines = [r.getMessage() for r in caplog.records if r.name == "forecaster.mqtt"]
    assert len(lines) == 1, lines
    assert re.fullmatch(r"the MQTT broker at 127\.0\.0\.1:\d+ refused the login: Not "
                        r"authorized \(check mqtt\.username, mqtt\.password_file and the "
                        r"broker's ACL\); retrying every 60 s at most", lines[0]), lines[0]
    assert "not-the-password" not in caplog.text


@needs_passwd
@pytest.mark.timeout(60)
def test_the_broker_acl_keeps_the_daemons_topics_from_other_users(
        tmp_path: Path, feed: Feed) -> None:
    secret = tmp_path / "password"
    secret.write_text(USERS["forecaster"] + "\n")
    with Broker(tmp_path / "broker", USERS, ACL) as broker:
        home = Listener(broker.port, ("forecaster/#", "homeassistant/#"), "homeassistant",
                        USERS["homeassistant"])
        guest = Listener(broker.port, ("forecaster/#", "homeassistant/#"), "guest",
                         USERS["guest"])
        running = Running({"port": broker.port, "username": "forecaster",
                           "password_file": str(secret)}, feed)
        try:
            feed.wait_subscribed()
            wait_for(lambda: running.link() == MqttLink.UP, 20, "the link")
            assert guest.connected.wait(10)
            # a forged "offline" from the guest is dropped by the broker
            guest.client.publish("forecaster/available", b"offline", qos=1).wait_for_publish(5)
            feed.send(start(7))
            wait_for(lambda: events(home), 10, "the event at Home Assistant's client")
            time.sleep(1.0)  # what the guest could get would have come by now
        finally:
            running.stop()
            home.close()
            guest.close()
    # online, and at most the stop's offline: not the guest's
    assert home.payloads("forecaster/available") in ([b"online"], [b"online", b"offline"])
    assert events(home)[0]["start_seq"] == 7 and home.on(DISCOVERY[0])
    # the refusal: no message of the daemon reaches the guest
    assert guest.messages == []
    if mosquitto_version().startswith("2.0."):
        # mosquitto 2.0 grants the subscription, and then withholds every message
        assert [code.value for code in guest.granted] == [1, 1]
    else:
        assert guest.granted


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is not installed")
@pytest.mark.timeout(60)
def test_tls_with_a_ca_and_a_client_certificate(tmp_path: Path, feed: Feed) -> None:
    files = make_certificates(tmp_path / "tls")
    with Broker(tmp_path / "broker", tls=files) as broker:
        running = Running({"port": broker.port, "tls": True, "ca_file": str(files["ca"]),
                           "cert_file": str(files["client_cert"]),
                           "key_file": str(files["client_key"])}, feed)
        try:
            feed.wait_subscribed()
            wait_for(lambda: running.link() == MqttLink.UP, 20, "the link over TLS")
            feed.send(start(3))
            wait_for(lambda: running.health.get_global(DaemonField.MQTT_PUBLISHED) >= 6, 10,
                     "online, discovery and the event")
        finally:
            running.stop()
        # a client that trusts another CA never gets as far as the login
        other = make_certificates(tmp_path / "other")
        running = Running({"port": broker.port, "tls": True, "ca_file": str(other["ca"])},
                          feed)
        try:
            time.sleep(2.5)  # two attempts
            assert running.link() == MqttLink.DOWN
            assert running.health.get_global(DaemonField.MQTT_PUBLISHED) == 0
        finally:
            running.stop()


@pytest.mark.timeout(60)
def test_events_while_the_broker_is_away_are_bounded_oldest_dropped(
        tmp_path: Path, feed: Feed) -> None:
    broker = Broker(tmp_path / "broker")
    running = Running({"port": broker.port, "queue_events": 3}, feed)
    try:
        feed.wait_subscribed()
        wait_for(lambda: running.link() == MqttLink.DOWN, 10, "the link down")
        for seq in range(1, 6):
            feed.send(start(seq))
        wait_for(lambda: running.health.get_global(DaemonField.MQTT_DROPPED) == 2, 10,
                 "two events dropped")
        broker.start()
        with Listener(broker.port, ("forecaster/#",)) as live:
            wait_for(lambda: len(events(live)) >= 3, 90, "the queued events")
            time.sleep(0.5)
            assert [e["start_seq"] for e in events(live)] == [3, 4, 5]
            assert live.payloads("forecaster/cam0/anomaly") == [b"ON"]
    finally:
        running.stop()
        broker.kill()
    assert running.health.get_global(DaemonField.MQTT_PUBLISHED) >= 3


def test_mqtt_settings_are_checked_at_load(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config({"mqtt": {"password": "hunter2"}})
    assert "mqtt.password: not accepted" in str(caught.value)
    assert "hunter2" not in str(caught.value)
    for keys, expected in [
        ({"topic_prefix": "a/#"}, "mqtt.topic_prefix: must be topic levels"),
        ({"password_file": str(tmp_path / "absent")}, "password file not found"),
        ({"port": 0}, "mqtt.port"),
        ({"qos": 3}, "mqtt.qos"),
        ({"device_class": "smoke"}, "mqtt.device_class"),
        ({"page_url": "ftp://x"}, "mqtt.page_url: must start with http://"),
        ({"ca_file": str(tmp_path / "absent.pem")}, "mqtt.ca_file: file not found"),
        ({"key_file": __file__}, "mqtt.key_file is set without mqtt.cert_file"),
        ({"enabled": True, "tls": True, "ca_file": __file__}, "the TLS files"),
    ]:
        with pytest.raises(ConfigError, match=re.escape(expected)):
            parse_config({"mqtt": keys})
    empty = tmp_path / "empty"
    empty.write_text("\n")
    with pytest.raises(ConfigError, match="is empty"):
        parse_config({"mqtt": {"password_file": str(empty)}})


def test_the_stall_rule_judges_the_bridge_from_when_it_runs() -> None:
    from forecaster.ipc.health import StallDetector

    health = Health(1)
    detector = StallDetector(["a"], 2.0)
    now = time.monotonic()
    health.beat_capture(0)
    assert not detector.check(health, [-1], False, [False], now=now + 10, mqtt_running=True)
    health.values[DaemonField.MQTT_BEAT] = now + 11
    assert not detector.check(health, [-1], False, [False], now=now + 12.5, mqtt_running=True)
    stalls = detector.check(health, [-1], False, [False], now=now + 13.5, mqtt_running=True)
    assert [(s.role, s.reason) for s in stalls] == [("mqtt", "its loop has not turned for 2 s")]
    assert not detector.check(health, [-1], False, [False], now=now + 20, mqtt_running=False)


def test_the_bridge_alone_gets_the_private_feed(tmp_path: Path) -> None:
    """The supervisor's plan with [mqtt] on and the page off: the bridge's process, and
    the worker's private feed in a folder only this user can enter (the children are not
    spawned here: that needs TensorFlow)."""
    from forecaster.daemon.supervisor import MQTT, WEB, Supervisor

    class Planner(Supervisor):
        planned: list[int]

        def _start_child(self, index: int) -> None:
            self.planned.append(index)

        def _await_ready(self, timeout_s: float) -> None:
            return None

    planner = Planner(parse_config({"web": {"enabled": False}, "recording": {"enabled": False},
                                    "mqtt": {"enabled": True, "port": free_port()}}))
    planner.planned = []
    try:
        planner.start()
        assert MQTT in planner.planned and WEB not in planner.planned
        assert planner._worker_spec is not None and planner._mqtt_spec is not None
        feed = planner._worker_spec.feed_endpoint
        assert feed == planner._mqtt_spec.feed_endpoint
        folder = Path(feed.removeprefix("ipc://")).parent
        assert folder.is_dir() and folder.stat().st_mode & 0o077 == 0
        assert planner.health.mqtt_link() == MqttLink.DOWN  # until the bridge connects
        assert planner._mqtt_spec.bridge.page_url is None  # no page: no links
    finally:
        planner.shutdown(grace_s=0.1)
    assert not folder.exists()
