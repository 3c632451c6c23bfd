"""Capture processes that each run several cameras, one thread per camera.

A capture process holds up to ``capture.cameras_per_process`` cameras (one: a process per
camera). Each camera runs the :class:`~forecaster.daemon.capture.Capture` loop unchanged in its
own thread: OpenCV and the sources release the GIL while they wait for and decode a frame,
and a camera whose driver call hangs holds up its own thread only. Its heartbeat in the
:class:`~forecaster.ipc.health.Health` block stops, so the supervisor's stall detector sees
that camera; since a thread stuck in a driver call cannot be stopped, the supervisor
restarts the whole process, and the other cameras of that process reconnect (a new ring
epoch each, as after any capture restart).

The process reports ready once every camera has opened its source (a camera that is
down starts disconnected and retries), so start-up costs one interpreter per group, not
one per camera. The cameras read frames once the supervisor says go (every process
ready); in a restarted process each camera starts as soon as its own source is open. A camera that fails (an error, or a bug) ends the process with that
camera's exit code, for the supervisor to restart it within the restart budget; the
process exits 0 once every camera's stream has ended.
"""

from __future__ import annotations

import gc
import logging
import os
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

from forecaster.daemon.capture import Capture, CaptureSpec
from forecaster.errors import ForecasterError
from forecaster.ipc.channels import Flag, Outbox, start_child
from forecaster.ipc.health import Health
from forecaster.ipc.ring import FrameRing

#: seconds the process waits for its camera threads to stop before it exits without them
THREAD_STOP_S = 2.0
#: how often the process's main thread looks at the supervisor's stop flag
POLL_S = 0.1
#: seconds between a camera's heartbeats while it waits for the start
BEAT_S = 0.5


@dataclass(frozen=True, slots=True)
class CaptureGroup:
    """The cameras of one capture process; picklable for the spawn start method."""

    specs: tuple[CaptureSpec, ...]
    log_level: str = "info"
    #: added to the process's niceness (``capture.nice``): the worker comes first
    nice: int = 0

    def __post_init__(self) -> None:
        if not self.specs:
            raise ValueError("a capture group needs at least one camera")

    @property
    def label(self) -> str:
        """The camera's id for a group of one, else the range of camera indices: ``0-15``."""
        if len(self.specs) == 1:
            return self.specs[0].camera
        return f"{self.specs[0].index}-{self.specs[-1].index}"

    @property
    def role(self) -> str:
        """Role in logs, messages and metrics: ``capture:cam0`` or ``capture:0-15``."""
        return f"capture:{self.label}"

    @property
    def indices(self) -> tuple[int, ...]:
        return tuple(spec.index for spec in self.specs)


