"""Kill-safe signalling between the daemon's processes.

``multiprocessing`` queues and events hold locks shared between processes: a process
killed while it holds one (SIGKILL, the OOM killer) leaves the queue or event blocked for
every other process, and a restarted process would inherit the damage. The daemon
restarts children, so it signals with primitives that hold no lock:

- :class:`Flag`: one byte of shared memory (stop, go), polled in short sleeps;
- :class:`Inbox` / :class:`Outbox`: a UNIX datagram socket in the abstract namespace.
  A datagram is one atomic ``sendto()``; a full or absent receiver makes a non-blocking
  send fail at once, and a restarted receiver simply binds the same name again.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import multiprocessing
import os
import queue
import select
import signal
import socket
import time
from multiprocessing.context import BaseContext
from typing import Any

from forecaster.logs import setup_child_logging

#: errors of a non-blocking send that mean "nobody listens now" or "receiver is full"
_DROP_ERRNOS = frozenset({errno.EAGAIN, errno.ECONNREFUSED, errno.ENOENT, errno.ENOBUFS})
_POLL_S = 0.02


def channel_address(instance: str, name: str) -> str:
    """Abstract-namespace socket address of one channel of one daemon instance."""
    return f"\0forecaster-{instance}-{name}"


def exit_with_parent(stop: Flag) -> None:
    """Make this child stop when its parent (the supervisor) dies, even by SIGKILL.

    The kernel sends SIGTERM to the child when the parent goes (``PR_SET_PDEATHSIG``; the
    child's SIGTERM handler sets ``stop``); a parent already gone sets it at once.
    """
    with contextlib.suppress(OSError, AttributeError):  # not Linux: no prctl
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signal.SIGTERM), 0, 0, 0)  # 1 = PR_SET_PDEATHSIG
    parent = multiprocessing.parent_process()
    if parent is not None and os.getppid() != parent.pid:
        stop.set()


def set_process_name(name: str) -> None:
    """Name this process as ``top``, ``ps -e`` and ``/proc/PID/comm`` show it (Linux; at most
    15 bytes are kept), e.g. ``fc-worker`` or ``fc-cap:front``."""
    with contextlib.suppress(OSError, AttributeError):  # not Linux: no prctl
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(15, name.encode()[:15] + b"\0", 0, 0, 0)  # 15 = PR_SET_NAME


def start_child(name: str, stop: Flag, log_level: str) -> None:
    """The prologue of every child process: Ctrl-C and SIGHUP are the supervisor's to handle
    (ignored here), SIGTERM sets ``stop``, the child stops when its parent dies, it is named
    ``name`` in ``ps`` and ``top``, and it logs at ``log_level``."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    exit_with_parent(stop)
    set_process_name(name)
    setup_child_logging(log_level)


class Flag:
    """A boolean in shared memory: ``set()``, ``is_set()``, ``wait(timeout)``.

    Create it in the parent and pass it to children as a process argument. Writes and
    reads are single bytes, so no lock is needed and none can be left held.
    """

    def __init__(self, ctx: BaseContext) -> None:
        self._value = ctx.RawValue("b", 0)

    def set(self) -> None:
        self._value.value = 1

    def is_set(self) -> bool:
        return bool(self._value.value)

    def wait(self, timeout: float | None = None) -> bool:
        """Sleep until set or ``timeout`` seconds passed; return whether it is set."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._value.value:
            if deadline is None:
                time.sleep(_POLL_S)
                continue
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            time.sleep(min(left, _POLL_S))
        return True


class Inbox:
    """The receiving end of a channel: a bound datagram socket, used by one process.

    ``get``/``get_nowait`` raise :class:`queue.Empty` like a queue, so a worker can take
    either. At most ``net.unix.max_dgram_qlen`` datagrams wait; senders drop the rest.
    """

    def __init__(self, address: str) -> None:
        self.address = address
        self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            self._socket.bind(address)
        except OSError:
            self._socket.close()
            raise
        self._socket.setblocking(False)

    def get_nowait(self) -> bytes:
        try:
            return self._socket.recv(65536)
        except BlockingIOError:
            raise queue.Empty from None

    def get(self, timeout: float | None = None) -> bytes:
        """The next datagram, waiting at most ``timeout`` seconds (None: forever)."""
        try:
            return self.get_nowait()
        except queue.Empty:
            pass
        readable, _, _ = select.select([self._socket], [], [], timeout)
        if not readable:
            raise queue.Empty
        return self.get_nowait()

    def get_message(self, timeout: float | None = None) -> tuple[str, str, int, str]:
        """The next control message ``(kind, role, exit code, text)`` (see :meth:`Outbox.put`)."""
        kind, role, code, text = json.loads(self.get(timeout))
        return str(kind), str(role), int(code), str(text)

    def close(self) -> None:
        self._socket.close()


class Outbox:
    """The sending end of a channel; picklable (the socket is made in the process using it)."""

    def __init__(self, address: str) -> None:
        self.address = address
        self._socket: socket.socket | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {"address": self.address}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.address = state["address"]
        self._socket = None

    def _sock(self) -> socket.socket:
        if self._socket is None:
            self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        return self._socket

    def send(self, data: bytes, timeout: float = 0.0) -> bool:
        """Send one datagram; False if nobody listens or the receiver stayed full."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                self._sock().sendto(data, socket.MSG_DONTWAIT, self.address)
                return True
            except OSError as error:
                if error.errno not in _DROP_ERRNOS:
                    raise
                if error.errno != errno.EAGAIN or time.monotonic() >= deadline:
                    return False
            time.sleep(0.005)

    def put_nowait(self, item: int) -> None:
        """A wake-up: never blocks; dropped when the receiver is full or absent."""
        self.send(item.to_bytes(4, "little", signed=True))

    def put(self, message: tuple[str, str, int, str], timeout: float = 5.0) -> bool:
        """A control message ``(kind, role, exit code, text)``, waiting up to ``timeout``."""
        return self.send(json.dumps(list(message)).encode("utf-8"), timeout=timeout)

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None
