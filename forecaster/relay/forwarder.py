"""``forecaster relay``: one feed for many daemons, by libzmq's XSUB/XPUB proxy.

The relay connects an XSUB socket to the PUB endpoint of every daemon (its upstreams) and
binds an XPUB socket for its own subscribers; ``zmq.proxy_steerable`` forwards messages
down and subscriptions up in libzmq's own thread, so a subscriber to ``score/`` makes the
daemons send scores only, never forecast frames. Topics pass unchanged: camera ids must be
unique across the daemons of one relay.

Beside the proxy, the main thread keeps the health of each upstream: a socket monitor on
the XSUB socket says when each connection comes and goes, a SUB socket per upstream counts
that daemon's ``status/`` messages and learns its camera ids (a camera id seen from two
upstreams is logged as an error). The health is published as ``relay/<n>`` messages
through the proxy itself (an inproc PUB socket is one more upstream of the XSUB socket),
and served as Prometheus metrics when asked (:mod:`forecaster.relay.health`).

A relay must not receive its own feed: an upstream that is its own bind is refused, and
its own ``relay/<n>`` message coming back through a watcher (a loop through other relays)
stops it with exit code 2.
"""

from __future__ import annotations

import contextlib
import json
import logging
import signal
import struct
import sys
import threading
import time
import uuid
from pathlib import Path
from types import FrameType
from typing import Annotated, Any, Literal

import zmq
from pydantic import Field, ValidationError, field_validator, model_validator

from forecaster.config import (
    INT32_MAX,
    Float,
    Section,
    _format_error,
    check_ip_address,
    read_toml,
)
from forecaster.endpoints import check_bind_endpoint, is_loopback_host, parse_endpoint, reaches
from forecaster.errors import ConfigError
from forecaster.ipc.publisher import claim_ipc_path, release_ipc_path
from forecaster.logs import LimitedLog
from forecaster.protocol import ProtocolError, decode, loads_bounded
from forecaster.relay.health import HEALTH_PREFIX, STATS_FIELDS, Health, health_topic, serve_metrics

if sys.version_info >= (3, 11):
    pass
else:  # pragma: no cover - exercised only on 3.10
    pass

log = logging.getLogger("forecaster.relay")

DEFAULT_BIND = "tcp://127.0.0.1:5560"
#: the largest relay health message read back (one upstream of MAX_CAMERAS_PER_UPSTREAM ids)
MAX_HEALTH_BYTES = 1024 * 1024
_CLOSING_ERRNOS = frozenset({zmq.ETERM, zmq.ENOTSOCK})


# ---------------------------------------------------------------------------- config


def _check_key_file(value: str, loader: str) -> str:
    if value:
        from forecaster import keys

        getattr(keys, loader)(value)  # ValueError naming the file when unusable
    return value


class UpstreamConfig(Section):
    """One daemon: its PUB endpoint and, for CURVE, its public key file."""

    #: the daemon's publish.endpoint, as this machine reaches it (tcp://edge1:5556)
    endpoint: str
    #: the daemon's public key file (its server.key); "" = no CURVE to this daemon
    server_key: str = ""

    @field_validator("endpoint")
    @classmethod
    def _check_endpoint(cls, value: str) -> str:
        endpoint = parse_endpoint(value)
        if endpoint.transport == "tcp" and not endpoint.port:
            raise ValueError("an upstream endpoint needs the daemon's port, 1 to 65535")
        return value

    @field_validator("server_key")
    @classmethod
    def _check_server_key(cls, value: str) -> str:
        return _check_key_file(value, "load_public_key")

    @property
    def curve(self) -> bool:
        return bool(self.server_key)


