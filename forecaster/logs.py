"""Logging set-up: one line per event on stderr (journald keeps the time stamps).

Process names carry the role and camera (``capture:cam0``, ``worker``), logger names
``forecaster.<role>.<camera>``, so every line says where it comes from.
"""

from __future__ import annotations

import logging
import os
import sys

FORMAT = "%(asctime)s %(levelname)s %(processName)s %(name)s: %(message)s"
JOURNAL_FORMAT = "%(levelname)s %(processName)s %(name)s: %(message)s"


def setup_logging(level: str = "info") -> None:
    """Configure the root logger once per process (stderr, no duplicates)."""
    under_journald = bool(os.environ.get("JOURNAL_STREAM"))
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(JOURNAL_FORMAT if under_journald else FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("tensorflow", "absl", "h5py"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def setup_child_logging(level: str) -> None:
    """Logging in a spawned child process (same format as the parent)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    setup_logging(level)