def usable_cores() -> int:
    """The cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def group_specs(specs: Sequence[CaptureSpec], per_process: int, log_level: str,
                nice: int = 0, min_groups: int = 1) -> list[CaptureGroup]:
    """``specs`` (in camera order) in groups of at most ``per_process`` cameras, and in at
    least ``min_groups`` groups where there are that many cameras (the daemon: one a core),
    the groups as even in size as that many processes allow (20 cameras by 16: 10 and 10).

    One process a core at least: a process's cameras share one interpreter, whose Python
    parts run one at a time, so one process of 16 cameras of 720p scores less than two of
    8 on two cores (docs/performance.md, "Real cameras")."""
    if per_process < 1:
        raise ValueError(f"cameras per process must be at least 1, got {per_process}")
    count = len(specs)
    groups = max(-(-count // per_process), min(count, min_groups))  # ceiling
    base, extra = divmod(count, groups) if groups else (0, 0)
    result = []
    start = 0
    for number in range(groups):
        size = base + (1 if number < extra else 0)
        result.append(CaptureGroup(tuple(specs[start:start + size]), log_level, nice))
        start += size
    return result


class CameraThread:
    """One camera of a capture process: opens its source, waits for ``started``, then runs
    the capture loop until the stream ends or ``halt`` is set."""

    def __init__(self, spec: CaptureSpec, wakeup: Outbox, health: Health,
                 halt: threading.Event, started: threading.Event,
                 changed: threading.Event) -> None:
        self.spec = spec
        self.wakeup = wakeup
        self.health = health
        self.halt = halt
        self.started = started
        self.changed = changed
        self.log = logging.getLogger(f"forecaster.capture.{spec.camera}")
        #: set once the source is open (or failed to open)
        self.opened = threading.Event()
        #: None while it runs; then 0 (stream ended or stopped) or an exit code
        self.code: int | None = None
        #: what made it fail, for the supervisor's log
        self.message = ""
        self.ring: FrameRing | None = None
        self.thread = threading.Thread(
            target=self._main, name=f"capture:{spec.camera}", daemon=True
        )

    def start(self) -> None:
        self.thread.start()

    def _finish(self, code: int, message: str = "") -> None:
        self.message = message
        self.code = code
        self.opened.set()
        self.changed.set()

    def _main(self) -> None:
        spec = self.spec
        try:
            self.ring = FrameRing.attach(spec.ring)
            self.ring.set_writer(os.getpid())
            capture = Capture(spec, self.ring, self.wakeup, self.halt, self.health)
            capture.open()
        except ForecasterError as error:
            self._finish(error.exit_code, str(error))
            return
        except Exception as error:  # a bug: the process ends and is restarted
            self.log.exception("capture of camera %s failed while opening", spec.camera)
            self._finish(1, f"{type(error).__name__}: {error}")
            return
        capture.beat()
        self.opened.set()
        self.changed.set()
        while not self.started.wait(BEAT_S):  # waiting for the start is not a stall
            capture.beat()
        if self.halt.is_set():
            self._finish(0)
            return
        try:
            capture.run()
        except ForecasterError as error:
            self.log.error("%s", error)
            self._finish(error.exit_code, str(error))
            return
        except Exception as error:
            self.log.exception("capture of camera %s failed", spec.camera)
            self._finish(1, f"{type(error).__name__}: {error}")
            return
        self._finish(0)


class CaptureProcess:
    """The main thread of a capture process: starts the camera threads, reports to the
    supervisor and ends the process when the cameras are done or one fails."""

    def __init__(self, group: CaptureGroup, wakeup_address: str, control: Outbox,
                 stop: Flag, go: Flag, health: Health) -> None:
        self.group = group
        self.control = control
        self.stop = stop
        self.go = go
        self.halt = threading.Event()
        self.started = threading.Event()
        self.changed = threading.Event()
        self.log = logging.getLogger("forecaster.capture")
        self.cameras = [
            CameraThread(spec, Outbox(wakeup_address), health, self.halt, self.started,
                         self.changed)
            for spec in group.specs
        ]

    def _failed(self) -> CameraThread | None:
        return next((c for c in self.cameras if c.code not in (None, 0)), None)

    def _report(self, camera: CameraThread) -> None:
        text = camera.message
        if len(self.cameras) > 1:
            text = f"camera {camera.spec.camera}: {text}"
        self.control.put(("error", self.group.role, camera.code or 1, text))

    def _wait(self) -> bool:
        """Wait a moment for a camera thread to change; False once a stop is asked."""
        self.changed.wait(POLL_S)
        self.changed.clear()
        return not self.stop.is_set()

    def run(self) -> int:
        """Run the cameras; the process's exit code."""
        for camera in self.cameras:
            camera.start()
        code = self._run()
        self._stop_threads()
        return code

    def _run(self) -> int:
        ready = False
        while True:
            if (failed := self._failed()) is not None:
                self._report(failed)
                return failed.code or 1
            if not ready and all(camera.opened.is_set() for camera in self.cameras):
                # what start-up made lives as long as the process: kept out of the garbage
                # collector's full collections (as the worker does), which stall every
                # camera thread of the process at once
                gc.collect()
                gc.freeze()
                self.control.put(("ready", self.group.role, 0, ""))
                ready = True
            if not self.started.is_set() and self.go.is_set():
                # at start-up go comes after every process is ready; after a restart it is
                # set already, and each camera starts as soon as its own source is open
                self.started.set()
            if ready and all(camera.code == 0 for camera in self.cameras):
                return 0  # every stream ended
            if not self._wait():
                return 0

    def _stop_threads(self) -> None:
        """Stop the camera threads and close the rings of those that ended; a thread stuck
        in a driver call is left behind (the process exits without it)."""
        self.halt.set()
        self.started.set()
        deadline = time.monotonic() + THREAD_STOP_S
        for camera in self.cameras:
            camera.thread.join(max(0.0, deadline - time.monotonic()))
        stuck = [c.spec.camera for c in self.cameras if c.thread.is_alive()]
        if stuck:
            self.log.warning("camera(s) %s did not stop within %.0f s (stuck in a source "
                             "call); exiting without them", ", ".join(stuck), THREAD_STOP_S)
        for camera in self.cameras:
            if camera.ring is not None and not camera.thread.is_alive():
                camera.ring.close()


def capture_group_main(group: CaptureGroup, wakeup_address: str, control: Outbox,
                       stop: Flag, go: Flag, health: Health) -> None:
    """Entry point of a capture process (spawned, and restarted, by the supervisor).

    Opens every camera's source (reporting errors), reports ready, then waits for ``go``
    (every process ready) before the cameras read frames.
    """
    start_child(f"fc-cap:{group.label}", stop, group.log_level)
    if group.nice:
        # below the worker: when the cores are short, the worker still scores what the
        # cameras captured, and the cameras share what is left alike
        os.nice(group.nice)
    if len(group.specs) > 1:
        # the cameras' threads already keep the cores busy: OpenCV's own threads (resizes,
        # the motion cue's optical flow) would only add hand-offs between them
        import cv2

        cv2.setNumThreads(1)
    code = CaptureProcess(group, wakeup_address, control, stop, go, health).run()
    if code:
        raise SystemExit(code)