class RelayConfig(Section):
    """The ``[relay]`` section; the command line fills the same fields."""

    log_level: Literal["debug", "info", "warning", "error"] = "info"
    #: the XPUB endpoint the relay's subscribers connect to
    bind: str = DEFAULT_BIND
    upstreams: list[UpstreamConfig] = Field(min_length=1)
    #: the relay's own key pair (``forecaster keys DIR --name relay``): its public key goes
    #: into each CURVE daemon's curve_allowed_clients, and to its own subscribers
    curve_secret_key: str = ""
    #: folder of the public keys of the subscribers allowed to connect; "" = no CURVE on
    #: the bind side
    curve_allowed_clients: str = ""
    #: accept unencrypted traffic on a non-loopback bind or upstream (a trusted network only)
    allow_insecure: bool = False
    #: messages queued per subscriber (XPUB) and from the upstreams (XSUB) before dropping
    sndhwm: Annotated[int, Field(ge=1, le=INT32_MAX)] = 1000
    rcvhwm: Annotated[int, Field(ge=1, le=INT32_MAX)] = 1000
    #: seconds between relay/<n> health messages
    health_interval_s: Annotated[Float, Field(gt=0, le=3600)] = 5.0
    #: serve Prometheus metrics on this port; None (not set) = no metrics
    metrics_port: Annotated[int, Field(ge=1, le=65535)] | None = None
    metrics_address: str = "127.0.0.1"
    #: accept a non-loopback metrics_address (no authentication: a trusted network only)
    metrics_allow_insecure: bool = False

    @field_validator("bind")
    @classmethod
    def _check_bind(cls, value: str) -> str:
        return check_bind_endpoint(value, "bind")

    @field_validator("curve_secret_key")
    @classmethod
    def _check_secret_key(cls, value: str) -> str:
        return _check_key_file(value, "load_secret_key")

    @field_validator("curve_allowed_clients")
    @classmethod
    def _check_clients(cls, value: str) -> str:
        if value and not Path(value).is_dir():
            raise ValueError(f"folder of allowed client public keys not found: {value}")
        return value

    @field_validator("metrics_address")
    @classmethod
    def _check_metrics_address(cls, value: str) -> str:
        return check_ip_address("metrics_address", value)

    @model_validator(mode="after")
    def _check_security(self) -> RelayConfig:
        endpoints = [u.endpoint for u in self.upstreams]
        repeated = sorted({e for e in endpoints if endpoints.count(e) > 1})
        if repeated:
            raise ValueError(f"upstreams listed twice: {', '.join(repeated)}")
        own = [e for e in endpoints if reaches(e, self.bind)]
        if own:
            raise ValueError(f"upstream {own[0]} is the relay's own bind {self.bind}: its "
                             f"messages would circle for ever; list the daemons' endpoints")
        if not self.curve_secret_key:
            if self.curve_allowed_clients:
                raise ValueError("curve_allowed_clients needs curve_secret_key, the relay's "
                                 "own key pair (make it with `forecaster keys`)")
            with_key = [u.endpoint for u in self.upstreams if u.curve]
            if with_key:
                raise ValueError(f"a server key for {with_key[0]} needs curve_secret_key, "
                                 f"the relay's own key pair (make it with `forecaster keys`)")
        if not self.allow_insecure:
            if not self.curve_allowed_clients and not parse_endpoint(self.bind).local:
                raise ValueError(
                    f"refusing to relay unencrypted on {self.bind}, which is not a loopback "
                    f"address or an ipc socket file: set curve_secret_key and "
                    f"curve_allowed_clients, bind to 127.0.0.1, or set allow_insecure = true "
                    f"on a trusted network"
                )
            for upstream in self.upstreams:
                if not upstream.curve and not parse_endpoint(upstream.endpoint).local:
                    raise ValueError(
                        f"refusing to receive unencrypted from {upstream.endpoint}, which is "
                        f"not a loopback address or an ipc socket file: give its server key "
                        f"(and curve_secret_key), or set allow_insecure = true on a trusted "
                        f"network"
                    )
        if (self.metrics_port is not None and not self.metrics_allow_insecure
                and not is_loopback_host(self.metrics_address)):
            raise ValueError(
                f"metrics_address = {self.metrics_address!r} is not a loopback address, and "
                f"the metrics have no authentication: use 127.0.0.1 or ::1, or set "
                f"metrics_allow_insecure = true on a trusted network"
            )
        return self


class _RelayFile(Section):
    relay: RelayConfig


def parse_relay_config(data: dict[str, Any], origin: str) -> RelayConfig:
    """Validate ``{"relay": {...}}``; ConfigError with one ``origin: key.path: ...`` per problem."""
    try:
        return _RelayFile.model_validate(data).relay
    except ValidationError as error:
        raise ConfigError(_format_error(error, origin)) from None


def load_relay_config(path: str | Path) -> dict[str, Any]:
    """The parsed TOML of a relay config file (validated later, with the command line)."""
    return read_toml(path)


# ---------------------------------------------------------------------------- relay


