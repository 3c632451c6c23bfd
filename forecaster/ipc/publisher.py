"""The ZeroMQ PUB socket that publishes protocol messages; it never blocks its caller."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import math
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

import zmq

from forecaster.endpoints import ipc_path_problem, parse_endpoint
from forecaster.errors import ConfigError
from forecaster.protocol import Message, encode

if TYPE_CHECKING:
    from forecaster.config import PublishConfig

log = logging.getLogger("forecaster.publisher")

#: zmq errors that only mean "the socket or context is already closing"
_CLOSING_ERRNOS = frozenset({zmq.ETERM, zmq.ENOTSOCK, errno.EBADF})

#: socket monitor events of a subscriber refused during the handshake
_REFUSAL_EVENTS = (
    zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
    | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
    | zmq.EVENT_HANDSHAKE_FAILED_AUTH
)
#: at most one refusal line per this many seconds (a refused client retries ~10 times a second)
REFUSAL_LOG_INTERVAL_S = 1.0


def describe_refusal(event: int, value: int) -> str:
    """Why the handshake of a subscriber failed, from a socket monitor event."""
    if event == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
        return f"its public key is not in the allowed clients (ZAP status {value})"
    if event == zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL:
        if value == zmq.PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH:
            return "it does not use CURVE"
        if value == zmq.PROTOCOL_ERROR_ZMTP_CRYPTOGRAPHIC:
            return "its CURVE handshake failed (wrong server public key?)"
        return f"ZMTP protocol error {value:#x}"
    # the peer hung up first: seen when a subscriber without CURVE notices the mismatch
    return f"handshake failed ({os.strerror(value)}; a subscriber without CURVE?)"


def claim_ipc_path(endpoint: str, path: Path, who: str = "publisher",
                   advice: str = "give each daemon its own publish.endpoint") -> int:
    """Make ``path``'s folder and claim the socket file; return the fd of its lock.

    libzmq binds an ``ipc://`` path by unlinking whatever is there. Anything but a socket
    file is refused, before anything is made. The lock file ``PATH.lock`` beside the
    socket, held while bound, refuses a second publisher of this program; a socket file
    that accepts a connection refuses any other program. ``who`` and ``advice`` word the
    errors (ConfigError).
    """
    problem = ipc_path_problem(str(path))
    if problem is not None:
        raise ConfigError(f"cannot bind {who} to {endpoint}: {problem}")
    parent = path.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(
            f"cannot bind {who} to {endpoint}: cannot create folder {parent}: {exc.strerror or exc}"
        ) from exc
    lock = path.with_name(path.name + ".lock")
    try:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise ConfigError(
            f"cannot bind {who} to {endpoint}: cannot open lock file {lock}: {exc.strerror}"
        ) from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            probe.connect(str(path))
    except BlockingIOError:
        pass  # the lock is held: another publisher is bound there
    except OSError:
        # no socket file, or nobody listening on it: a stale file (checked again under the
        # lock: something else may have come meanwhile)
        problem = ipc_path_problem(str(path))
        if problem is None:
            return fd
        os.close(fd)
        raise ConfigError(f"cannot bind {who} to {endpoint}: {problem}") from None
    os.close(fd)
    raise ConfigError(
        f"cannot bind {who} to {endpoint}: another process is publishing on it; {advice}"
    )


def release_ipc_path(path: Path, lock: int, *, unlink: bool) -> None:
    """Remove the socket file bound at ``path`` (``unlink``) and release its lock."""
    if unlink:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
    os.close(lock)


@dataclass(frozen=True, slots=True)
class CurveServer:
    """CURVE for the PUB socket: its key pair and the folder of allowed client public keys."""

    public_key: bytes
    secret_key: bytes
    allowed_clients: str

    @classmethod
    def from_files(cls, secret_key_file: str, allowed_clients: str) -> CurveServer:
        """Load the publisher's ``.key_secret`` file; ConfigError naming it if unusable."""
        from forecaster.keys import load_secret_key

        try:
            public, secret = load_secret_key(secret_key_file)
        except ValueError as error:
            raise ConfigError(f"publish.curve_secret_key: {error}") from None
        if not Path(allowed_clients).is_dir():
            raise ConfigError(
                f"publish.curve_allowed_clients: folder not found: {allowed_clients}"
            )
        return cls(public, secret, allowed_clients)


