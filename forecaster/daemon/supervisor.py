"""Supervisor: ``forecaster run``.

Creates each camera's ring and the shared :class:`~forecaster.ipc.health.Health` block,
spawns the capture processes (each runs up to ``capture.cameras_per_process`` cameras, see
:mod:`forecaster.daemon.capture_group`), one worker for all cameras, the live page's process
(``[web]``) and the MQTT bridge's (``[mqtt]``), all with the spawn start method; waits until
every child reports ready, tells systemd (``READY=1``), then watches them until the streams
end or SIGTERM/SIGINT asks it to stop:

- a child that dies is restarted: rings and counters live here, so the worker re-primes
  from the rings and the captures never stop for a worker restart. At most
  ``service.max_restarts`` restarts per ``service.restart_window_s``; one more and the
  daemon exits 1, for systemd to restart the whole service;
- a child whose loop stops advancing is stalled (see :class:`StallDetector`): the systemd
  watchdog pings stop, so systemd restarts the service; without a systemd watchdog the
  supervisor kills and restarts the stalled child itself (for a stalled camera, the
  capture process that holds it);
- SIGHUP is logged and otherwise ignored: the config is read at start only.

It owns the rings and unlinks them on the way out.
"""

from __future__ import annotations

import logging
import math
import multiprocessing as mp
import os
import queue
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from forecaster.config import Config
from forecaster.daemon.capacity import CapacityWatch
from forecaster.daemon.capture import CaptureSpec
from forecaster.daemon.capture_group import (
    CaptureGroup,
    capture_group_main,
    group_specs,
    usable_cores,
)
from forecaster.daemon.notify import SystemdNotifier
from forecaster.daemon.preflight import (
    NAMES_SHOWN,
    check_sources,
    remove_stale_rings,
    resolve_model_path,
    startup_timeout_s,
)
from forecaster.daemon.worker import WorkerSpec, worker_main
from forecaster.errors import ChildFailed, ConfigError, name_some
from forecaster.ipc.channels import Flag, Inbox, Outbox, channel_address
from forecaster.ipc.health import (
    CameraField,
    DaemonField,
    Health,
    MqttLink,
    RestartBudget,
    StallDetector,
)
from forecaster.ipc.ring import FrameRing, ring_name
from forecaster.recording.event_board import EventBoard
from forecaster.recording.event_index import reconcile_at_start
from forecaster.recording.recorder import RecordingSpec
from forecaster.recording.recording_dir import prepare_events_dir

log = logging.getLogger("forecaster.supervisor")
STOP_GRACE_S = 4.0
WORKER = -1  # Child.index of the worker
WEB = -2  # Child.index of the live page's process
MQTT = -3  # Child.index of the MQTT bridge's process
#: children that are restarted, but never worth stopping the detector for
SIDE_ROLES = {WEB: "the live page", MQTT: "the MQTT bridge"}


@dataclass(slots=True)
class Child:
    role: str
    #: group index of a capture process, WORKER for the worker
    index: int
    process: Any
    #: indices of the cameras a capture process runs
    cameras: tuple[int, ...] = ()
    ready: bool = False
    started: float = 0.0
    #: exited 0 after start-up: its stream ended
    finished: bool = False
    #: why the supervisor killed it, if it did
    killed_because: str = ""


def describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with code {code}"