class _Stop:
    """SIGTERM and SIGINT set this flag; the main loop checks it between polls."""

    def __init__(self) -> None:
        self.signal: int | None = None

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        self.signal = signum


def _curve_client(sock: zmq.Socket, upstream: UpstreamConfig,
                  pair: tuple[bytes, bytes] | None) -> None:
    """Set CURVE (or NULL) on ``sock`` for its next connect; options apply per connect."""
    if upstream.curve and pair is not None:
        from forecaster.keys import load_public_key

        sock.curve_publickey, sock.curve_secretkey = pair
        sock.curve_serverkey = load_public_key(upstream.server_key)
    else:
        sock.setsockopt(zmq.CURVE_SERVER, 0)  # back to the NULL mechanism


def _ipv6(sock: zmq.Socket, endpoint: str) -> None:
    if parse_endpoint(endpoint).ipv6:
        sock.setsockopt(zmq.IPV6, 1)


class Relay:
    """The sockets of one relay; :meth:`run` forwards until :meth:`request_stop`."""

    def __init__(self, config: RelayConfig, context: zmq.Context | None = None) -> None:
        from forecaster.keys import load_secret_key, warn_if_readable_by_others

        self.config = config
        self.ctx = context if context is not None else zmq.Context()
        self.health = Health(config.upstreams)
        self._sockets: list[zmq.Socket] = []
        self._auth: Any = None
        self._metrics: Any = None
        #: the bound socket file and the fd of its lock (an ipc bind with a file)
        self._ipc: tuple[Path, int] | None = None
        #: names this relay in its health messages, to notice them coming back (a loop)
        self.id = uuid.uuid4().hex
        self._malformed = LimitedLog(log)
        pair: tuple[bytes, bytes] | None = None
        if config.curve_secret_key:
            pair = load_secret_key(config.curve_secret_key)
            warn_if_readable_by_others(config.curve_secret_key)
        try:
            self._open(pair)
        except BaseException:
            self.close()
            raise

    def _socket(self, kind: int) -> zmq.Socket:
        sock = self.ctx.socket(kind)
        sock.setsockopt(zmq.LINGER, 0)
        self._sockets.append(sock)
        return sock

    def _open(self, pair: tuple[bytes, bytes] | None) -> None:
        config = self.config
        tag = self.id[:12]
        # downstream: XPUB, bound first so that a taken port fails before anything connects
        self.backend = self._socket(zmq.XPUB)
        self.backend.setsockopt(zmq.SNDHWM, config.sndhwm)
        if config.curve_allowed_clients:
            from forecaster.ipc.publisher import CurveServer, _start_authenticator

            assert pair is not None  # the config requires the key pair with the folder
            curve = CurveServer(pair[0], pair[1], config.curve_allowed_clients)
            self._auth = _start_authenticator(self.ctx, curve)
            self.backend.curve_publickey, self.backend.curve_secretkey = pair
            self.backend.curve_server = True
        _ipv6(self.backend, config.bind)
        bind = parse_endpoint(config.bind)
        if bind.transport == "ipc" and not bind.abstract:  # as the daemon's publisher
            path = Path(bind.address)
            self._ipc = (path, claim_ipc_path(config.bind, path, "relay",
                                              "give each relay its own bind"))
        try:
            self.backend.bind(config.bind)
        except zmq.ZMQError as error:
            raise ConfigError(f"cannot bind relay to {config.bind}: {error.strerror}") from None
        # upstream: XSUB connected to every daemon, and to the relay's own health socket
        self.frontend = self._socket(zmq.XSUB)
        self.frontend.setsockopt(zmq.RCVHWM, config.rcvhwm)
        self.monitor = self.frontend.get_monitor_socket(
            zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_DISCONNECTED
            | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL | zmq.EVENT_HANDSHAKE_FAILED_AUTH
            | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
        )
        self._sockets.append(self.monitor)
        self.health_pub = self._socket(zmq.PUB)
        self.health_pub.bind(f"inproc://forecaster-relay-health-{tag}")
        self.frontend.connect(f"inproc://forecaster-relay-health-{tag}")
        # the watchers: status/ of each upstream, for health and camera ids, and relay/
        # (this relay's own health coming back is a loop)
        self.watchers: list[zmq.Socket] = []
        for upstream in config.upstreams:
            _ipv6(self.frontend, upstream.endpoint)
            _curve_client(self.frontend, upstream, pair)
            self.frontend.connect(upstream.endpoint)
            watcher = self._socket(zmq.SUB)
            _ipv6(watcher, upstream.endpoint)
            _curve_client(watcher, upstream, pair)
            watcher.setsockopt(zmq.SUBSCRIBE, b"status/")
            watcher.setsockopt(zmq.SUBSCRIBE, HEALTH_PREFIX.encode("ascii"))
            watcher.connect(upstream.endpoint)
            self.watchers.append(watcher)
        # the proxy's control socket, and the main thread's end of it
        self.control = self._socket(zmq.PAIR)
        self.control.bind(f"inproc://forecaster-relay-control-{tag}")
        self.steer = self._socket(zmq.PAIR)
        self.steer.connect(f"inproc://forecaster-relay-control-{tag}")
        if config.metrics_port is not None:
            self._metrics = serve_metrics(config.metrics_address, config.metrics_port,
                                           self.health)
        raw = self.backend.getsockopt(zmq.LAST_ENDPOINT)
        self.last_endpoint = raw.decode() if isinstance(raw, bytes) else str(raw)

    def _proxy(self, failure: list[BaseException]) -> None:
        try:
            zmq.proxy_steerable(self.frontend, self.backend, None, self.control)
        except zmq.ZMQError as error:
            if error.errno not in _CLOSING_ERRNOS:
                failure.append(error)
        except BaseException as error:  # reported by the main thread
            failure.append(error)

    def _statistics(self) -> None:
        """Ask the proxy for its counters (it answers between messages)."""
        try:
            self.steer.send(b"STATISTICS", zmq.NOBLOCK)
        except zmq.Again:
            return
        if not self.steer.poll(1000):
            return
        parts = self.steer.recv_multipart()
        if len(parts) == len(STATS_FIELDS):
            values = [struct.unpack("=Q", p)[0] if len(p) == 8 else 0 for p in parts]
            with self.health.lock:
                self.health.stats = dict(zip(STATS_FIELDS, values, strict=True))

    def _publish_health(self) -> None:
        now = time.time()
        with self.health.lock:
            messages = [(health_topic(u.index), json.dumps(u.header(now, self.id)).encode())
                        for u in self.health.upstreams]
        for topic, header in messages:
            with contextlib.suppress(zmq.Again):  # nobody can take it now; the next follows
                self.health_pub.send_multipart([topic, header], zmq.NOBLOCK)

    def run(self, stop: _Stop) -> int:
        """Forward until ``stop`` is set; 0 on a clean stop, 1 if the proxy failed."""
        from zmq.utils.monitor import parse_monitor_message

        failure: list[BaseException] = []
        thread = threading.Thread(target=self._proxy, args=(failure,), name="relay-proxy",
                                  daemon=True)
        thread.start()
        log.info("relaying %d upstream(s) to %s%s", len(self.config.upstreams),
                 self.last_endpoint, " (CURVE)" if self.config.curve_allowed_clients else "")
        poller = zmq.Poller()
        poller.register(self.monitor, zmq.POLLIN)
        for watcher in self.watchers:
            poller.register(watcher, zmq.POLLIN)
        next_health = time.monotonic()
        looped = False
        while stop.signal is None and thread.is_alive() and not looped:
            now = time.monotonic()
            if now >= next_health:
                self._statistics()
                self._publish_health()
                next_health = now + self.config.health_interval_s
            timeout = max(0.0, min(0.2, next_health - time.monotonic()))
            for sock, _ in poller.poll(round(timeout * 1000)):
                if sock is self.monitor:
                    event = parse_monitor_message(self.monitor.recv_multipart())
                    self.health.on_monitor_event(int(event["event"]), int(event["value"]),
                                                 bytes(event["endpoint"]).decode())
                    continue
                index = self.watchers.index(sock)
                looped = self._watched(index, sock.recv_multipart())
        if looped:
            pass  # said by _watched
        elif stop.signal is not None:
            log.info("received %s: stopping", signal.Signals(stop.signal).name)
        elif not failure:
            failure.append(RuntimeError("it returned without being asked to"))
        with contextlib.suppress(zmq.Again):
            self.steer.send(b"TERMINATE", zmq.NOBLOCK)
        thread.join(timeout=5)
        if looped:
            return 2
        if failure:
            log.error("the proxy stopped: %s", failure[0])
            return 1
        return 0

    def _watched(self, index: int, parts: list[bytes]) -> bool:
        """Take a message of upstream ``index``'s watcher; True if it is this relay's own
        health message come back (a loop: said in a log line)."""
        if parts[0].startswith(HEALTH_PREFIX.encode("ascii")):
            try:
                header = loads_bounded(parts[1], "relay health header",
                                       max_bytes=MAX_HEALTH_BYTES) if len(parts) == 2 else None
            except ProtocolError as error:
                self._malformed("upstream %d (%s) sent a malformed relay health message: %s",
                                index, self.config.upstreams[index].endpoint, error)
                return False
            if not isinstance(header, dict) or header.get("relay_id") != self.id:
                return False  # the health of a relay upstream of this one
            log.error(
                "relay loop: this relay's own health message came back from upstream %d "
                "(%s), so its messages would circle for ever: an upstream relays this "
                "relay's feed (directly or through other relays); stopping", index,
                self.config.upstreams[index].endpoint)
            return True
        try:
            camera = decode(parts).camera
        except ProtocolError as error:
            self._malformed("upstream %d (%s) sent a malformed status message: %s", index,
                            self.config.upstreams[index].endpoint, error)
            return False
        self.health.on_status(index, camera, time.time())
        return False

    def close(self) -> None:
        if self._metrics is not None:
            self._metrics.close()
            self._metrics = None
        if self._sockets and hasattr(self, "frontend"):
            with contextlib.suppress(zmq.ZMQError):
                self.frontend.disable_monitor()
        for sock in reversed(self._sockets):
            sock.close(linger=0)
        self._sockets.clear()
        if self._auth is not None:
            self._auth.stop()
            self._auth = None
        if self._ipc is not None:  # the socket file it bound, removed as the publisher does
            (path, lock), self._ipc = self._ipc, None
            release_ipc_path(path, lock, unlink=True)
        self.ctx.term()


