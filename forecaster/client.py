"""A subscriber for the forecaster's published messages (wire protocol v1)."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import zmq

from forecaster.endpoints import parse_endpoint
from forecaster.errors import ConfigError
from forecaster.logs import LimitedLog
from forecaster.protocol import (
    KINDS,
    Message,
    ProtocolError,
    decode,
    validate_camera,
    validate_kind,
)

log = logging.getLogger("forecaster.client")


def subscriptions(
    cameras: Sequence[str] | None = None, kinds: Sequence[str] | None = None
) -> list[bytes]:
    """Return the topic prefixes to subscribe to for ``cameras`` x ``kinds`` (None = all)."""
    if isinstance(cameras, str) or isinstance(kinds, str):
        raise ValueError("cameras and kinds must be sequences of strings, not a single string")
    if cameras is not None and len(cameras) == 0:
        raise ValueError("cameras must not be empty (use None for all cameras)")
    if kinds is not None and len(kinds) == 0:
        raise ValueError("kinds must not be empty (use None for all kinds)")
    for kind in kinds or ():
        validate_kind(kind)
    for camera in cameras or ():
        validate_camera(camera)
    if cameras is None and kinds is None:
        return [b""]
    if cameras is None:
        return [f"{kind}/".encode("ascii") for kind in dict.fromkeys(kinds or ())]
    return [
        f"{kind}/{camera}".encode("ascii")
        for kind in dict.fromkeys(kinds or KINDS)
        for camera in dict.fromkeys(cameras)
    ]



@dataclass(frozen=True, slots=True)
class CurveClient:
    """CURVE for a subscriber: the publisher's public key and this client's key pair.

    The publisher accepts the client only if the client's public key file is in its
    ``publish.curve_allowed_clients`` folder.
    """

    server_public_key: bytes
    public_key: bytes
    secret_key: bytes

    @classmethod
    def from_files(cls, server_key: str | Path, client_secret_key: str | Path) -> CurveClient:
        """Read the publisher's ``.key`` file and this client's ``.key_secret`` file."""
        from forecaster.keys import load_public_key, load_secret_key

        try:
            server = load_public_key(server_key)
            public, secret = load_secret_key(client_secret_key)
        except ValueError as error:
            raise ConfigError(str(error)) from None
        return cls(server, public, secret)


class Subscriber:
    """A ``zmq.SUB`` socket connected to ``endpoint`` that yields decoded messages.

    ZeroMQ filters by topic prefix, so ``score/cam0`` would also match ``score/cam01``;
    messages of cameras not asked for are dropped here after decoding. A malformed
    message raises :class:`ProtocolError` from :meth:`recv`, or, with
    ``skip_invalid=True``, is counted in ``invalid`` and skipped (a warning says why, at
    most once per 10 seconds). ``curve`` connects to a
    publisher with CURVE on (``CurveClient.from_files(server.key, client.key_secret)``).
    """

    def __init__(
        self,
        endpoint: str,
        *,
        cameras: Sequence[str] | None = None,
        kinds: Sequence[str] | None = None,
        context: zmq.Context | None = None,
        rcvhwm: int = 1000,
        skip_invalid: bool = False,
        curve: CurveClient | None = None,
    ) -> None:
        if rcvhwm < 0:
            raise ValueError(f"rcvhwm must be >= 0, got {rcvhwm}")
        try:
            parsed = parse_endpoint(endpoint)
        except ValueError as exc:
            raise ConfigError(f"cannot connect subscriber to {endpoint}: {exc}") from None
        if parsed.transport == "tcp" and not parsed.port:
            raise ConfigError(f"cannot connect subscriber to {endpoint}: it needs the "
                              f"publisher's port, 1 to 65535 (0 or * name no port to "
                              f"connect to)")
        self.endpoint = endpoint
        self.topics = subscriptions(cameras, kinds)
        self._cameras = frozenset(cameras) if cameras is not None else None
        self.skip_invalid = skip_invalid
        self.received = 0
        self.invalid = 0
        self._log_invalid = LimitedLog(log)
        self._closed = False
        ctx = context if context is not None else zmq.Context.instance()
        self._socket: zmq.Socket = ctx.socket(zmq.SUB)
        try:
            self._socket.setsockopt(zmq.LINGER, 0)
            self._socket.setsockopt(zmq.RCVHWM, rcvhwm)
            if curve is not None:
                self._socket.curve_serverkey = curve.server_public_key
                self._socket.curve_publickey = curve.public_key
                self._socket.curve_secretkey = curve.secret_key
            for prefix in self.topics:
                self._socket.setsockopt(zmq.SUBSCRIBE, prefix)
            if parsed.ipv6:
                self._socket.setsockopt(zmq.IPV6, 1)
            self._socket.connect(endpoint)
        except zmq.ZMQError as exc:
            self._socket.close(linger=0)
            self._closed = True
            raise ConfigError(f"cannot connect subscriber to {endpoint}: {exc.strerror}") from exc

    def recv(self, timeout: float | None = None) -> Message | None:
        """Return the next message, or None after ``timeout`` seconds (None = wait forever)."""
        if self._closed:
            raise RuntimeError(f"subscriber of {self.endpoint} is closed")
        deadline = None if timeout is None else time.monotonic() + max(timeout, 0.0)
        while True:
            if deadline is None:
                wait_ms = -1
            else:
                wait_ms = max(0, round((deadline - time.monotonic()) * 1000))
            if not self._socket.poll(wait_ms, zmq.POLLIN):
                if deadline is not None and time.monotonic() >= deadline:
                    return None
                continue
            parts = self._socket.recv_multipart(zmq.NOBLOCK)
            if parts[0].startswith(b"relay/"):
                continue  # a relay's own health messages (subscribed to with ""), not v1
            try:
                msg = decode(parts)
            except ProtocolError as error:
                self.invalid += 1
                if self.skip_invalid:
                    self._log_invalid("skipped a malformed message from %s: %s",
                                      self.endpoint, error)
                    continue
                raise
            if self._cameras is not None and msg.camera not in self._cameras:
                continue
            self.received += 1
            return msg

    def __iter__(self) -> Iterator[Message]:
        while True:
            msg = self.recv(None)
            if msg is not None:
                yield msg

    def close(self) -> None:
        """Close the socket (idempotent)."""
        if self._closed:
            return
        self._closed = True
        try:
            self._socket.close(linger=0)
        except zmq.ZMQError as exc:
            if exc.errno not in (zmq.ETERM, zmq.ENOTSOCK):
                raise

    def __enter__(self) -> Subscriber:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
