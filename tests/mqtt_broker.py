"""A real mosquitto for tests (its own config, port and folder), and a real MQTT client
that records what it receives."""

from __future__ import annotations

import getpass
import re
import shutil
import socket
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from forecaster.bench.daemon_process import wait_for

MOSQUITTO = shutil.which("mosquitto") or next(
    (p for p in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto") if Path(p).is_file()), None)
MOSQUITTO_PASSWD = shutil.which("mosquitto_passwd")


def mosquitto_version() -> str:
    """The broker's version, e.g. ``2.0.11`` ("" when unknown)."""
    if MOSQUITTO is None:
        return ""
    result = subprocess.run([MOSQUITTO, "-h"], capture_output=True, text=True, timeout=10,
                            check=False)
    found = re.search(r"mosquitto version (\S+)", result.stdout + result.stderr)
    return found.group(1) if found else ""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Broker:
    """mosquitto on 127.0.0.1:``port`` with its config in ``folder``; ``users`` (name ->
    password) and ``acl`` (the ACL file's text) turn anonymous access off; ``tls`` (``ca``,
    ``cert``, ``key`` files) makes the listener TLS, asking for client certificates."""

    def __init__(self, folder: Path, users: dict[str, str] | None = None,
                 acl: str | None = None, tls: dict[str, Path] | None = None) -> None:
        assert MOSQUITTO is not None
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.log = folder / "mosquitto.log"
        # as root, mosquitto would switch to its own user, who cannot write the log here
        lines = [f"listener {self.port} 127.0.0.1", "persistence false",
                 f"user {getpass.getuser()}", f"log_dest file {self.log}", "log_type all"]
        if tls:  # the listener's: a CA, the broker's certificate and key; clients show theirs
            lines[1:1] = [f"cafile {tls['ca']}", f"certfile {tls['cert']}",
                          f"keyfile {tls['key']}", "require_certificate true"]
        if users:
            passwd = folder / "passwd"
            passwd.write_text("")
            for name, password in users.items():
                subprocess.run([str(MOSQUITTO_PASSWD), "-b", str(passwd), name, password],
                               check=True, capture_output=True, timeout=30)
            lines += ["allow_anonymous false", f"password_file {passwd}"]
        else:
            lines.append("allow_anonymous true")
        if acl is not None:
            (folder / "acl").write_text(acl)
            lines.append(f"acl_file {folder / 'acl'}")
        self.config = folder / "mosquitto.conf"
        self.config.write_text("\n".join(lines) + "\n")
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Broker:
        self.proc = subprocess.Popen([str(MOSQUITTO), "-c", str(self.config)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

        def accepting() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"mosquitto exited: {self.log.read_text()[-2000:]}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return True
            except OSError:
                return False

        wait_for(accepting, 15, f"mosquitto on port {self.port}")
        return self

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def __enter__(self) -> Broker:
        return self.start()

    def __exit__(self, *_: Any) -> None:
        self.kill()


@dataclass(frozen=True, slots=True)
class Received:
    topic: str
    payload: bytes
    retain: bool
    at: float


class Listener:
    """A paho client subscribed to ``topics``; ``messages`` holds what arrived."""

    def __init__(self, port: int, topics: tuple[str, ...] = ("#",), username: str = "",
                 password: str = "") -> None:
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        self.messages: list[Received] = []
        self.granted: list[Any] = []
        self.connected = threading.Event()
        self._lock = threading.Lock()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv311)
        if username:
            self.client.username_pw_set(username, password)
        self.topics = topics

        def on_connect(client: Any, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
            if not reason.is_failure:
                for topic in self.topics:
                    client.subscribe(topic, qos=1)
                self.connected.set()

        def on_subscribe(_c: Any, _u: Any, _mid: Any, reasons: Any, _p: Any) -> None:
            with self._lock:
                self.granted += list(reasons)

        def on_message(_c: Any, _u: Any, message: Any) -> None:
            with self._lock:
                self.messages.append(Received(message.topic, bytes(message.payload),
                                              bool(message.retain), time.monotonic()))

        self.client.on_connect = on_connect
        self.client.on_subscribe = on_subscribe
        self.client.on_message = on_message
        self.client.connect("127.0.0.1", port, keepalive=10)
        self.client.loop_start()

    def on(self, topic: str) -> list[Received]:
        with self._lock:
            return [m for m in self.messages if m.topic == topic]

    def payloads(self, topic: str) -> list[bytes]:
        return [m.payload for m in self.on(topic)]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def __enter__(self) -> Listener:
        return self

    def __exit__(self, *_: Any) -> None:
        self.close()


def make_certificates(folder: Path) -> dict[str, Path]:
    """A CA, a certificate for 127.0.0.1 and a client certificate, signed by it (openssl)."""
    folder.mkdir(parents=True, exist_ok=True)
    key_options = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=folder, check=True, capture_output=True,
                       timeout=60)

    run("req", "-x509", *key_options, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
        "-subj", "/CN=forecaster test CA")
    (folder / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    for name, extra in (("server", ["-extfile", "san.ext"]), ("client", [])):
        run("req", *key_options, "-keyout", f"{name}.key", "-out", f"{name}.csr",
            "-subj", f"/CN={name}")
        run("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-CAcreateserial", "-out", f"{name}.pem", "-days", "2", *extra)
    return {"ca": folder / "ca.pem", "cert": folder / "server.pem", "key": folder / "server.key",
            "client_cert": folder / "client.pem", "client_key": folder / "client.key"}
