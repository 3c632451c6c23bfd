"""Inference worker: one process for all cameras.

:class:`InferenceEngine` holds each camera's recurrent state and scorer and turns frames
into protocol messages; it has no notion of processes or shared memory, so replay and
evaluation run the very same code. :class:`Worker` feeds it from the cameras' rings:
one step per new frame, the missed frames in one call when behind by less than a ring,
and a reset + re-prime from the ring when further behind, after a reconnect or restart,
or when the model returns non-finite values.
"""

from __future__ import annotations

import logging
import queue
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from forecaster.config import PublishConfig, ScorerConfig
from forecaster.errors import ForecasterError
from forecaster.logs import import_tensorflow_quietly, setup_child_logging
from forecaster.protocol import Event, Forecast, Score, Status
from forecaster.ring import FrameRing, RingStats
from forecaster.scorer import Scorer

Message = Forecast | Score | Event | Status


@dataclass(slots=True)
class CameraState:
    """What the engine keeps per camera between ticks."""

    camera: str
    scorer: Scorer
    state: list[np.ndarray] | None = None
    #: frames fed since the last reset
    context: int = 0
    #: prediction for the next frame (float32, H x W), made from the last frame fed
    prediction: np.ndarray | None = None
    last_seq: int | None = None
    resets: int = 0


@dataclass(slots=True)
class StepResult:
    messages: list[Message] = field(default_factory=list)
    #: the model produced NaN or inf: the camera's state must be rebuilt
    non_finite: bool = False


