"""Inference worker: one process for all cameras.

:class:`Worker` runs the process-free :class:`~forecaster.detection.engine.InferenceEngine`
(the same one replay and evaluation run) on the frames its ring side
(:mod:`forecaster.daemon.catch_up`) chose, publishes the results and sends each camera's
status. :func:`worker_main` is the process the supervisor starts and restarts.

The worker's progress and counters live in the shared :class:`~forecaster.ipc.health.Health`
block: the supervisor watches them (systemd watchdog, metrics), and a restarted worker
goes on from them (no frame published twice, drop counts kept).
"""

from __future__ import annotations

import gc
import logging
import queue
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from forecaster.config import PublishConfig, ScorerConfig
from forecaster.daemon.catch_up import Feed, RingReader
from forecaster.detection.engine import (
    InferenceEngine,
    StepResult,
    load,
    padded_batch,
)
from forecaster.errors import ForecasterError
from forecaster.ipc.channels import Flag, Outbox, start_child
from forecaster.ipc.health import CameraField, Health
from forecaster.ipc.ring import FrameRing, RingStats
from forecaster.protocol import Event, Message, Score, Status
from forecaster.recording.event_board import EventNotes
from forecaster.recording.recorder import RecordingSpec


@dataclass(frozen=True, slots=True)
class WorkerSpec:
    """Everything the worker process needs; picklable for the spawn start method."""

    cameras: tuple[tuple[str, str], ...]  # (camera id, ring name)
    model_path: str
    #: what runs the one-frame step (``model.runtime``)
    runtime: str
    size: tuple[int, int]
    publish: PublishConfig
    scorer: ScorerConfig
    throttle_ms: float = 0.0
    log_level: str = "info"
    #: the live page's private feed (``ipc://``), "" = no page
    feed_endpoint: str = ""
    #: event recordings (None: off): the board the captures read, the files' names
    recording: RecordingSpec | None = None
    batch_wait_ms: float = 0.0
    #: each camera's source string, in the order of ``cameras`` (the misfit warning's hint)
    sources: tuple[str, ...] = ()


