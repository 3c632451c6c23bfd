"""Counters and heartbeats the children share with the supervisor, and the watchdog rule.

:class:`Health` is one block of float64 values in shared memory, created by the
supervisor (which outlives every child) and written without locks by one writer per
field: each capture process writes its camera's heartbeat and epoch start, the worker
everything else. The supervisor reads it for the systemd watchdog and status, and to
serve metrics; counters therefore keep counting across restarts of the worker.

:class:`StallDetector` is the watchdog rule: a child is healthy while its loop advances,
and the worker also while it keeps up with the frames waiting in the rings.
"""

from __future__ import annotations

import ctypes
import math
import time
from dataclasses import dataclass
from enum import IntEnum
from multiprocessing.context import BaseContext
from typing import Any

import numpy as np

#: upper bounds (seconds) of the inference duration histogram's buckets (+Inf implied)
INFERENCE_BUCKETS: tuple[float, ...] = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
)
MESSAGE_KINDS: tuple[str, ...] = ("forecast", "score", "event", "status")


class DaemonField(IntEnum):
    """Daemon-wide fields."""

    WORKER_BEAT = 0  # time.monotonic() of the worker loop's last turn
    PUBLISH_DROPPED = 1  # messages the PUB socket could not queue
    INFERENCE_SUM = 2  # seconds spent in model calls
    WEB_BEAT = 3  # time.monotonic() of the live page's event loop's last turn (web writes)
    MESSAGES = 4  # + index in MESSAGE_KINDS: messages published per kind
    BUCKETS = MESSAGES + len(MESSAGE_KINDS)  # + bucket index (len(INFERENCE_BUCKETS) = +Inf)
    MQTT_LINK = BUCKETS + len(INFERENCE_BUCKETS) + 1  # a MqttLink value (the bridge writes)
    MQTT_BEAT = MQTT_LINK + 1  # time.monotonic() of the MQTT bridge loop's last turn
    MQTT_PUBLISHED = MQTT_LINK + 2  # messages handed to the MQTT broker
    MQTT_DROPPED = MQTT_LINK + 3  # events dropped while the broker was away (oldest first)


GLOBAL_FIELDS = int(DaemonField.MQTT_DROPPED) + 1


class MqttLink(IntEnum):
    """The MQTT bridge's link to its broker."""

    OFF = 0  # no [mqtt], or the bridge is not running
    DOWN = 1  # connecting, or the broker is away: retrying with backoff
    UP = 2  # connected
    REFUSED = 3  # the broker refused the login (credentials, not authorised); retrying


class CameraField(IntEnum):
    """Per-camera fields."""

    CAPTURE_BEAT = 0  # time.monotonic() of the capture loop's last turn (capture writes)
    EPOCH_START = 1  # first seq of the ring's current epoch (capture writes)
    WORKER_SEQ = 2  # last seq the worker fed to the model, -1 = none yet
    PROCESSED = 3  # frames fed to the model
    DROPPED = 4  # frames skipped because the worker was behind
    PRIMES = 5  # state resets, the first prime included
    ANOMALY_EVENTS = 6  # anomaly episodes started
    LAST_SCORE = 7  # calibrated score of the last frame scored (NaN = none)
    COUNTED = 8  # every frame up to this seq is in PROCESSED or DROPPED, -1 = none yet


CAMERA_FIELDS = len(CameraField)


class SharedDoubles:
    """A lock-free block of float64 values in shared memory, sized by a camera count.

    Create it in the supervisor with a multiprocessing context and pass it to children
    (it pickles as the shared array; each process makes its own numpy view); without a
    context it is private to this process (tests).
    """

    def __init__(self, cameras: int, size: int, ctx: BaseContext | None = None) -> None:
        self.cameras = cameras
        self._raw: Any = ctx.RawArray("d", size) if ctx is not None else (ctypes.c_double * size)()
        self._view: np.ndarray | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {"cameras": self.cameras, "_raw": self._raw}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.cameras = state["cameras"]
        self._raw = state["_raw"]
        self._view = None

    @property
    def values(self) -> np.ndarray:
        if self._view is None:
            self._view = np.frombuffer(self._raw, dtype=np.float64)
        return self._view


