"""Logging set-up: one line per event on stderr (journald keeps the time stamps).

Process names carry the role and camera (``capture:cam0``, ``worker``), logger names
``forecaster.<role>.<camera>``, so every line says where it comes from.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable
from typing import Any

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
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    setup_logging(level)


def _grow_gpu_memory(tf: Any) -> list[Any]:
    """The visible GPUs, each set to take memory as needed rather than all of it at the
    first operation (a daemon shares the GPU with other programs). Must run before
    TensorFlow initialises its devices; later it changes nothing."""
    gpus = tf.config.list_physical_devices("GPU")
    for gpu in gpus:
        try:
            tf.config.experimental.set_memory_growth(gpu, True)
        except (RuntimeError, ValueError):  # devices already initialised
            break
    return list(gpus)


def import_tensorflow_quietly(before_first_op: Callable[[Any], object] | None = None) -> str:
    """Import TensorFlow with its start-up banner kept off stderr; return the device used.

    TensorFlow writes a few native INFO lines before its logging is initialised, which no
    environment variable silences; stderr (fd 2) is pointed at /dev/null for the import
    only, unless TF_CPP_MIN_LOG_LEVEL asks for them (0). Import errors still raise.
    ``before_first_op(tf)`` runs before TensorFlow's runtime starts (a multi-worker
    strategy must be made then).
    """
    if os.environ.get("TF_CPP_MIN_LOG_LEVEL", "3") == "0":
        import tensorflow as tf

        gpus = _grow_gpu_memory(tf)
        if before_first_op is not None:
            before_first_op(tf)
    else:
        sys.stderr.flush()
        saved = os.dup(2)
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(devnull, 2)
            import tensorflow as tf

            gpus = _grow_gpu_memory(tf)
            if before_first_op is not None:
                before_first_op(tf)
            _ = tf.constant(0.0) + 1.0  # the first op prints the oneDNN banner
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            os.close(devnull)
    return f"GPU ({gpus[0].name})" if gpus else "CPU"


class LimitedLog:
    """One log line per ``interval_s`` at most for a repeated problem; the lines between
    are counted, and the next line says how many there were."""

    def __init__(self, logger: logging.Logger, interval_s: float = 10.0,
                 level: int = logging.WARNING) -> None:
        self.logger, self.interval_s, self.level = logger, interval_s, level
        self.count = 0
        self._unlogged = 0
        self._logged_at: float | None = None

    def __call__(self, message: str, *args: object) -> None:
        self.count += 1
        now = time.monotonic()
        if self._logged_at is not None and now - self._logged_at < self.interval_s:
            self._unlogged += 1
            return
        more = f" ({self._unlogged} more since the last line)" if self._unlogged else ""
        self.logger.log(self.level, message + more, *args)
        self._unlogged, self._logged_at = 0, now
