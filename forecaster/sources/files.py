"""Paths that exist but are not files to read: FIFOs, devices, sockets.

Reading one blocks (a FIFO with no writer) or never ends (``/dev/zero``), so the readers
of config, labels and video files refuse them by name first.
"""

from __future__ import annotations

import stat
from pathlib import Path


def special_file(path: str | Path) -> str | None:
    """What ``path`` is when it exists and is neither a regular file nor a folder (a FIFO,
    a device, a socket), in words; None otherwise."""
    try:
        mode = Path(path).stat().st_mode
    except (OSError, ValueError):
        return None
    for test, what in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return what
    return None