class InferenceEngine:
    """Runs the stateful model for several cameras and scores every frame.

    A frame is scored against the prediction made from the previous frame, once the
    state that made that prediction has seen at least ``window`` frames (so the first
    ``window`` frames after a reset are not scored).
    """

    def __init__(
        self,
        stepper: Any,
        calibration: dict[str, Any],
        scorer: ScorerConfig,
        window: int = 10,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.stepper = stepper
        self.calibration = calibration
        self.scorer_config = scorer
        self.window = window
        self.clock = clock
        self.cameras: dict[str, CameraState] = {}

    def add_camera(self, camera: str) -> CameraState:
        cfg = self.scorer_config
        scorer = Scorer(
            self.calibration,
            threshold_on=cfg.threshold_on,
            threshold_off=cfg.threshold_off,
            min_on_frames=cfg.min_on_frames,
            min_off_frames=cfg.min_off_frames,
            adapt_rate=cfg.adapt_rate,
        )
        cam = CameraState(camera=camera, scorer=scorer)
        self.cameras[camera] = cam
        return cam

    def reset(self, camera: str) -> Event | None:
        """Forget the camera's recurrent state; the next frames re-prime it.

        An anomaly episode still open is closed: the returned "end" event says so.
        """
        cam = self.cameras[camera]
        end = None
        if cam.scorer.anomaly and cam.last_seq is not None:
            end = Event(
                camera=camera,
                seq=cam.last_seq,
                ts=self.clock(),
                state="end",
                peak_score=cam.scorer.peak_score,
            )
        cam.state = None
        cam.context = 0
        cam.prediction = None
        cam.resets += 1
        cam.scorer.reset()
        return end

    def process(
        self, camera: str, frames: np.ndarray, seqs: Sequence[int], stamps: Sequence[float]
    ) -> StepResult:
        """Feed ``frames`` (T, H, W) uint8 of one camera in one model call.

        Returns the score (and event) messages of every scored frame and the forecast
        made from the newest frame.
        """
        cam = self.cameras[camera]
        count = frames.shape[0]
        if cam.state is None:
            cam.state = self.stepper.initial_state(1)
        inputs = frames.astype(np.float32)[None, :, :, :, None]
        inputs *= 1.0 / 255.0
        predictions, new_state = self.stepper.run(inputs, cam.state)
        predictions = predictions[0, :, :, :, 0]
        if not np.isfinite(predictions).all():
            return StepResult(non_finite=True)
        cam.state = new_state
        result = StepResult()
        now = self.clock()
        for index in range(count):
            seq = int(seqs[index])
            ts = float(stamps[index])
            if cam.prediction is not None and cam.context >= self.window:
                scored = cam.scorer.score(cam.prediction, inputs[0, index, :, :, 0])
                result.messages.append(
                    Score(
                        camera=camera,
                        seq=seq,
                        ts=ts,
                        mse=scored.mse,
                        psnr=scored.psnr,
                        score=scored.score,
                        anomaly=scored.anomaly,
                        latency_ms=(now - ts) * 1000.0,
                    )
                )
                if scored.event is not None:
                    result.messages.append(
                        Event(
                            camera=camera,
                            seq=seq,
                            ts=ts,
                            state=scored.event,
                            peak_score=scored.peak_score,
                        )
                    )
            cam.prediction = predictions[index]
            cam.context += 1
            cam.last_seq = seq
        frame = np.clip(predictions[-1] * 255.0 + 0.5, 0.0, 255.0).astype(np.uint8)
        result.messages.append(
            Forecast(
                camera=camera,
                seq=int(seqs[-1]),
                ts=float(stamps[-1]),
                target_seq=int(seqs[-1]) + 1,
                frame=frame,
            )
        )
        return result


@dataclass(frozen=True, slots=True)
class WorkerSpec:
    """Everything the worker process needs; picklable for the spawn start method."""

    cameras: tuple[tuple[str, str], ...]  # (camera id, ring name)
    model_path: str
    size: tuple[int, int]
    publish: PublishConfig
    scorer: ScorerConfig
    throttle_ms: float = 0.0
    log_level: str = "info"


@dataclass(slots=True)
class _Feed:
    """Per-camera bookkeeping of the worker (ring side)."""

    camera: str
    ring: FrameRing
    epoch: int = 0
    dropped: int = 0
    processed: int = 0
    processed_at_status: int = 0
    ended_sent: bool = False


class Worker:
    """Reads the rings, drives the engine and publishes."""

    def __init__(
        self,
        engine: InferenceEngine,
        feeds: list[_Feed],
        publisher: Any,
        notify: Any,
        stop: Any,
        status_interval_s: float,
        throttle_s: float = 0.0,
    ) -> None:
        self.engine = engine
        self.feeds = feeds
        self.publisher = publisher
        self.notify = notify
        self.stop = stop
        self.status_interval_s = status_interval_s
        self.throttle_s = throttle_s
        self.log = logging.getLogger("forecaster.worker")
        slots = max(feed.ring.slots for feed in feeds)
        height, width = feeds[0].ring.height, feeds[0].ring.width
        self._frames = np.empty((slots, height, width), dtype=np.uint8)
        self._stamps = np.empty((slots,), dtype=np.float64)
        self._last_status = time.monotonic()
        for feed in feeds:
            engine.add_camera(feed.camera)

    def _publish(self, messages: list[Message]) -> None:
        for message in messages:
            self.publisher.send(message)

    def _prime(self, feed: _Feed, stats: RingStats) -> None:
        """Reset the camera's state and rebuild it from the frames in the ring."""
        ring = feed.ring
        cam = self.engine.cameras[feed.camera]
        for _ in range(3):
            latest = ring.latest_seq
            first = max(0, latest - ring.slots + 1)
            if ring.read(first, latest, self._frames, self._stamps):
                break
        else:
            self.log.warning("camera %s: ring overwritten while re-priming", feed.camera)
            return
        if cam.last_seq is not None:
            feed.dropped += max(0, first - cam.last_seq - 1)
        end = self.engine.reset(feed.camera)
        if end is not None:
            self.publisher.send(end)
        count = latest - first + 1
        result = self.engine.process(
            feed.camera, self._frames[:count], range(first, latest + 1), self._stamps[:count]
        )
        if result.non_finite:
            self.log.error("camera %s: model output not finite after re-prime", feed.camera)
            self.engine.reset(feed.camera)
            cam.last_seq = latest
            return
        feed.processed += count
        feed.epoch = stats.epoch
        self._publish(result.messages)

    def service(self, feed: _Feed) -> None:
        """Bring one camera up to the newest frame in its ring."""
        stats = feed.ring.stats()
        latest = stats.latest_seq
        cam = self.engine.cameras[feed.camera]
        if latest < 0:
            return
        if stats.epoch != feed.epoch or cam.last_seq is None or cam.state is None:
            self._prime(feed, stats)
            return
        first = cam.last_seq + 1
        if latest < first:
            return
        if latest - first + 1 > feed.ring.slots or not feed.ring.read(
            first, latest, self._frames, self._stamps
        ):
            self._prime(feed, stats)
            return
        count = latest - first + 1
        result = self.engine.process(
            feed.camera, self._frames[:count], range(first, latest + 1), self._stamps[:count]
        )
        if result.non_finite:
            self.log.warning("camera %s: non-finite model output; re-priming", feed.camera)
            self._prime(feed, stats)
            return
        feed.processed += count
        self._publish(result.messages)

    def status(self, feed: _Feed, elapsed: float, ended: bool = False) -> Status:
        stats = feed.ring.stats()
        cam = self.engine.cameras[feed.camera]
        fps = (feed.processed - feed.processed_at_status) / elapsed if elapsed > 0 else 0.0
        feed.processed_at_status = feed.processed
        return Status(
            camera=feed.camera,
            seq=max(cam.last_seq if cam.last_seq is not None else -1, 0),
            ts=time.time(),
            fps=fps,
            frames_captured=stats.frames_captured,
            frames_dropped=feed.dropped + stats.frames_skipped,
            state_resets=max(cam.resets - 1, 0),
            connected=stats.connected,
            ended=ended,
            reason="end of stream" if ended else None,
        )

    def _finished(self, feed: _Feed) -> bool:
        stats = feed.ring.stats()
        cam = self.engine.cameras[feed.camera]
        done = stats.latest_seq < 0 or (cam.last_seq is not None and cam.last_seq >= stats.latest_seq)
        return stats.ended and done

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                self.notify.get(timeout=0.1)
                while True:
                    self.notify.get_nowait()
            except queue.Empty:
                pass
            for feed in self.feeds:
                if not feed.ended_sent:
                    self.service(feed)
            now = time.monotonic()
            elapsed = now - self._last_status
            if elapsed >= self.status_interval_s:
                self._last_status = now
                for feed in self.feeds:
                    if not feed.ended_sent:
                        self.publisher.send(self.status(feed, elapsed))
            for feed in self.feeds:
                if not feed.ended_sent and self._finished(feed):
                    feed.ended_sent = True
                    self.publisher.send(self.status(feed, elapsed, ended=True))
                    self.log.info("camera %s: stream ended", feed.camera)
            if all(feed.ended_sent for feed in self.feeds):
                break
            if self.throttle_s:
                self.stop.wait(self.throttle_s)


def worker_main(spec: WorkerSpec, notify: Any, control: Any, stop: Any) -> None:
    """Entry point of the worker process (spawned by the supervisor)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    setup_child_logging(spec.log_level)
    log = logging.getLogger("forecaster.worker")
    role = "worker"
    rings: list[FrameRing] = []
    publisher = None
    try:
        device = import_tensorflow_quietly()
        from forecaster.model.artifact import load_model
        from forecaster.model.step import Stepper
        from forecaster.publisher import Publisher

        model, card = load_model(spec.model_path, expect_size=spec.size)
        stepper = Stepper(model)
        engine = InferenceEngine(stepper, card.calibration, spec.scorer, window=card.window)
        feeds = []
        for camera, name in spec.cameras:
            ring = FrameRing.attach(name)
            rings.append(ring)
            feeds.append(_Feed(camera=camera, ring=ring))
        publisher = Publisher(
            spec.publish.endpoint, sndhwm=spec.publish.sndhwm, linger_ms=spec.publish.linger_ms
        )
        worker = Worker(
            engine,
            feeds,
            publisher,
            notify,
            stop,
            spec.publish.status_interval_s,
            throttle_s=spec.throttle_ms / 1000.0,
        )
        # compile the step before declaring readiness, so the first frames are not late
        stepper.run(np.zeros((1, 1, *spec.size, 1), np.float32), stepper.initial_state(1))
    except ForecasterError as error:
        control.put(("error", role, error.exit_code, str(error)))
        if publisher is not None:
            publisher.close()
        return
    control.put(("ready", role, 0, ""))
    log.info(
        "serving %d camera(s) on %s; model %s on %s",
        len(feeds),
        spec.publish.endpoint,
        spec.model_path,
        device,
    )
    try:
        worker.run()
    finally:
        publisher.close()
        for ring in rings:
            ring.close()
