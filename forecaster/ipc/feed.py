"""The worker's private feed: each message the worker publishes, a second time, on an
``ipc://`` socket in a private runtime folder (mode 0700, made by the supervisor).

The daemon's own children read it (the live page, the MQTT bridge) whatever the public
endpoint is (CURVE-protected, remote, ipc), and nobody else can connect. A PUB socket
filters by subscription on the worker's side and drops for a reader that falls behind
(a small send queue): a slow reader never slows the worker.
"""

from __future__ import annotations

import logging
import os
import shutil
import stat
import tempfile
from pathlib import Path
from typing import Any

from forecaster.endpoints import SOCKET_PATH_MAX
from forecaster.protocol import Message, encode

log = logging.getLogger("forecaster.feed")

#: messages queued for each reader of the feed before the worker drops them
FEED_SNDHWM = 1000
#: the feed's runtime folder is ``forecaster-web-<supervisor pid>-<random>``
RUNTIME_PREFIX = "forecaster-web-"
#: the feed's socket in its runtime folder
SOCKET_NAME = "feed.sock"


def make_runtime_dir(parent: str | None) -> str:
    """A private folder (mode 0700) for the feed's socket in ``parent`` (None: the temporary
    folder), named after this process; those left by supervisors that were killed (their
    pid is gone) are removed first.

    A Unix socket's path holds at most :data:`SOCKET_PATH_MAX` bytes: a ``parent`` too long
    a path for the socket's is passed over for the temporary folder (``TMPDIR``), and that
    for ``/tmp`` (always short enough), and the log says so."""
    tried = [os.path.abspath(p) for p in (parent, tempfile.gettempdir()) if p]
    chosen = next((p for p in tried if _socket_path_length(p) <= SOCKET_PATH_MAX), "/tmp")
    if chosen != tried[0]:
        log.warning("the folder %s is too long a path for the live feed's socket (%d bytes "
                    "at most); using %s instead", tried[0], SOCKET_PATH_MAX, chosen)
    remove_stale_runtime_dirs(Path(chosen))
    return tempfile.mkdtemp(prefix=f"{RUNTIME_PREFIX}{os.getpid()}-", dir=chosen)


def _socket_path_length(parent: str) -> int:
    """Bytes of the socket's path in a runtime folder made in the absolute ``parent``
    (mkdtemp adds 8 characters to the prefix)."""
    folder = os.path.join(parent, f"{RUNTIME_PREFIX}{os.getpid()}-" + "x" * 8)
    return len(os.fsencode(os.path.join(folder, SOCKET_NAME)))


def remove_stale_runtime_dirs(parent: Path) -> None:
    """Remove this user's runtime folders in ``parent`` whose supervisor is gone."""
    for entry in parent.glob(f"{RUNTIME_PREFIX}*-*"):
        pid_text = entry.name[len(RUNTIME_PREFIX):].split("-", 1)[0]
        if not pid_text.isdigit():
            continue
        try:
            info = entry.lstat()
        except OSError:
            continue
        if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
            continue
        try:
            os.kill(int(pid_text), 0)
            continue  # still running (or a process that took its pid)
        except ProcessLookupError:
            pass
        except OSError:
            continue
        shutil.rmtree(entry, ignore_errors=True)
        log.info("removed %s, left by a daemon that was killed", entry)


class Tee:
    """The worker's publisher plus the private feed's: each message encoded once, sent on
    both; the public publisher's result is the one that counts."""

    def __init__(self, public: Any, feed: Any) -> None:
        self.public = public
        self.feed = feed

    def send(self, message: Message) -> bool:
        parts = encode(message)
        self.feed.send_parts(parts)
        return bool(self.public.send_parts(parts))

    def log_refusals(self) -> int:
        return int(self.public.log_refusals())

    def close(self) -> None:
        try:
            self.public.close()
        finally:
            self.feed.close()


def feed_publisher(endpoint: str) -> Any:
    """The worker's PUB socket of the private feed (no linger: a reader can lose the last
    messages at a stop)."""
    from forecaster.ipc.publisher import Publisher

    return Publisher(endpoint, sndhwm=FEED_SNDHWM, linger_ms=0)
