"""A ``forecaster run`` in a subprocess, for the benchmarks and the tests that act on it.

The daemon's stderr goes to a file (a pipe nobody reads could fill up and block it), so a
caller can wait for a log line; every wait polls with a deadline.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

from forecaster.errors import ChildFailed

T = TypeVar("T")


def wait_for(
    check: Callable[[], T | None], timeout: float, what: str, interval: float = 0.05
) -> T:
    """Call ``check`` until it returns something truthy; TimeoutError after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return repr(value)


def config_text(
    endpoint: str,
    cameras: Iterable[tuple[str, str] | tuple[str, str, dict[str, Any]]],
    sections: dict[str, dict[str, Any]] | None = None,
    log_level: str = "info",
) -> str:
    """A config file: ``[publish] endpoint``, the other ``sections`` (name -> keys), cameras
    as ``(id, source)`` or ``(id, source, {other keys})``."""
    # no live page unless asked for: daemons started side by side would share its port
    merged: dict[str, dict[str, Any]] = {"publish": {}, "web": {"enabled": False}}
    for name, values in (sections or {}).items():
        merged.setdefault(name, {}).update(values)
    merged["publish"]["endpoint"] = endpoint
    lines = [f"log_level = {_toml(log_level)}"]
    for name, values in merged.items():
        lines.append(f"[{name}]")
        lines += [f"{key} = {_toml(value)}" for key, value in values.items()]
    for camera, source, *more in cameras:
        lines += ["[[cameras]]", f"id = {_toml(camera)}", f"source = {_toml(source)}"]
        for extra in more:
            lines += [f"{key} = {_toml(value)}" for key, value in extra.items()]
    return "\n".join(lines) + "\n"


def daemon_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """This process's environment without systemd's variables, unbuffered, plus ``extra``."""
    env = dict(os.environ)
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)
    for key in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):
        env.pop(key, None)
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


class Daemon:
    """``forecaster run --config`` in a subprocess, run in ``folder`` (its config and log
    are written there); stop it with :meth:`stop` or the context."""

    def __init__(
        self, folder: Path, config: str, env: dict[str, str] | None = None,
        args: Iterable[str] = (),
    ) -> None:
        self.config_path = folder / "daemon.toml"
        self.config_path.write_text(config)
        self.log_path = folder / "daemon.log"
        self._log_file = self.log_path.open("w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "forecaster", "run", "--config", str(self.config_path),
             *args],
            cwd=folder,
            env=daemon_env(env),
            stdout=subprocess.DEVNULL,
            stderr=self._log_file,
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_log(self, pattern: str, timeout: float = 60.0, after: int = 0) -> re.Match[str]:
        """The first match of ``pattern`` in the log past offset ``after``; ChildFailed if
        the daemon exits without logging it."""
        regex = re.compile(pattern)

        def check() -> re.Match[str] | None:
            if self.proc.poll() is not None:
                text = self.log()
                match = regex.search(text, after)
                if match:
                    return match
                raise ChildFailed(
                    f"daemon exited ({self.proc.returncode}) before logging {pattern!r}:\n{text}"
                )
            return regex.search(self.log(), after)

        return wait_for(check, timeout, f"log line {pattern!r}")

    def child_pid(self, role: str) -> int:
        """Pid of the current ``worker`` or ``capture:<camera>`` process, from the log."""
        found = re.findall(rf"{re.escape(role)} ready(?: again)? \(pid (\d+)\)", self.log())
        if not found:
            raise ChildFailed(f"no {role} pid in the log:\n{self.log()}")
        return int(found[-1])

    def stop(self, timeout: float = 15.0) -> int:
        """SIGTERM, then its exit code after at most ``timeout`` seconds."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout)
        finally:
            self.close()

    def close(self) -> None:
        """Stop it if it still runs (SIGTERM, then kill) and close its log."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()  # its children follow it (they die with their parent)
                self.proc.wait(timeout=10)
        self._log_file.close()

    def __enter__(self) -> Daemon:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
