"""A running ``forecaster run`` for tests that act on it while it runs: the package's
:mod:`forecaster.bench.daemon_process`, with the tests' config defaults (status every 0.5 s)."""

from __future__ import annotations

import time
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from forecaster.bench import daemon_process
from forecaster.bench.daemon_process import Daemon, daemon_env, wait_for
from forecaster.protocol import Event

if TYPE_CHECKING:
    from forecaster.client import Subscriber

__all__ = ["Daemon", "collect_events", "config_text", "daemon_env", "rss_bytes", "wait_for"]


def config_text(
    endpoint: str,
    cameras: Iterable[tuple[str, str] | tuple[str, str, dict[str, Any]]],
    sections: dict[str, dict[str, Any]] | None = None,
) -> str:
    """A config file: ``[publish] endpoint`` (status every 0.5 s), extra sections, cameras
    as ``(id, source)`` or ``(id, source, {other keys})``."""
    merged: dict[str, dict[str, Any]] = {"publish": {"status_interval_s": 0.5, "sndhwm": 10000}}
    for name, values in (sections or {}).items():
        merged.setdefault(name, {}).update(values)
    return daemon_process.config_text(endpoint, cameras, merged)


def rss_bytes(pid: int) -> int:
    """Resident set size of a process (Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for pid {pid}")


def collect_events(sub: Subscriber, daemon: Daemon, timeout_s: float) -> list[Event]:
    """The Event messages ``sub`` receives until ``daemon`` has exited and the socket is
    quiet, or for at most ``timeout_s`` seconds."""
    events: list[Event] = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        msg = sub.recv(timeout=0.5)
        if isinstance(msg, Event):
            events.append(msg)
        elif msg is None and daemon.proc.poll() is not None:
            break
    return events
