"""A systemd notification client (``sd_notify``) on the standard library alone.

Under ``Type=notify`` systemd passes ``$NOTIFY_SOCKET`` (a path, or ``@name`` for the
abstract namespace) and, with ``WatchdogSec=``, ``$WATCHDOG_USEC`` (and ``$WATCHDOG_PID``).
Each notification is one datagram of ``KEY=value`` lines. Outside systemd every call is a
no-op, so the daemon runs the same in a terminal.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import MutableMapping

log = logging.getLogger("forecaster.notify")

_ENV_KEYS = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")


class SystemdNotifier:
    """Send ``READY=1``, ``STATUS=...``, ``WATCHDOG=1``, ``STOPPING=1`` to systemd.

    ``env`` defaults to ``os.environ``; the notification variables are removed from it
    (as ``sd_notify(unset_environment=1)`` does) so that child processes, which systemd
    would not accept notifications from anyway, do not inherit them.
    """

    def __init__(self, env: MutableMapping[str, str] | None = None) -> None:
        env = os.environ if env is None else env
        address = env.get("NOTIFY_SOCKET", "")
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        for key in _ENV_KEYS:
            env.pop(key, None)
        self.address: str | None = None
        if address.startswith("@"):
            self.address = "\0" + address[1:]
        elif address.startswith("/"):
            self.address = address
        elif address:
            log.warning("ignoring NOTIFY_SOCKET=%r: not a path or @abstract name", address)
        self.watchdog_s: float | None = None
        if usec.isdigit() and int(usec) > 0 and (not pid or pid == str(os.getpid())):
            self.watchdog_s = int(usec) / 1_000_000
        self._socket: socket.socket | None = None
        self._warned = False

    @property
    def enabled(self) -> bool:
        return self.address is not None

    @property
    def ping_interval_s(self) -> float | None:
        """How often to send ``WATCHDOG=1``: half of ``WatchdogSec``, or None without one."""
        return None if self.watchdog_s is None else self.watchdog_s / 2

    def send(self, **fields: str | int) -> bool:
        """Send one notification (``send(READY=1, STATUS="...")``); False if not delivered."""
        if self.address is None:
            return False
        text = "\n".join(f"{key}={value}" for key, value in fields.items())
        try:
            if self._socket is None:
                self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            self._socket.sendto(text.encode("utf-8"), socket.MSG_DONTWAIT, self.address)
        except OSError as error:
            if not self._warned:  # once: the daemon must not log per watchdog tick
                log.warning("cannot notify systemd at %r: %s", self.address, error)
                self._warned = True
            return False
        return True

    def ready(self, status: str = "") -> bool:
        return self.send(READY=1, STATUS=status) if status else self.send(READY=1)

    def status(self, text: str) -> bool:
        return self.send(STATUS=text.replace("\n", " "))

    def watchdog(self) -> bool:
        return self.send(WATCHDOG=1)

    def stopping(self) -> bool:
        return self.send(STOPPING=1)

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None
