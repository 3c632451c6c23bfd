"""Supervisor: ``forecaster run``.

Creates each camera's ring, spawns one capture process per camera and one worker for
all of them (spawn start method), waits until every child reports ready, then watches
them until the streams end or SIGTERM/SIGINT asks it to stop. It owns the rings and
unlinks them on the way out.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing as mp
import os
import queue
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from forecaster.capture import CaptureSpec, capture_main
from forecaster.config import Config
from forecaster.errors import ChildFailed, ModelError
from forecaster.ring import FrameRing, ring_name
from forecaster.sources import open_source
from forecaster.worker import WorkerSpec, worker_main

log = logging.getLogger("forecaster.supervisor")
STOP_GRACE_S = 4.0


@dataclass(slots=True)
class Child:
    role: str
    process: Any
    ready: bool = False


def resolve_model_path(config: Config) -> Path:
    """The configured model, or the bundled one; checked without importing TensorFlow."""
    from forecaster.model.artifact import bundled_model_path, read_card

    path = Path(config.model.path) if config.model.path else bundled_model_path()
    card = read_card(path)
    if (card.height, card.width) != tuple(config.capture.size):
        raise ModelError(
            f"model {path} expects {card.height}x{card.width} frames, configured "
            f"capture.size is {config.capture.size[0]}x{config.capture.size[1]}; "
            f"set capture.size = [{card.height}, {card.width}] or use a model trained "
            f"at that size"
        )
    return path


def remove_stale_rings(shm_dir: Path = Path("/dev/shm")) -> None:
    """Unlink rings left behind by daemons that were killed (their pid is gone)."""
    if not shm_dir.is_dir():
        return
    for entry in shm_dir.glob("forecaster_*_*"):
        pid_text = entry.name.split("_")[1]
        if not pid_text.isdigit():
            continue
        try:
            os.kill(int(pid_text), 0)
        except ProcessLookupError:
            with contextlib.suppress(OSError):
                entry.unlink()
                log.info("removed stale frame ring %s", entry.name)
        except PermissionError:
            continue


class Supervisor:
    def __init__(self, config: Config, max_frames: int | None = None) -> None:
        self.config = config
        self.max_frames = max_frames
        self.ctx = mp.get_context("spawn")
        self.stop = self.ctx.Event()
        #: set once every child is ready: captures start reading only then, so no frame
        #: of a file is overwritten before the worker can take it
        self.go = self.ctx.Event()
        self.notify: Any = self.ctx.Queue(maxsize=256)
        self.control: Any = self.ctx.Queue()
        self.children: list[Child] = []
        self.rings: list[FrameRing] = []
        self._signalled = False

    # -- signals --------------------------------------------------------------------------

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        if not self._signalled:
            log.info("received %s, stopping", signal.Signals(signum).name)
        self._signalled = True
        self.stop.set()

    # -- start-up -------------------------------------------------------------------------

    def _spawn(self, role: str, target: Any, *args: Any) -> None:
        process = self.ctx.Process(name=role, target=target, args=args)
        process.start()
        self.children.append(Child(role=role, process=process))

    def start(self) -> None:
        config = self.config
        for camera in config.cameras:
            open_source(camera.source, loop=camera.loop)  # parse errors before any spawn
        model_path = resolve_model_path(config)
        remove_stale_rings()
        instance = str(os.getpid())
        height, width = config.capture.size
        ring_names = []
        for camera in config.cameras:
            name = ring_name(instance, camera.id)
            self.rings.append(
                FrameRing.create(name, height, width, slots=config.capture.ring_frames)
            )
            ring_names.append((camera.id, name))
        self._spawn(
            "worker",
            worker_main,
            WorkerSpec(
                cameras=tuple(ring_names),
                model_path=str(model_path),
                size=(height, width),
                publish=config.publish,
                scorer=config.scorer,
                throttle_ms=config.worker.throttle_ms,
                log_level=config.log_level,
            ),
            self.notify,
            self.control,
            self.stop,
        )
        for index, (camera, (_, name)) in enumerate(zip(config.cameras, ring_names, strict=True)):
            self._spawn(
                f"capture:{camera.id}",
                capture_main,
                CaptureSpec(
                    camera=camera.id,
                    index=index,
                    source=camera.source,
                    ring=name,
                    size=(height, width),
                    fps=camera.fps,
                    loop=camera.loop,
                    max_frames=self.max_frames,
                    reconnect_max_s=config.capture.reconnect_max_s,
                    log_level=config.log_level,
                ),
                self.notify,
                self.control,
                self.stop,
                self.go,
            )
        self._await_ready(config.worker.startup_timeout_s)
        self.go.set()

    def _await_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while not all(child.ready for child in self.children):
            if self.stop.is_set():
                return
            self._drain_control(starting=True)
            for child in self.children:
                code = child.process.exitcode
                if not child.ready and code is not None:
                    self._drain_control(starting=True)
                    raise ChildFailed(f"{child.role} exited with code {code} during start-up")
            if time.monotonic() > deadline:
                waiting = ", ".join(c.role for c in self.children if not c.ready)
                raise ChildFailed(
                    f"{waiting} not ready after {timeout_s:.0f} s "
                    f"(worker.startup_timeout_s); see the log above"
                )
        log.info("all processes ready: %s", ", ".join(c.role for c in self.children))

    def _drain_control(self, starting: bool = False) -> None:
        while True:
            try:
                kind, role, code, message = self.control.get(timeout=0.1 if starting else 0)
            except queue.Empty:
                return
            if kind == "ready":
                for child in self.children:
                    if child.role == role:
                        child.ready = True
            elif kind == "error":
                if starting:
                    error = ChildFailed(f"{role}: {message}")
                    error.exit_code = code
                    raise error
                log.error("%s: %s", role, message)

    # -- running --------------------------------------------------------------------------

    def watch(self) -> int:
        """Wait until the worker is done or a stop is asked; return the exit code."""
        worker = self.children[0]
        while not self.stop.is_set():
            self._drain_control()
            code = worker.process.exitcode
            if code is not None:
                if code == 0:
                    log.info("all streams ended")
                    return 0
                log.error("worker exited with code %s", code)
                return 1
            worker.process.join(timeout=0.2)
        return 0

    def shutdown(self, grace_s: float = STOP_GRACE_S) -> None:
        self.stop.set()
        deadline = time.monotonic() + grace_s
        for child in self.children:
            child.process.join(timeout=max(0.0, deadline - time.monotonic()))
        for child in self.children:
            if child.process.is_alive():
                if grace_s >= STOP_GRACE_S:
                    log.warning("%s did not stop in time; terminating", child.role)
                child.process.terminate()
                child.process.join(timeout=0.5)
            if child.process.is_alive():
                child.process.kill()
                child.process.join(timeout=0.5)
        for ring in self.rings:
            ring.close()
            ring.unlink()
        self.rings.clear()
        for q in (self.notify, self.control):
            q.cancel_join_thread()
            q.close()


def run(config: Config, max_frames: int | None = None) -> int:
    """Run the daemon until the streams end or a signal stops it; return the exit code."""
    supervisor = Supervisor(config, max_frames=max_frames)
    previous = {
        sig: signal.signal(sig, supervisor._on_signal) for sig in (signal.SIGTERM, signal.SIGINT)
    }
    grace = 0.5  # a failed start-up need not wait for children still loading
    try:
        supervisor.start()
        grace = STOP_GRACE_S
        if supervisor.stop.is_set():
            return 0
        return supervisor.watch()
    finally:
        supervisor.shutdown(grace)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