def _number(text: str) -> int | float | str:
    """A number from the command line; anything else stays text, for the config's check
    to name it with its key."""
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def build_config(args: Any) -> RelayConfig:
    """The relay's config from ``--config FILE`` and the command line (which wins)."""
    data: dict[str, Any] = {}
    origin = "command line"
    if args.config is not None:
        data = load_relay_config(args.config)
        origin = str(args.config)
    elif not args.upstream:
        raise ConfigError("relay needs at least one --upstream ENDPOINT (a daemon's "
                          "publish.endpoint), or --config FILE with [[relay.upstreams]]")
    overrides: dict[str, Any] = {}
    keys: list[str] = args.server_key or []
    if args.upstream:
        if keys and len(keys) not in (1, len(args.upstream)):
            raise ConfigError(f"--server-key: give one for every --upstream, in the same "
                              f"order, or one for all; got {len(keys)} for "
                              f"{len(args.upstream)} upstreams")
        keys = keys * len(args.upstream) if len(keys) == 1 else keys
        overrides["upstreams"] = [
            {"endpoint": endpoint, **({"server_key": keys[i]} if keys else {})}
            for i, endpoint in enumerate(args.upstream)
        ]
    elif keys:
        raise ConfigError("--server-key goes with --upstream (in a config file: "
                          "server_key in [[relay.upstreams]])")
    for option, key in (("bind", "bind"), ("curve_secret_key", "curve_secret_key"),
                        ("curve_allowed_clients", "curve_allowed_clients"),
                        ("metrics_address", "metrics_address"), ("log_level", "log_level")):
        if getattr(args, option) is not None:
            overrides[key] = getattr(args, option)
    for option, key in (("metrics_port", "metrics_port"),
                        ("health_interval", "health_interval_s")):
        if getattr(args, option) is not None:
            overrides[key] = _number(getattr(args, option))
    if args.allow_insecure:
        overrides["allow_insecure"] = True
    if overrides:
        section = data.get("relay", {})
        if isinstance(section, dict):
            data = {**data, "relay": {**section, **overrides}}
            if args.config is not None:
                origin = f"{origin} with the command line"
    return parse_relay_config(data, origin)


def relay_command(args: Any) -> int:
    """``forecaster relay``: run until SIGTERM or SIGINT (exit 0)."""
    from forecaster.logs import setup_logging

    config = build_config(args)
    setup_logging(config.log_level)
    stop = _Stop()
    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        relay = Relay(config)
        try:
            return relay.run(stop)
        finally:
            relay.close()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