class Health(SharedDoubles):
    """The shared block. Create in the supervisor with a context, pass to children."""

    def __init__(self, cameras: int, ctx: BaseContext | None = None) -> None:
        super().__init__(cameras, GLOBAL_FIELDS + cameras * CAMERA_FIELDS, ctx)
        for index in range(cameras):
            self.set(index, CameraField.WORKER_SEQ, -1.0)
            self.set(index, CameraField.COUNTED, -1.0)
            self.set(index, CameraField.LAST_SCORE, math.nan)

    # -- per camera -----------------------------------------------------------------------

    def get(self, camera: int, field: CameraField) -> float:
        return float(self.values[GLOBAL_FIELDS + camera * CAMERA_FIELDS + field])

    def set(self, camera: int, field: CameraField, value: float) -> None:
        self.values[GLOBAL_FIELDS + camera * CAMERA_FIELDS + field] = value

    def add(self, camera: int, field: CameraField, amount: float = 1.0) -> None:
        if amount:
            self.values[GLOBAL_FIELDS + camera * CAMERA_FIELDS + field] += amount

    def beat_capture(self, camera: int) -> None:
        self.set(camera, CameraField.CAPTURE_BEAT, time.monotonic())

    # -- daemon-wide ----------------------------------------------------------------------

    def get_global(self, field: int) -> float:
        return float(self.values[field])

    def beat_worker(self) -> None:
        self.values[DaemonField.WORKER_BEAT] = time.monotonic()

    def beat_web(self) -> None:
        self.values[DaemonField.WEB_BEAT] = time.monotonic()

    def beat_mqtt(self) -> None:
        self.values[DaemonField.MQTT_BEAT] = time.monotonic()

    def mqtt_link(self) -> MqttLink:
        return MqttLink(int(self.values[DaemonField.MQTT_LINK]))

    def count_message(self, kind: str, sent: bool = True) -> None:
        if sent:
            self.values[DaemonField.MESSAGES + MESSAGE_KINDS.index(kind)] += 1
        else:
            self.values[DaemonField.PUBLISH_DROPPED] += 1

    def observe_inference(self, seconds: float) -> None:
        bucket = len(INFERENCE_BUCKETS)
        for index, bound in enumerate(INFERENCE_BUCKETS):
            if seconds <= bound:
                bucket = index
                break
        self.values[DaemonField.BUCKETS + bucket] += 1
        self.values[DaemonField.INFERENCE_SUM] += seconds

    def inference_histogram(self) -> tuple[list[float], float]:
        """Cumulative counts per bucket (the last is +Inf, the total) and the sum."""
        counts = self.values[DaemonField.BUCKETS : DaemonField.BUCKETS + len(INFERENCE_BUCKETS) + 1]
        return [float(x) for x in np.cumsum(counts)], float(self.values[DaemonField.INFERENCE_SUM])


@dataclass(frozen=True, slots=True)
class Stall:
    """A child that makes no progress: its role and what was seen."""

    role: str
    reason: str
    #: index of the camera whose capture loop stalled; -1 for the worker
    camera: int = -1


class StallDetector:
    """The watchdog rule, evaluated by the supervisor a few times per second.

    - the worker is stalled when its loop has not turned for ``stall_s``, or when frames
      have waited in a ring for ``stall_s`` while the worker fed none of that camera's;
    - the live page's process and the MQTT bridge are stalled when their loop has not
      turned for ``stall_s``, counted from its last beat or from when it started running;
    - a camera's capture is stalled when its loop has not turned for ``stall_s`` (each
      camera's loop beats on its own, also when a process runs several), counted from
      its last beat or from when it started running, whichever is later. A capture
      that waits for a disconnected camera keeps turning (it retries with backoff), so a
      camera that is legitimately down is not a stall: a restart would not bring it back.

    Children that are starting, restarting or finished are not judged.
    """

    def __init__(self, cameras: list[str], stall_s: float) -> None:
        self.cameras = cameras
        self.stall_s = stall_s
        #: NaN equals no seq: the first check starts every camera's clock
        self._seen = [math.nan] * len(cameras)
        self._since = [0.0] * len(cameras)
        #: when each camera's capture was last seen start running (None: not running)
        self._running_since: list[float | None] = [None] * len(cameras)
        #: when the live page's and the MQTT bridge's processes were last seen start running
        self._side_since: dict[str, float | None] = {"web": None, "mqtt": None}

    def check(
        self,
        health: Health,
        latest_seqs: list[int],
        worker_running: bool,
        captures_running: list[bool],
        now: float | None = None,
        web_running: bool = False,
        mqtt_running: bool = False,
    ) -> list[Stall]:
        now = time.monotonic() if now is None else now
        stalls: list[Stall] = []
        for index, camera in enumerate(self.cameras):
            seq = health.get(index, CameraField.WORKER_SEQ)
            if not worker_running or seq != self._seen[index] or latest_seqs[index] <= seq:
                self._seen[index] = seq
                self._since[index] = now
            elif now - self._since[index] > self.stall_s:
                waited = now - self._since[index]
                stalls.append(Stall("worker", f"frames of camera {camera} waited {waited:.0f} s"))
        if worker_running:
            age = now - health.get_global(DaemonField.WORKER_BEAT)
            if age > self.stall_s:
                stalls.insert(0, Stall("worker", f"its loop has not turned for {age:.0f} s"))
        for index, camera in enumerate(self.cameras):
            if not captures_running[index]:
                self._running_since[index] = None
                continue
            began = self._running_since[index]
            if began is None:
                began = self._running_since[index] = now
            age = now - max(health.get(index, CameraField.CAPTURE_BEAT), began)
            if age > self.stall_s:
                stalls.append(Stall(f"capture:{camera}",
                                    f"its loop has not turned for {age:.0f} s", index))
        beats = {"web": DaemonField.WEB_BEAT, "mqtt": DaemonField.MQTT_BEAT}
        for role, running in (("web", web_running), ("mqtt", mqtt_running)):
            if not running:
                self._side_since[role] = None
                continue
            began = self._side_since[role]
            if began is None:
                began = self._side_since[role] = now
            age = now - max(health.get_global(beats[role]), began)
            if age > self.stall_s:
                loop = "event loop" if role == "web" else "loop"
                stalls.append(Stall(role, f"its {loop} has not turned for {age:.0f} s"))
        return stalls


class RestartBudget:
    """At most ``limit`` restarts within any ``window_s`` seconds."""

    def __init__(self, limit: int, window_s: float) -> None:
        self.limit = limit
        self.window_s = window_s
        self.times: list[float] = []

    def allow(self, now: float | None = None) -> bool:
        """Record a restart if the budget allows it; False when it is spent."""
        now = time.monotonic() if now is None else now
        self.times = [t for t in self.times if now - t < self.window_s]
        if len(self.times) >= self.limit:
            return False
        self.times.append(now)
        return True