class Supervisor:
    def __init__(self, config: Config, max_frames: int | None = None) -> None:
        self.config = config
        self.max_frames = max_frames
        self.ctx = mp.get_context("spawn")
        self.stop = Flag(self.ctx)
        #: set once every child is ready: captures read only then (no frame overwritten unread)
        self.go = Flag(self.ctx)
        instance = str(os.getpid())
        self.instance = instance
        self.control = Inbox(channel_address(instance, "control"))
        self.control_out = Outbox(self.control.address)
        self.wakeup_address = channel_address(instance, "wakeup")
        self.camera_ids = [camera.id for camera in config.cameras]
        self.health = Health(len(config.cameras), self.ctx)
        self.children: list[Child] = []
        self.rings: list[FrameRing] = []
        self.restarts: dict[str, int] = {}
        self.healthy = True
        self.systemd = SystemdNotifier()
        service = config.service
        self.budget = RestartBudget(service.max_restarts, service.restart_window_s)
        self.detector = StallDetector(self.camera_ids, service.stall_timeout_s)
        self.metrics: Any = None
        self._worker_spec: WorkerSpec | None = None
        self._capture_specs: list[CaptureSpec] = []
        self._web_spec: Any = None
        self._mqtt_spec: Any = None
        #: private runtime folder (0700) of the worker's private feed socket
        self._web_dir: str | None = None
        self._groups: list[CaptureGroup] = []
        self._signalled = False
        self._hangups = 0

    # -- signals --------------------------------------------------------------------------

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        # only flags here: the main loop does the logging
        self._signalled = True
        self.stop.set()

    def _on_hangup(self, _signum: int, _frame: FrameType | None) -> None:
        self._hangups += 1

    # -- start-up -------------------------------------------------------------------------

    def _spawn(self, index: int) -> Any:
        target: Callable[..., None]
        if index == WORKER:
            role, target = "worker", worker_main
            args: tuple[Any, ...] = (
                self._worker_spec, self.wakeup_address, self.control_out, self.stop, self.health
            )
        elif index == WEB:
            from forecaster.web.process import web_main

            role, target = "web", web_main
            args = (self._web_spec, self.control_out, self.stop, self.health)
        elif index == MQTT:
            from forecaster.mqtt.process import mqtt_main

            role, target = "mqtt", mqtt_main
            args = (self._mqtt_spec, self.control_out, self.stop, self.health)
        else:
            group = self._groups[index]
            role, target = group.role, capture_group_main
            args = (group, self.wakeup_address, self.control_out, self.stop, self.go, self.health)
        process = self.ctx.Process(name=role, target=target, args=args)
        process.start()
        return process

    def _start_child(self, index: int) -> None:
        process = self._spawn(index)
        role = process.name
        cameras = self._groups[index].indices if index >= 0 else ()  # not the worker
        self.children.append(Child(role, index, process, cameras, started=time.monotonic()))
        self.restarts.setdefault(role, 0)

    def start(self) -> None:
        config = self.config
        check_sources(config)  # parse errors before any spawn
        model_path = resolve_model_path(config)
        if config.publish.curve:
            from forecaster.ipc.publisher import CurveServer
            from forecaster.keys import warn_if_readable_by_others

            CurveServer.from_files(
                config.publish.curve_secret_key, config.publish.curve_allowed_clients
            )
            warn_if_readable_by_others(config.publish.curve_secret_key)
        remove_stale_rings()
        from forecaster.detection.scorer import cue_height, cue_place
        from forecaster.model.artifact import read_card

        card = read_card(model_path)
        height, width = config.capture.size or card.size
        cue_rows = cue_height(config.scorer.mode, card.calibration)  # checked: check_scorer
        ring_names = []
        for camera in config.cameras:
            name = ring_name(self.instance, camera.id)
            self.rings.append(
                FrameRing.create(name, height, width, slots=config.capture.ring_frames)
            )
            ring_names.append((camera.id, name))
        if config.metrics.enabled:
            from forecaster.daemon.prometheus import MetricsServer

            self.metrics = MetricsServer(config.metrics.address, config.metrics.port, self)
        recording = self._recording(str(model_path))
        events = recording.folder if recording else None
        feed_endpoint = self._feed() if config.web.enabled or config.mqtt.enabled else ""
        if config.web.enabled:
            self._web_page(ring_names, feed_endpoint, events)
        if config.mqtt.enabled:
            from forecaster.mqtt.process import mqtt_spec

            self._mqtt_spec = mqtt_spec(config, feed_endpoint, events)
            self.health.values[DaemonField.MQTT_LINK] = MqttLink.DOWN  # until it connects
        self._worker_spec = WorkerSpec(
            cameras=tuple(ring_names),
            sources=tuple(camera.source for camera in config.cameras),
            model_path=str(model_path),
            runtime=config.model.runtime,
            size=(height, width),
            publish=config.publish,
            scorer=config.scorer,
            throttle_ms=config.worker.throttle_ms,
            batch_wait_ms=config.worker.batch_wait_ms,
            log_level=config.log_level,
            feed_endpoint=feed_endpoint,
            recording=recording,
        )
        self._capture_specs = [
            CaptureSpec(
                camera=camera.id,
                index=index,
                source=camera.source,
                detect_source=camera.detect_source or None,
                ring=name,
                size=(height, width),
                fps=camera.fps,
                loop=camera.loop,
                max_frames=self.max_frames,
                reconnect_max_s=config.capture.reconnect_max_s,
                log_level=config.log_level,
                cue_height=cue_rows, cue_place=cue_place(config.scorer.mode, card.calibration),
                recording=recording, picture_width=config.recording.max_width,
                color=recording is not None or config.web.enabled,
            )
            for index, (camera, (_, name)) in enumerate(
                zip(config.cameras, ring_names, strict=True)
            )
        ]
        self._groups = group_specs(self._capture_specs, config.capture.cameras_per_process,
                                   config.log_level, config.capture.nice, usable_cores())
        self.systemd.status("starting: loading the model")
        # start() of a spawned process does not wait for it: all of them start at once
        self._start_child(WORKER)
        for index in range(len(self._groups)):
            self._start_child(index)
        if self._web_spec is not None:
            self._start_child(WEB)
        if self._mqtt_spec is not None:
            self._start_child(MQTT)
        self._await_ready(startup_timeout_s(config))
        self.go.set()

    def _feed(self) -> str:
        """The worker's private feed endpoint, in a private runtime folder (mode 0700:
        nobody else can connect): systemd's RuntimeDirectory=, else the user's runtime
        folder, else the temporary folder (a path too long for the socket: the next)."""
        from forecaster.ipc.feed import SOCKET_NAME, make_runtime_dir

        runtime = (os.environ.get("RUNTIME_DIRECTORY", "").split(":")[0]
                   or os.environ.get("XDG_RUNTIME_DIR"))
        self._web_dir = make_runtime_dir(runtime if runtime and Path(runtime).is_dir() else None)
        return f"ipc://{self._web_dir}/{SOCKET_NAME}"

    def _web_page(self, ring_names: list[tuple[str, str]], endpoint: str,
                  events: str | None) -> None:
        """Prepare the live page's process (``events``: the recordings' folder, served
        read-only)."""
        from forecaster.config import read_token
        from forecaster.web.process import WebSpec, check_port

        web = self.config.web
        check_port(web.address, web.port)
        token = None
        if web.token_file:
            try:
                token = read_token(web.token_file)
            except ValueError as error:
                raise ConfigError(f"web.token_file: {error}") from None
        self._web_spec = WebSpec(
            cameras=tuple(ring_names), feed_endpoint=endpoint, address=web.address,
            port=web.port, threshold_on=self.config.scorer.threshold_on,
            threshold_off=self.config.scorer.threshold_off, image_fps=web.image_fps,
            token=token, events_dir=events, log_level=self.config.log_level,
            names=tuple((c.id, c.name) for c in self.config.cameras if c.name),
        )

    def _recording(self, model: str) -> RecordingSpec | None:
        """The recording folder (created) and the event board; None when not recording."""
        if not self.config.recording.enabled:
            return None
        folder = prepare_events_dir(self.config)
        reconcile_at_start(folder)
        log.info("recording events to %s", folder)
        board = EventBoard(len(self.config.cameras), self.ctx)
        return RecordingSpec(self.config.recording, str(folder), board, model)

    def _await_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while not all(child.ready for child in self.children):
            if self.stop.is_set():
                return
            self._drain_control(wait_s=0.1, starting=True)
            for child in self.children:
                code = child.process.exitcode
                if not child.ready and code is not None:
                    self._drain_control(starting=True)
                    raise ChildFailed(f"{child.role} exited with code {code} during start-up")
            if time.monotonic() > deadline:
                waiting = [c.role for c in self.children if not c.ready]
                raise ChildFailed(
                    f"{name_some(waiting, NAMES_SHOWN)} not ready after "
                    f"{timeout_s:g} s (worker.startup_timeout_s + "
                    f"worker.startup_per_camera_s per camera); see the log above"
                )
        for child in self.children:
            log.info("%s ready (pid %s)", child.role, child.process.pid)

    def _child(self, role: str) -> Child | None:
        return next((child for child in self.children if child.role == role), None)

    def _drain_control(self, wait_s: float = 0.0, starting: bool = False) -> None:
        while True:
            try:
                kind, role, code, message = self.control.get_message(timeout=wait_s)
            except queue.Empty:
                return
            wait_s = 0.0
            child = self._child(role)
            if kind == "ready" and child is not None:
                child.ready = True
                if not starting:
                    log.info("%s ready again (pid %s)", role, child.process.pid)
            elif kind == "error":
                # every error at start-up, and a usage error (exit 2) at any time, is fatal:
                # restarting would meet the same bad file or setting again
                if starting or code == 2:
                    error = ChildFailed(f"{role}: {message}")
                    error.exit_code = code
                    raise error
                log.error("%s: %s", role, message)

    # -- running --------------------------------------------------------------------------

    def watch(self) -> int:
        """Supervise until the worker is done or a stop is asked; return the exit code."""
        status_every = max(self.config.publish.status_interval_s, 1.0)
        ping_every = self.systemd.ping_interval_s
        self.systemd.ready(self._status_text(0.0))
        last_ping = time.monotonic()
        self.systemd.watchdog()
        last_status = last_progress = now = time.monotonic()
        processed = self._processed()
        progress = self._progress_counts()
        capacity = CapacityWatch([c.fps for c in self.config.cameras], self.rings, self.health, now)
        while not self.stop.is_set():
            self._drain_control(wait_s=0.1)
            if self._hangups:
                self._hangups = 0
                log.info("received SIGHUP: ignored (the config is read at start only; "
                         "restart the service to apply changes)")
            code = self._check_children()
            if code is not None:
                return code
            self._check_health()
            now = time.monotonic()
            capacity.check(now)
            if ping_every is not None and self.healthy and now - last_ping >= ping_every:
                self.systemd.watchdog()
                last_ping = now
            if now - last_status >= status_every:
                counts = self._processed()
                rates = [(b - a) / (now - last_status) for a, b in zip(processed, counts, strict=True)]
                self.systemd.status(self._status_text(rates))
                processed, last_status = counts, now
            progress_every = self.config.service.progress_log_s
            if progress_every and now - last_progress >= progress_every:
                counts_now = self._progress_counts()
                self._log_progress(progress, counts_now, now - last_progress)
                progress, last_progress = counts_now, now
        if self._signalled:
            log.info("stop requested, stopping")
        return 0

    def _progress_counts(self) -> list[tuple[float, float, float]]:
        """Per camera: frames processed, frames dropped, anomaly episodes started."""
        get = self.health.get
        return [(get(i, CameraField.PROCESSED), get(i, CameraField.DROPPED),
                 get(i, CameraField.ANOMALY_EVENTS)) for i in range(len(self.camera_ids))]

    def _log_progress(self, before: list[tuple[float, float, float]],
                      after: list[tuple[float, float, float]], seconds: float) -> None:
        """One line per camera: that the daemon is working, and how."""
        for index, camera in enumerate(self.camera_ids):
            (p0, d0, e0), (p1, d1, e1) = before[index], after[index]
            stats = self.rings[index].stats()
            state = ("ended" if stats.ended else "source down, reconnecting"
                     if not stats.connected else "")
            score = self.health.get(index, CameraField.LAST_SCORE)
            log.info("camera %s: %.1f fps over the last %.0f s, last score %s, %d event(s), "
                     "%d frame(s) dropped%s", camera, (p1 - p0) / seconds, seconds,
                     f"{score:.2f}" if math.isfinite(score) else "-", e1 - e0, d1 - d0,
                     f"; {state}" if state else "")

    def _processed(self) -> list[float]:
        return [self.health.get(i, CameraField.PROCESSED) for i in range(len(self.camera_ids))]

    def _status_text(self, rates: list[float] | float) -> str:
        parts = []
        for index, camera in enumerate(self.camera_ids):
            stats = self.rings[index].stats()
            if stats.ended:
                parts.append(f"{camera} ended")
                continue
            if not stats.connected:
                parts.append(f"{camera} source down, reconnecting")
                continue
            fps = rates[index] if isinstance(rates, list) else rates
            score = self.health.get(index, CameraField.LAST_SCORE)
            shown = f"{score:.2f}" if math.isfinite(score) else "-"
            parts.append(f"{camera} {fps:.1f} fps, score {shown}")
        if self.health.mqtt_link() in (MqttLink.DOWN, MqttLink.REFUSED):
            parts.append(f"MQTT {self.health.mqtt_link().name.lower()}")
        text = "; ".join(parts)
        return text if self.healthy else f"STALLED; {text}"

    def _check_children(self) -> int | None:
        """Restart children that died; the exit code when the daemon must end."""
        startup_s = self.config.worker.startup_timeout_s
        for child in self.children:
            code = child.process.exitcode
            if child.finished:
                continue
            if code is None:
                if not child.ready and time.monotonic() - child.started > startup_s:
                    child.killed_because = f"was not ready after {startup_s:.0f} s"
                    child.process.kill()
                continue
            if code == 0 and child.ready:
                if child.index == WORKER:
                    log.info("all streams ended")
                    return 0
                child.finished = True
                continue
            if child.killed_because:
                why = child.killed_because + " and was killed"
            elif not child.ready:
                why = f"{describe_exit(code)} before it was ready"
            else:
                why = describe_exit(code)
            self._restart(child, why)
        return None

    def _restart(self, child: Child, why: str) -> None:
        service = self.config.service
        if not self.budget.allow():
            if child.index in SIDE_ROLES:
                log.error("%s (pid %s) %s; restart budget spent: %s is off until the daemon "
                          "restarts", child.role, child.process.pid, why, SIDE_ROLES[child.index])
                child.finished = True
                return
            raise ChildFailed(
                f"{child.role} (pid {child.process.pid}) {why}; restart budget spent "
                f"({service.max_restarts} restarts within {service.restart_window_s:.0f} s, "
                f"service.max_restarts): exiting"
            )
        log.error(
            "%s (pid %s) %s; restarting it (%d restart(s) allowed per %.0f s)",
            child.role, child.process.pid, why, service.max_restarts,
            service.restart_window_s,
        )
        child.process.join(timeout=1.0)
        child.process.close()
        child.process = self._spawn(child.index)
        child.ready = False
        child.started = time.monotonic()
        child.killed_because = ""
        self.restarts[child.role] = self.restarts.get(child.role, 0) + 1

    def _holders(self) -> list[Child]:
        """The capture process of each camera, in camera order."""
        holder = {camera: child for child in self.children for camera in child.cameras}
        return [holder[camera] for camera in range(len(self.camera_ids))]

    def _running(self, child: Child) -> bool:
        return child.ready and not child.finished and child.process.exitcode is None

    def _check_health(self) -> None:
        worker = self.children[0]
        holders = self._holders()
        stalls = self.detector.check(
            self.health,
            [ring.latest_seq for ring in self.rings],
            self._running(worker),
            [self._running(child) for child in holders],
            web_running=(web := self._child("web")) is not None and self._running(web),
            mqtt_running=(mqtt := self._child("mqtt")) is not None and self._running(mqtt),
        )
        for stall in [s for s in stalls if s.role in ("web", "mqtt")]:
            # the page and the bridge are restarted here in any case, never the service
            stalls.remove(stall)
            side = web if stall.role == "web" else mqtt
            if side is not None and not side.killed_because:
                side.killed_because = f"stalled ({stall.reason})"
                side.process.kill()
        healthy = not stalls
        if not healthy and self.healthy:
            what = name_some([f"{s.role}: {s.reason}" for s in stalls], NAMES_SHOWN, "; ")
            if self.systemd.ping_interval_s is not None:
                log.error("stalled (%s): watchdog pings stopped, systemd will restart the "
                          "service unless frames flow again", what)
            else:
                log.error("stalled (%s)", what)
        elif healthy and not self.healthy and self.systemd.ping_interval_s is not None:
            log.info("no process is stalled any more; watchdog pings resume")
        self.healthy = healthy
        if stalls and self.systemd.ping_interval_s is None:
            # nobody else will act: kill the stalled child, the next turn restarts it
            for stall in stalls:
                child = self._child(stall.role) if stall.camera < 0 else holders[stall.camera]
                if child is not None and not child.killed_because:
                    reason = stall.reason
                    if child.role != stall.role:  # one camera of several
                        reason = f"camera {self.camera_ids[stall.camera]}: {reason}"
                    child.killed_because = f"stalled ({reason})"
                    child.process.kill()

    # -- stopping -------------------------------------------------------------------------

    def shutdown(self, grace_s: float = STOP_GRACE_S) -> None:
        self.systemd.stopping()
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
        if self.metrics is not None:
            self.metrics.close()
            self.metrics = None
        for ring in self.rings:
            ring.close()
            ring.unlink()
        self.rings.clear()
        if self._web_dir is not None:
            import shutil

            shutil.rmtree(self._web_dir, ignore_errors=True)
            self._web_dir = None
        self.control_out.close()
        self.control.close()
        self.systemd.close()


def run(config: Config, max_frames: int | None = None) -> int:
    """Run the daemon until the streams end or a signal stops it; return the exit code."""
    supervisor = Supervisor(config, max_frames=max_frames)
    handlers = {
        signal.SIGTERM: supervisor._on_signal,
        signal.SIGINT: supervisor._on_signal,
        signal.SIGHUP: supervisor._on_hangup,
    }
    previous = {sig: signal.signal(sig, handler) for sig, handler in handlers.items()}
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