class Worker(RingReader):
    """Reads the rings, drives the engine and publishes."""

    def __init__(
        self,
        engine: InferenceEngine,
        feeds: list[Feed],
        publisher: Any,
        notify: Any,
        stop: Any,
        status_interval_s: float,
        throttle_s: float = 0.0,
        health: Health | None = None,
        model_name: str = "in use",
        notes: EventNotes | None = None,
        batch_wait_s: float = 0.0,
    ) -> None:
        self.engine = engine
        self.notes = notes
        self.batch_wait_s = batch_wait_s
        #: earliest monotonic time a held camera should have a chunk waiting, or its wait
        #: run out (None: none held)
        self._hold_until: float | None = None
        self.model_name = model_name
        self.feeds = feeds
        self.publisher = publisher
        self.notify = notify
        self.stop = stop
        self.status_interval_s = status_interval_s
        self.throttle_s = throttle_s
        self.health = health if health is not None else Health(len(feeds))
        self.log = logging.getLogger("forecaster.worker")
        for feed in feeds:
            ring = feed.ring
            feed.frames = np.empty((ring.slots, ring.height, ring.width), dtype=np.uint8)
            feed.stamps = np.empty((ring.slots,), dtype=np.float64)
            feed.cues = np.empty((ring.slots,), dtype=np.float64)
        self._last_status = time.monotonic()
        for index, feed in enumerate(feeds):
            feed.index = index
            cam = engine.add_camera(feed.camera)
            done = int(self.health.get(index, CameraField.WORKER_SEQ))
            if done >= 0:  # a previous worker process got this far: go on from there
                cam.last_seq = done
                feed.need = done + 1
            counted = int(self.health.get(index, CameraField.COUNTED))
            if counted >= 0:  # and counted every frame up to here
                feed.counted = counted
            if notes is not None:  # an event the previous worker left open ends here
                notes.close_stale(feed.camera, done)

    # -- publishing -----------------------------------------------------------------------

    def _send(self, message: Message) -> None:
        if self.notes is not None:
            message = self.notes.note(message)
        sent = self.publisher.send(message)
        self.health.count_message(message.kind, sent is not False)

    def _report_fit(self, feed: Feed) -> None:
        """Log the camera's model-fit verdict, just made: a warning for a misfit."""
        fit = self.engine.cameras[feed.camera].fit
        if fit.verdict == "misfit":
            self.log.warning("%s", fit.message(f"camera {feed.camera}", self.model_name,
                                               feed.source))
        else:
            self.log.info("camera %s: the model fits (median score of the first %d scored "
                          "frames %.2f)", feed.camera, fit.decided_on, fit.median)

    def _publish(self, feed: Feed, result: StepResult) -> None:
        if result.fit_decided:
            self._report_fit(feed)
        for message in result.messages:
            if isinstance(message, Score):
                self.health.set(feed.index, CameraField.LAST_SCORE, message.score)
            elif isinstance(message, Event) and message.state == "start":
                self.health.add(feed.index, CameraField.ANOMALY_EVENTS)
            self._send(message)

    def _sync(self, feed: Feed) -> None:
        """Add what changed since the last call to the shared counters."""
        health, index = self.health, feed.index
        cam = self.engine.cameras[feed.camera]
        health.add(index, CameraField.DROPPED, feed.dropped - feed.synced_dropped)
        health.add(index, CameraField.PROCESSED, feed.processed - feed.synced_processed)
        health.add(index, CameraField.PRIMES, cam.resets - feed.synced_resets)
        feed.synced_dropped, feed.synced_processed = feed.dropped, feed.processed
        feed.synced_resets = cam.resets
        if cam.last_seq is not None:
            health.set(index, CameraField.WORKER_SEQ, cam.last_seq)
        if feed.counted is not None:
            health.set(index, CameraField.COUNTED, feed.counted)

    # -- model ----------------------------------------------------------------------------

    def _process(self, feed: Feed) -> StepResult:
        """Run the camera's ``feed.run`` oldest waiting frames alone."""
        count = feed.run
        began = time.perf_counter()
        result = self.engine.process(
            feed.camera, feed.frames[:count], range(feed.first, feed.first + count),
            feed.stamps[:count], feed.cues[:count]
        )
        self.health.observe_inference(time.perf_counter() - began)
        return result

    def _process_batch(self, feeds: list[Feed]) -> None:
        """Run the waiting frames of several cameras: one model call per frame count, or,
        where cameras wait different counts and the runner steps chunks as one-frame ticks
        anyway (a lean runtime), one call per step across every camera with a frame at
        that step."""
        turn_began = time.perf_counter()
        counts = {feed.run for feed in feeds}
        if len(counts) > 1 and getattr(self.engine.stepper, "prefers_ticks", False):
            pairs = list(zip(feeds, self._run_by_step(feeds), strict=True))
        else:
            groups: dict[int, list[Feed]] = {}
            for feed in feeds:
                groups.setdefault(feed.run, []).append(feed)
            pairs = []
            for count, group in groups.items():
                began = time.perf_counter()
                results = self.engine.process_many(
                    [
                        (f.camera, f.frames[:count], range(f.first, f.first + count),
                         f.stamps[:count], f.cues[:count])
                        for f in group
                    ]
                )
                self.health.observe_inference(time.perf_counter() - began)
                pairs += list(zip(group, results, strict=True))
        turn_s = time.perf_counter() - turn_began
        for feed in feeds:  # what the turn cost per frame of each camera
            per_frame = turn_s / max(1, feed.run)
            feed.turn_s_per_frame = (per_frame if feed.turn_s_per_frame <= 0
                                     else 0.7 * feed.turn_s_per_frame + 0.3 * per_frame)
        for feed, result in pairs:
            if feed.awaiting:  # a re-prime (its state was reset before the call)
                self._primed(feed, result)
                continue
            if result.non_finite:
                self.log.warning("camera %s: non-finite model output; re-priming", feed.camera)
                self._prime(feed, feed.ring.stats())
                continue
            self._count_processed(feed)
            self._publish(feed, result)
            self._consume(feed)

    def _run_by_step(self, feeds: list[Feed]) -> list[StepResult]:
        """The cameras' waiting frames one step at a time: call k takes the k-th waiting
        frame of every camera that has one (40 cameras one frame behind and 20 two behind:
        calls of 60 and 20 cameras, instead of 40 and two of 20). The result of each
        camera is that of one call over its frames: every frame scored, a forecast from
        its newest frame only; a camera whose output turns non-finite takes no further
        step."""
        counts = [feed.run for feed in feeds]
        merged = [StepResult() for _ in feeds]
        live = set(range(len(feeds)))
        for step in range(max(counts)):
            active = [i for i in range(len(feeds)) if i in live and counts[i] > step]
            if not active:
                break
            began = time.perf_counter()
            results = self.engine.process_many([
                (feeds[i].camera, feeds[i].frames[step : step + 1], [feeds[i].first + step],
                 feeds[i].stamps[step : step + 1], feeds[i].cues[step : step + 1])
                for i in active
            ], no_forecast={feeds[i].camera for i in active if step < counts[i] - 1})
            self.health.observe_inference(time.perf_counter() - began)
            for i, result in zip(active, results, strict=True):
                into = merged[i]
                if result.non_finite:
                    into.non_finite = True
                    live.discard(i)
                    continue
                into.fit_decided = into.fit_decided or result.fit_decided
                into.messages += result.messages
        return merged

    def _prime(self, feed: Feed, stats: RingStats) -> None:
        """Reset the camera's state and rebuild it from the frames in the ring, now."""
        if self._prime_read(feed, stats):
            self._primed(feed, self._process(feed))

    def _primed(self, feed: Feed, result: StepResult) -> None:
        """Complete a re-prime with the result of its model call."""
        cam = self.engine.cameras[feed.camera]
        if result.non_finite:
            if not feed.non_finite_logged:
                self.log.error("camera %s: model output not finite after re-prime; "
                               "waiting for new frames", feed.camera)
                feed.non_finite_logged = True
            self.engine.reset(feed.camera)
            cam.last_seq = feed.last
            feed.floor = feed.last + 1
            feed.run = feed.last - feed.first + 1
            if feed.counted is None:  # the camera's first re-prime: counting starts here
                feed.counted = feed.first - 1
            self._count_dropped(feed, feed.last + 1)  # none of them could be scored
            self._consume(feed)
            return
        feed.awaiting = False
        feed.primed_at = time.monotonic()
        feed.non_finite_logged = False
        self._count_processed(feed)
        self._publish(feed, result)
        self._consume(feed)

    def service(self, feed: Feed) -> None:
        """Bring one camera up to the newest frame in its ring."""
        self.service_all([feed])

    def service_all(self, feeds: list[Feed]) -> None:
        """Bring every camera up to its newest frame; cameras that are one or more frames
        behind, or re-primed from their rings (all of them at start-up), share one batched
        model call per frame count."""
        waiting = []
        self._hold_until = None
        try:
            for feed in feeds:
                # progress for the watchdog: a turn that re-primes many cameras (all of
                # them at start-up) can take longer than the stall timeout on a busy box
                self.health.beat_worker()
                if self._collect(feed):
                    waiting.append(feed)
            if waiting:
                self._process_batch(waiting)
        finally:
            for feed in feeds:
                self._sync(feed)

    def status(self, feed: Feed, elapsed: float, ended: bool = False) -> Status:
        self._sync(feed)
        stats = feed.ring.stats()
        cam = self.engine.cameras[feed.camera]
        fps = (feed.processed - feed.processed_at_status) / elapsed if elapsed > 0 else 0.0
        feed.processed_at_status = feed.processed
        dropped = int(self.health.get(feed.index, CameraField.DROPPED))
        resets = int(self.health.get(feed.index, CameraField.PRIMES))
        if ended:
            reason: str | None = "end of stream"
        elif not stats.connected:
            reason = "source disconnected; reconnecting"
        else:
            reason = None
        return Status(
            camera=feed.camera,
            seq=cam.last_seq if cam.last_seq is not None else -1,
            ts=time.time(),
            fps=fps,
            frames_captured=stats.frames_captured,
            frames_dropped=dropped + stats.frames_skipped,
            state_resets=max(resets - 1, 0),
            connected=stats.connected,
            ended=ended,
            reason=reason,
            model_fit=cam.fit.verdict,
        )

    def _finished(self, feed: Feed) -> bool:
        stats = feed.ring.stats()
        cam = self.engine.cameras[feed.camera]
        done = stats.latest_seq < 0 or (cam.last_seq is not None and cam.last_seq >= stats.latest_seq)
        return stats.ended and done

    def run(self) -> None:
        while not self.stop.is_set():
            self.health.beat_worker()
            try:
                if self._hold_until is not None:
                    # frames are held: sleep until they should make up a chunk (or their
                    # wait runs out) rather than wake up for each one
                    left = self._hold_until - time.monotonic()
                    if left > 0:
                        self.stop.wait(left)
                elif not any(feed.last >= feed.first for feed in self.feeds):
                    self.notify.get(timeout=0.1)  # else frames wait in the buffers: no wait
                while True:
                    self.notify.get_nowait()
            except queue.Empty:
                pass
            self.service_all([feed for feed in self.feeds if not feed.ended_sent])
            self.publisher.log_refusals()  # a poll with no wait
            now = time.monotonic()
            elapsed = now - self._last_status
            if elapsed >= self.status_interval_s:
                self._last_status = now
                for feed in self.feeds:
                    if not feed.ended_sent:
                        self._send(self.status(feed, elapsed))
            if self.stop.is_set():
                break  # captures mark their rings ended when stopped: that is no end of stream
            for feed in self.feeds:
                if not feed.ended_sent and self._finished(feed):
                    feed.ended_sent = True
                    end = self.engine.end_of_stream(feed.camera)
                    if end is not None:
                        self._publish(feed, StepResult(messages=[end]))
                    if self.engine.cameras[feed.camera].fit.finish():  # a short stream
                        self._report_fit(feed)
                    self._send(self.status(feed, elapsed, ended=True))
                    self.log.info("camera %s: stream ended", feed.camera)
            if all(feed.ended_sent for feed in self.feeds):
                break
            if self.throttle_s:
                self.stop.wait(self.throttle_s)