def _start_authenticator(ctx: zmq.Context, curve: CurveServer) -> Any:
    """A ZAP handler on ``ctx`` that admits the clients whose public key is in the folder."""
    from zmq.auth.thread import ThreadAuthenticator

    auth = ThreadAuthenticator(ctx, log=logging.getLogger("forecaster.publisher.auth"))
    auth.start()
    auth.configure_curve(domain="*", location=curve.allowed_clients)
    allowed = sorted(Path(curve.allowed_clients).glob("*.key"))
    if not allowed:
        log.warning("no client public key (*.key) in %s: no subscriber can connect",
                    curve.allowed_clients)
    else:
        log.info("CURVE on: %d client key(s) allowed from %s", len(allowed),
                 curve.allowed_clients)
    return auth


class Publisher:
    """A bound ``zmq.PUB`` socket. Create, use and close it in one thread.

    ``send`` never blocks: a message that cannot be queued is dropped and counted in
    ``dropped`` (a PUB socket also drops silently per subscriber whose queue of ``sndhwm``
    messages is full, so one slow subscriber never slows the publisher or the others).
    With CURVE, :meth:`log_refusals` logs the subscribers refused at the handshake.
    """

    def __init__(
        self,
        endpoint: str,
        *,
        sndhwm: int = 100,
        linger_ms: int = 500,
        context: zmq.Context | None = None,
        curve: CurveServer | None = None,
    ) -> None:
        if sndhwm < 0:
            raise ValueError(f"sndhwm must be >= 0, got {sndhwm}")
        if linger_ms < -1:
            raise ValueError(f"linger_ms must be >= -1 (-1 = wait forever), got {linger_ms}")
        self.endpoint = endpoint
        self.sent = 0
        self.dropped = 0
        #: subscribers refused at the handshake (CURVE only)
        self.refused = 0
        self._refusals_unlogged = 0
        self._refusal_logged_at = -math.inf
        self._monitor: zmq.Socket | None = None
        self._linger_ms = linger_ms
        self._closed = False
        try:
            parsed = parse_endpoint(endpoint)
        except ValueError as exc:
            raise ConfigError(f"cannot bind publisher to {endpoint}: {exc}") from None
        #: the socket file and the fd of its lock (an ipc endpoint with a file)
        self._ipc: tuple[Path, int] | None = None
        if parsed.transport == "ipc" and not parsed.abstract:
            path = Path(parsed.address)
            self._ipc = (path, claim_ipc_path(endpoint, path))
        ctx = context if context is not None else zmq.Context.instance()
        self._auth: Any = _start_authenticator(ctx, curve) if curve is not None else None
        self._socket: zmq.Socket = ctx.socket(zmq.PUB)
        try:
            self._socket.setsockopt(zmq.SNDHWM, sndhwm)
            self._socket.setsockopt(zmq.LINGER, linger_ms)
            if parsed.ipv6:
                self._socket.setsockopt(zmq.IPV6, 1)
            if curve is not None:
                self._socket.curve_secretkey = curve.secret_key
                self._socket.curve_publickey = curve.public_key
                self._socket.curve_server = True
            self._socket.bind(endpoint)
        except zmq.ZMQError as exc:
            self._socket.close(linger=0)
            self._closed = True
            self._stop_authenticator()
            self._release_ipc(unlink=False)
            raise ConfigError(f"cannot bind publisher to {endpoint}: {exc.strerror}") from exc
        raw = self._socket.getsockopt(zmq.LAST_ENDPOINT)
        self._last_endpoint = raw.decode() if isinstance(raw, bytes) else str(raw)
        if curve is not None:
            self._monitor = self._socket.get_monitor_socket(_REFUSAL_EVENTS)
        log.info("publishing on %s", self._last_endpoint)

    @property
    def last_endpoint(self) -> str:
        """The endpoint actually bound (``tcp://127.0.0.1:*`` resolved to its port)."""
        return self._last_endpoint

    @property
    def closed(self) -> bool:
        return self._closed

    def send(self, msg: Message) -> bool:
        """Encode and queue ``msg`` without blocking; return False if it was dropped."""
        return self.send_parts(encode(msg))

    def send_parts(self, parts: list[bytes]) -> bool:
        """Queue already encoded frames without blocking; return False if dropped."""
        if self._closed:
            raise RuntimeError(f"publisher on {self.endpoint} is closed")
        try:
            self._socket.send_multipart(parts, flags=zmq.NOBLOCK, copy=True)
        except zmq.Again:
            self.dropped += 1
            return False
        self.sent += 1
        return True

    def log_refusals(self) -> int:
        """Log the subscribers refused since the last call (debug, at most one line per
        ``REFUSAL_LOG_INTERVAL_S``); never blocks. Returns how many were refused."""
        if self._monitor is None or self._closed:
            return 0
        from zmq.utils.monitor import recv_monitor_message

        count = 0
        while self._monitor.poll(0):
            event = recv_monitor_message(self._monitor)
            count += 1
            self._refusals_unlogged += 1
            now = time.monotonic()
            if now - self._refusal_logged_at < REFUSAL_LOG_INTERVAL_S:
                continue
            more = self._refusals_unlogged - 1
            log.debug(
                "refused a subscriber on %s: %s%s", self._last_endpoint,
                describe_refusal(int(event["event"]), int(event["value"])),
                f" ({more} more refusal(s) since the last line)" if more else "",
            )
            self._refusals_unlogged = 0
            self._refusal_logged_at = now
        self.refused += count
        return count

    def close(self) -> None:
        """Close the socket (idempotent); unsent messages wait at most ``linger_ms``."""
        if self._closed:
            return
        self._closed = True
        try:
            if self._monitor is not None:
                self._socket.disable_monitor()
                self._monitor.close(linger=0)
            self._socket.close(linger=self._linger_ms)
        except zmq.ZMQError as exc:
            if exc.errno not in _CLOSING_ERRNOS:
                raise
        finally:
            self._stop_authenticator()
            self._release_ipc(unlink=True)

    def _release_ipc(self, *, unlink: bool) -> None:
        """Remove the socket file this publisher bound (``unlink``) and release its lock."""
        if self._ipc is not None:
            (path, lock), self._ipc = self._ipc, None
            release_ipc_path(path, lock, unlink=unlink)

    def _stop_authenticator(self) -> None:
        if self._auth is not None:
            auth, self._auth = self._auth, None
            auth.stop()

    def __enter__(self) -> Publisher:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else self._last_endpoint
        return f"Publisher({state}, sent={self.sent}, dropped={self.dropped})"


def publisher_from_config(publish: PublishConfig, *, sndhwm: int | None = None,
                          linger_ms: int | None = None) -> Publisher:
    """The publisher of a ``[publish]`` section, CURVE included: what ``run`` and
    ``replay --publish`` bind. ``sndhwm`` and ``linger_ms`` override the section's."""
    curve = (
        CurveServer.from_files(publish.curve_secret_key, publish.curve_allowed_clients)
        if publish.curve
        else None
    )
    return Publisher(
        publish.endpoint,
        sndhwm=publish.sndhwm if sndhwm is None else sndhwm,
        linger_ms=publish.linger_ms if linger_ms is None else linger_ms,
        curve=curve,
    )