def worker_main(
    spec: WorkerSpec, wakeup_address: str, control: Outbox, stop: Flag, health: Health
) -> None:
    """Entry point of the worker process (spawned, and restarted, by the supervisor)."""
    start_child("fc-worker", stop, spec.log_level)
    log = logging.getLogger("forecaster.worker")
    role = "worker"
    rings: list[FrameRing] = []
    publisher: Any = None
    inbox = None
    try:
        from forecaster.ipc.channels import Inbox

        try:
            inbox = Inbox(wakeup_address)
        except OSError as error:
            raise ForecasterError(f"cannot bind the worker's wake-up socket: {error}") from None
        loaded = load(Path(spec.model_path), expect_size=spec.size, runtime=spec.runtime)
        from forecaster.ipc.publisher import publisher_from_config

        stepper = loaded.runner
        engine = loaded.engine(spec.scorer)
        feeds = []
        for index, (camera, name) in enumerate(spec.cameras):
            ring = FrameRing.attach(name)
            rings.append(ring)
            source = spec.sources[index] if index < len(spec.sources) else ""
            feeds.append(Feed(camera=camera, ring=ring, source=source))
        publish = spec.publish
        publisher = publisher_from_config(publish)
        if spec.feed_endpoint:
            from forecaster.ipc.feed import Tee, feed_publisher

            publisher = Tee(publisher, feed_publisher(spec.feed_endpoint))
        worker = Worker(
            engine,
            feeds,
            publisher,
            inbox,
            stop,
            publish.status_interval_s,
            throttle_s=spec.throttle_ms / 1000.0,
            health=health,
            model_name=spec.model_path,
            notes=None if spec.recording is None else EventNotes(
                [camera for camera, _ in spec.cameras], spec.recording.board, spec.size),
            batch_wait_s=spec.batch_wait_ms / 1000.0,
        )
        # compile before declaring readiness, so the first frames are not late: one frame
        # (a tick) and several (a re-prime or catch-up) may take different compiled paths
        for count in (1, 2):
            stepper.run(np.zeros((1, count, *spec.size, 1), np.float32), stepper.initial_state(1))
        rows = 2
        while rows <= padded_batch(len(feeds)):  # every batch size a tick of all cameras uses
            stepper.run(np.zeros((rows, 1, *spec.size, 1), np.float32), stepper.initial_state(rows))
            rows *= 2
    except ForecasterError as error:
        control.put(("error", role, error.exit_code, str(error)))
        if publisher is not None:
            publisher.close()
        return
    # Everything made so far (TensorFlow, Keras, the runtimes: about 400,000 objects) lives
    # as long as the process: out of the garbage collector's sight, a full collection no
    # longer walks it (about 240 ms each here, a stall of every camera at once)
    gc.collect()
    gc.freeze()
    health.beat_worker()
    control.put(("ready", role, 0, ""))
    log.info(
        "serving %d camera(s) on %s; model %s on %s, one-frame steps on %s",
        len(feeds),
        spec.publish.endpoint,
        spec.model_path,
        loaded.device,
        getattr(stepper, "runtime", "TensorFlow"),
    )
    try:
        worker.run()
    finally:
        publisher.close()
        inbox.close()
        for ring in rings:
            ring.close()
