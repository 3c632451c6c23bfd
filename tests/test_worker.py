"""The worker against real rings, a real model and a real PUB/SUB pair, in one process."""

from __future__ import annotations

import multiprocessing as mp
import queue
import time
import uuid
from pathlib import Path

import numpy as np
import pytest

from forecaster.client import Subscriber
from forecaster.config import ScorerConfig
from forecaster.daemon.worker import Feed, Worker
from forecaster.detection.engine import InferenceEngine
from forecaster.ipc.health import CameraField, Health
from forecaster.ipc.publisher import Publisher
from forecaster.ipc.ring import FrameRing
from forecaster.protocol import Event, Forecast, Score, Status
from forecaster.sources.synthetic import SyntheticScene

pytestmark = pytest.mark.timeout(120)

CALIBRATION = {"log_mse_mean": -6.0, "log_mse_std": 1.0, "frames": 100}


@pytest.fixture(scope="module")
def stepper():
    import keras

    from forecaster.model.builders import build_model
    from forecaster.model.step import Stepper

    keras.utils.set_random_seed(1)
    return Stepper(build_model("convlstm-ae", 32, 32))


@pytest.fixture
def ring():
    ring = FrameRing.create(f"forecaster_test_{uuid.uuid4().hex[:8]}", 32, 32, slots=10)
    yield ring
    ring.close()
    ring.unlink()


def scene_frames(count: int) -> np.ndarray:
    scene = SyntheticScene(seed=11, height=32, width=32)
    return np.stack([scene.frame(i) for i in range(count)])


def reference(stepper, frames: np.ndarray) -> np.ndarray:
    """Predictions of a fresh state run over ``frames`` in one call."""
    x = frames.astype(np.float32)[None, :, :, :, None] / 255.0
    predictions, _ = stepper.run(x, stepper.initial_state(1))
    return predictions[0, :, :, :, 0]


class Harness:
    def __init__(
        self, stepper, ring: FrameRing, tmp_path: Path, calibration: dict = CALIBRATION,
        health: Health | None = None, name: str = "w",
    ) -> None:
        endpoint = f"ipc://{tmp_path}/{name}.sock"
        self.publisher = Publisher(endpoint, sndhwm=10000, linger_ms=0)
        self.sub = Subscriber(endpoint)
        self.engine = InferenceEngine(stepper, calibration, ScorerConfig(), window=10)
        self.feed = Feed(camera="cam0", ring=ring)
        self.stop = mp.get_context("spawn").Event()
        self.worker = Worker(self.engine, [self.feed], self.publisher, queue.Queue(), self.stop,
                             60.0, health=health)
        # PUB/SUB join: publish until the subscriber sees something
        probe = Forecast(camera="probe", seq=0, ts=0.0, target_seq=1, frame=np.zeros((2, 2), np.uint8))
        for _ in range(200):
            self.publisher.send(probe)
            if self.sub.recv(timeout=0.02) is not None:
                break
        while self.sub.recv(timeout=0.05) is not None:
            pass

    def drain(self) -> list:
        """Everything published so far: up to a marker sent after it (a quiet gap could end
        the drain early on a loaded machine), without the join's late probes."""
        self.publisher.send(Forecast(camera="drain-end", seq=0, ts=0.0, target_seq=1,
                                     frame=np.zeros((2, 2), np.uint8)))
        messages = []
        while (msg := self.sub.recv(timeout=10)) is not None and msg.camera != "drain-end":
            if msg.camera != "probe":
                messages.append(msg)
        assert msg is not None, "the drain's marker never came"
        return messages

    def close(self) -> None:
        self.sub.close()
        self.publisher.close()


def test_prime_then_steps_equal_a_fresh_run_over_the_ring(stepper, ring, tmp_path) -> None:
    frames = scene_frames(45)
    harness = Harness(stepper, ring, tmp_path)
    try:
        for i in range(30):
            ring.write(frames[i], float(i))
        harness.worker.service(harness.feed)  # unprimed: re-primes from frames 20..29
        messages = harness.drain()
        assert [type(m) for m in messages] == [Forecast]
        assert messages[0].seq == 29
        cam = harness.engine.cameras["cam0"]
        assert cam.last_seq == 29 and cam.context == 10
        # one tick per frame from here on, and a catch-up of 4 frames in one call
        for i in range(30, 40):
            ring.write(frames[i], float(i))
            harness.worker.service(harness.feed)
        for i in range(40, 44):
            ring.write(frames[i], float(i))
        harness.worker.service(harness.feed)
        messages = harness.drain()
        scores = [m for m in messages if isinstance(m, Score)]
        forecasts = [m for m in messages if isinstance(m, Forecast)]
        assert [s.seq for s in scores] == list(range(30, 44))
        assert [f.seq for f in forecasts] == [*range(30, 40), 43]
        # the state came from the ring alone: equal to a fresh run over frames 20..43
        expected = reference(stepper, frames[20:44])
        np.testing.assert_allclose(cam.prediction, expected[-1], atol=1e-5)
        want = np.clip(expected[-1] * 255 + 0.5, 0, 255).astype(np.uint8)
        assert np.abs(forecasts[-1].frame.astype(int) - want).max() <= 1
        for score in scores:
            k = score.seq - 20
            mse = float(np.mean((expected[k - 1] - frames[score.seq] / 255.0) ** 2))
            assert score.mse == pytest.approx(mse, rel=1e-4)
    finally:
        harness.close()


def test_behind_by_more_than_a_ring_skips_ahead_and_keeps_the_state(
        stepper, ring, tmp_path, monkeypatch) -> None:
    frames = scene_frames(90)
    harness = Harness(stepper, ring, tmp_path)
    try:
        for i in range(12):
            ring.write(frames[i], float(i))
        harness.worker.service(harness.feed)
        cam = harness.engine.cameras["cam0"]
        resets_before = cam.resets
        state = [s.copy() for s in cam.state]
        harness.drain()
        # 30 frames arrive before the next tick: more than the ring holds
        for i in range(12, 42):
            ring.write(frames[i], float(i))
        harness.worker.service(harness.feed)
        assert cam.resets == resets_before  # no reset, no re-prime
        assert harness.feed.dropped == 34 - 12  # frames 12..33 skipped, 34..41 fed
        x = frames[34:42].astype(np.float32)[None, :, :, :, None] / 255.0
        expected, _ = stepper.run(x, state)  # the old state goes on over the newest frames
        np.testing.assert_allclose(cam.prediction, expected[0, -1, :, :, 0], atol=1e-5)
        scored = [m.seq for m in harness.drain() if isinstance(m, Score)]
        # not 34 (its prediction was made from frame 11), 35 and 36 (made from a state that
        # saw one and two frames after the gap): they bring the state up to date
        assert scored == [37, 38, 39, 40, 41]
        # a gap of more than 4 rings within a minute of the camera's last re-prime: still a
        # skip (an overloaded worker must not re-prime every camera every turn)
        for i in range(42, 90):
            ring.write(frames[i], float(i))
        harness.worker.service(harness.feed)
        assert cam.resets == resets_before and cam.last_seq == 89
        harness.drain()
        # the same gap once the last re-prime is older than that: the state is stale,
        # re-primed from the ring
        import forecaster.daemon.catch_up as catch_up

        monkeypatch.setattr(catch_up, "REPRIME_MIN_INTERVAL_S", 0.0)
        for i in range(90, 138):
            ring.write(frames[i - 48], float(i))
        harness.worker.service(harness.feed)
        assert cam.resets == resets_before + 1
        np.testing.assert_allclose(cam.prediction, reference(stepper, frames[80:90])[-1],
                                   atol=1e-5)
        # a reconnect (new epoch) resets too, even with no frame missed
        ring.write(frames[0], 138.0)
        ring.new_epoch()
        harness.worker.service(harness.feed)
        assert cam.resets == resets_before + 2
        harness.drain()
    finally:
        harness.close()


class NaNOnCall:
    """The stepper, but once armed (``at``), its ``at``-th call from then returns non-finite
    predictions; ``prefers_ticks`` as a lean runtime's runner has it."""

    def __init__(self, stepper, prefers_ticks: bool = False) -> None:
        self.stepper = stepper
        self.prefers_ticks = prefers_ticks
        self.at: int | None = None
        self.calls = 0

    def run(self, frames, state):
        predictions, state = self.stepper.run(frames, state)
        if self.at is not None:
            self.calls += 1
            if self.calls == self.at:
                predictions = np.full_like(predictions, np.nan)
        return predictions, state

    def __getattr__(self, name: str):
        return getattr(self.stepper, name)


def test_a_re_prime_right_after_a_skip_counts_each_frame_once(stepper, ring, tmp_path) -> None:
    """A non-finite output right after a skip re-primes the camera from the ring, whose
    oldest frames the skip had counted as dropped: they stay counted once, as dropped, so
    dropped + processed is the number of frames that came."""
    frames = scene_frames(42)
    poisoned = NaNOnCall(stepper)
    harness = Harness(poisoned, ring, tmp_path)
    try:
        for i in range(12):
            ring.write(frames[i], float(i))
        harness.worker.service(harness.feed)
        feed, cam = harness.feed, harness.engine.cameras["cam0"]
        dropped, processed, resets = feed.dropped, feed.processed, cam.resets
        assert cam.last_seq == 11
        for i in range(12, 42):  # 30 frames: a skip to 34..41, whose call goes non-finite
            ring.write(frames[i], float(i))
        poisoned.at = 1
        harness.worker.service(harness.feed)
        assert cam.resets == resets + 1 and cam.last_seq == 41  # re-primed from 32..41
        assert feed.dropped - dropped == 22  # 12..33: 32 and 33 run again, still dropped
        assert feed.processed - processed == 8  # 34..41
        np.testing.assert_allclose(cam.prediction, reference(stepper, frames[32:42])[-1],
                                   atol=1e-5)
        harness.drain()
    finally:
        harness.close()


def test_a_first_re_prime_gone_non_finite_counts_its_frames_as_dropped(
        stepper, ring, tmp_path) -> None:
    """Counting starts at the camera's first re-prime even when its output is not finite:
    its frames count as dropped (as a later re-prime's would), the next one's as processed."""
    frames = scene_frames(14)
    poisoned = NaNOnCall(stepper)
    harness = Harness(poisoned, ring, tmp_path)
    try:
        for i in range(10):
            ring.write(frames[i], float(i))
        poisoned.at = 1
        harness.worker.service(harness.feed)
        assert (harness.feed.dropped, harness.feed.processed) == (10, 0)
        for i in range(10, 14):
            ring.write(frames[i], float(i))
        harness.worker.service(harness.feed)
        assert (harness.feed.dropped, harness.feed.processed) == (10, 4)  # 0..9, 10..13
        assert not harness.feed.awaiting
    finally:
        harness.close()


def test_frames_count_once_when_a_step_by_step_turn_or_a_re_prime_read_fails(
        stepper, tmp_path, monkeypatch) -> None:
    """Frames count once, as processed or dropped, when a camera's output goes non-finite
    half-way through a turn stepped frame by frame (cameras behind by different counts on
    a lean runtime), and when a re-prime's ring read loses the race with the capture and
    its buffer is dropped."""
    rings = [FrameRing.create(f"forecaster_test_{uuid.uuid4().hex[:8]}", 32, 32, slots=10)
             for _ in range(2)]
    publisher = Publisher(f"ipc://{tmp_path}/w.sock", sndhwm=10000, linger_ms=0)
    try:
        poisoned = NaNOnCall(stepper, prefers_ticks=True)
        engine = InferenceEngine(poisoned, CALIBRATION, ScorerConfig(), window=10)
        feeds = [Feed(camera=f"cam{i}", ring=r) for i, r in enumerate(rings)]
        worker = Worker(engine, feeds, publisher, queue.Queue(),
                        mp.get_context("spawn").Event(), 60.0)
        frames = scene_frames(60)
        for i in range(12):
            for r in rings:
                r.write(frames[i], float(i))
        worker.service_all(feeds)
        feed = feeds[0]
        dropped, processed = feed.dropped, feed.processed
        # cam0: 30 frames, a skip to 34..41 run step by step; cam1: one frame. Step 0 runs
        # both (cam0's 34 is scored), step 1 (cam0's 35) goes non-finite: re-prime, 32..41
        for i in range(12, 42):
            rings[0].write(frames[i], float(i))
        rings[1].write(frames[12], 12.0)
        poisoned.at = 2
        worker.service_all(feeds)
        assert engine.cameras["cam0"].last_seq == 41
        assert (feed.dropped - dropped, feed.processed - processed) == (22, 8)
        assert (feeds[1].dropped, feeds[1].processed) == (0, 11)

        # cam0 again: 42..45 go non-finite, and the re-prime's reads of the ring all fail
        # (the capture laps them), so its buffer is dropped; 46 and 47 come, and the next
        # turn re-primes from 38..47
        dropped, processed = feed.dropped, feed.processed
        for i in range(42, 46):
            rings[0].write(frames[i], float(i))
        poisoned.at, poisoned.calls = 1, 0
        read = rings[0].read
        monkeypatch.setattr(rings[0], "read", lambda first, *a, **k:
                            False if first == 36 else read(first, *a, **k))
        worker.service_all(feeds[:1])
        assert feeds[0].awaiting  # not re-primed yet
        monkeypatch.setattr(rings[0], "read", read)
        for i in range(46, 48):
            rings[0].write(frames[i], float(i))
        worker.service_all(feeds[:1])
        assert not feeds[0].awaiting and engine.cameras["cam0"].last_seq == 47
        assert (feed.dropped - dropped, feed.processed - processed) == (0, 6)  # 42..47
    finally:
        publisher.close()
        for r in rings:
            r.close()
            r.unlink()


def test_a_restarted_worker_scores_and_counts_each_frame_once(stepper, tmp_path) -> None:
    """A worker process started again (the watchdog's restart) goes on from the shared
    block: with a ring longer than the model's window it does not score again the frames
    the previous one scored (nor does a worker re-primed after a non-finite output), and
    every frame since the first re-prime counts once, as processed or dropped, across
    workers, a gap while no worker ran counted as dropped."""
    ring = FrameRing.create(f"forecaster_test_{uuid.uuid4().hex[:8]}", 32, 32, slots=32)
    health = Health(1)
    frames = scene_frames(100)
    harnesses = []

    def counts() -> tuple[int, int]:
        return (int(health.get(0, CameraField.PROCESSED)),
                int(health.get(0, CameraField.DROPPED)))

    try:
        first = Harness(stepper, ring, tmp_path, health=health, name="first")
        harnesses.append(first)
        for i in range(40):
            ring.write(frames[i], float(i))
        first.worker.service(first.feed)  # re-primed from 8..39, 18..39 scored
        for i in range(40, 46):
            ring.write(frames[i], float(i))
        first.worker.service(first.feed)
        scored = [m.seq for m in first.drain() if isinstance(m, Score)]
        assert scored == list(range(18, 46)) and counts() == (38, 0)
        for i in range(46, 50):  # while the worker is being restarted
            ring.write(frames[i], float(i))
        second = Harness(stepper, ring, tmp_path, health=health, name="second")
        harnesses.append(second)
        second.worker.service(second.feed)  # re-primed from 36..49: 46..49 scored
        assert [m.seq for m in second.drain() if isinstance(m, Score)] == [46, 47, 48, 49]
        assert counts() == (42, 0)  # 8..49
        # the same worker, its output non-finite at frame 50: re-primed from 40..50, so
        # that only 50 is scored (the 32-frame ring holds 19..50, 19..49 scored before)
        second.engine.stepper = poisoned = NaNOnCall(stepper)
        ring.write(frames[50], 50.0)
        poisoned.at = 1
        second.worker.service(second.feed)
        assert [m.seq for m in second.drain() if isinstance(m, Score)] == [50]
        assert counts() == (43, 0)
        second.engine.stepper = stepper
        for i in range(51, 100):  # a restart longer than the ring: 51..67 are gone
            ring.write(frames[i], float(i))
        third = Harness(stepper, ring, tmp_path, health=health, name="third")
        harnesses.append(third)
        third.worker.service(third.feed)
        assert [m.seq for m in third.drain() if isinstance(m, Score)] == list(range(78, 100))
        assert counts() == (75, 17)  # 8..50 and 68..99 processed, 51..67 dropped
    finally:
        for harness in harnesses:
            harness.close()
        ring.close()
        ring.unlink()


def test_run_cap_keeps_the_frames_coming_during_a_turn_within_the_ring() -> None:
    from forecaster.daemon.catch_up import RUN_MARGIN, run_cap

    # 1,200 fps against 600 frames/s run: 2 arrive per frame run, 4 with the margin of 2,
    # so 10 / 4 = 2.5 frames a turn, rounded up
    assert RUN_MARGIN == 2.0
    assert run_cap(10, 1 / 1200, 1 / 600) == 3
    assert run_cap(10, 1 / 1000, 1.0) == 1  # never less than a frame
    assert run_cap(10, 0.0, 0.0) == 10  # not measured yet
    # a camera whose ring spans BACKLOG_S (50 ms) or more runs whatever waits, however
    # slow the turns: a 10 fps camera, and a 100 fps one behind turns of 0.12 s a frame
    # (a cap would only make it shed sooner)
    assert run_cap(10, 1 / 10, 0.002) == 10
    assert run_cap(10, 1 / 100, 0.12) == 10


def test_fast_camera_behind_by_more_than_a_ring_runs_every_frame_until_backlog_s(
        stepper, ring, tmp_path, monkeypatch) -> None:
    """A camera at 1,000 fps whose turns run 3 frames while 10 arrive: the frames the
    ring no longer holds wait in the worker's buffer, and every one is run and scored in
    order (nothing dropped; the predictions of one run over all frames). Only when the
    waiting frames span more than BACKLOG_S (50 ms) are the oldest shed, down to the newest
    8, the state kept, as a skip does."""
    import forecaster.daemon.catch_up as catch_up

    assert catch_up.BACKLOG_S == 0.05
    monkeypatch.setattr(catch_up, "run_cap", lambda *args: 3)
    frames = scene_frames(163)
    harness = Harness(stepper, ring, tmp_path)
    feed = harness.feed

    def turn(first: int, last: int) -> None:
        for i in range(first, last + 1):
            ring.write(frames[i], i / 1000)
        harness.worker.service(feed)

    try:
        turn(0, 9)  # re-primed from frames 0..9
        cam = harness.engine.cameras["cam0"]
        turn(10, 19)  # runs 10..12
        turn(20, 29)  # 13..29 wait: more than the ring holds; runs 13..15
        turn(30, 39)  # runs 16..18; 19..39 wait, 21 frames over 20 ms
        assert (feed.first, feed.last, cam.last_seq) == (19, 39, 18)
        assert feed.dropped == 0 and cam.resets == 1
        while feed.last >= feed.first:  # no new frames: the rest runs, 3 a turn
            harness.worker.service(feed)
        assert cam.last_seq == 39 and feed.dropped == 0
        scored = [m.seq for m in harness.drain() if isinstance(m, Score)]
        assert scored == list(range(10, 40))
        np.testing.assert_allclose(cam.prediction, reference(stepper, frames[:40])[-1],
                                   atol=1e-5)
        # 10 new frames a turn again: the backlog grows by 7 a turn, until 58..109 wait,
        # 52 frames over 51 ms: 58..101 are shed and 102..109 kept; the first 3 of those
        # only bring the state up to date
        for first in range(40, 110, 10):
            turn(first, first + 9)
        assert feed.dropped == 102 - 58 and cam.resets == 1
        assert (feed.first, feed.last, cam.last_seq) == (105, 109, 104)
        while feed.last >= feed.first:
            harness.worker.service(feed)
        scored = [m.seq for m in harness.drain() if isinstance(m, Score)]
        assert scored == [*range(40, 58), *range(105, 110)]
        # a backlog of 28 frames (122..149), then 13 frames at once, the ring lapped: a
        # skip to the newest 8 (155..162), not a re-prime: the frames lost (150..152) are
        # no gap of more than 4 rings, however many waited in the buffer before them
        monkeypatch.setattr(catch_up, "REPRIME_MIN_INTERVAL_S", 0.0)
        for first in range(110, 150, 10):
            turn(first, first + 9)
        assert (feed.first, feed.last) == (122, 149)
        turn(150, 162)
        assert cam.resets == 1 and feed.dropped == 44 + 155 - 122
        assert (feed.first, cam.last_seq) == (158, 157)
    finally:
        harness.close()

def test_open_episode_ends_before_the_ended_status(stepper, ring, tmp_path) -> None:
    frames = scene_frames(25)
    # a calibration under which every frame is anomalous: an episode starts and stays open
    anomalous = {"log_mse_mean": -40.0, "log_mse_std": 1.0, "frames": 100}
    harness = Harness(stepper, ring, tmp_path, calibration=anomalous)
    try:
        before = harness.worker.status(harness.feed, 1.0)
        assert before.seq == -1 and not before.ended  # no frame processed yet
        for i in range(10):
            ring.write(frames[i], 100.0 + i)
        harness.worker.service(harness.feed)
        for i in range(10, 25):  # one frame per tick, each scored
            ring.write(frames[i], 100.0 + i)
            harness.worker.service(harness.feed)
        assert harness.worker.status(harness.feed, 1.0).seq == 24
        ring.set_ended()
        harness.worker.run()  # returns once the ended status is sent
        messages = [m for m in harness.drain() if not isinstance(m, Forecast)]
        assert [type(m) for m in messages[-2:]] == [Event, Status]
        end, status = messages[-2:]
        assert end.state == "end" and end.seq == 24 and end.ts == 124.0
        assert status.ended and status.seq == 24 and status.reason == "end of stream"
        events = [m for m in messages if isinstance(m, Event)]
        assert [e.state for e in events] == ["start", "end"]
        # the event of a frame comes right after that frame's score
        start = messages.index(events[0])
        assert isinstance(messages[start - 1], Score)
        assert messages[start - 1].seq == events[0].seq and messages[start - 1].anomaly
    finally:
        harness.close()


class CountingStepper:
    """The real stepper, counting model calls and the batch size of each."""

    def __init__(self, stepper) -> None:
        self.stepper = stepper
        self.batches: list[int] = []

    def initial_state(self, batch: int):
        return self.stepper.initial_state(batch)

    def run(self, frames, state):
        self.batches.append(frames.shape[0])
        return self.stepper.run(frames, state)


def test_cameras_with_new_frames_share_one_batched_call(stepper, tmp_path) -> None:
    counting = CountingStepper(stepper)
    engine = InferenceEngine(counting, CALIBRATION, ScorerConfig(), window=10)
    rings = [
        FrameRing.create(f"forecaster_test_{uuid.uuid4().hex[:8]}", 32, 32, slots=10)
        for _ in range(3)
    ]
    publisher = Publisher(f"ipc://{tmp_path}/b.sock", sndhwm=10000, linger_ms=0)
    try:
        feeds = [Feed(camera=f"cam{i}", ring=ring) for i, ring in enumerate(rings)]
        stop = mp.get_context("spawn").Event()
        worker = Worker(engine, feeds, publisher, queue.Queue(), stop, 60.0)
        scenes = [SyntheticScene(seed=20 + i, height=32, width=32) for i in range(3)]
        frames = [np.stack([scene.frame(i) for i in range(16)]) for scene in scenes]
        for k, ring in enumerate(rings):
            for i in range(10):
                ring.write(frames[k][i], float(i))
        worker.service_all(feeds)  # three re-primes of 10 frames: one call (padded to 4)
        assert counting.batches == [4]
        for i in range(10, 16):  # then one frame per tick for all three cameras
            for k, ring in enumerate(rings):
                ring.write(frames[k][i], float(i))
            worker.service_all(feeds)
        # three cameras share each call (padded to a batch of 4, a power of two)
        assert counting.batches[1:] == [4] * 6
        for k in range(3):
            expected = reference(stepper, frames[k])[-1]
            np.testing.assert_allclose(engine.cameras[f"cam{k}"].prediction, expected, atol=1e-5)
        # a camera that is behind by two frames runs apart from those behind by one
        rings[0].write(frames[0][0], 16.0)
        rings[0].write(frames[0][1], 17.0)
        rings[1].write(frames[1][0], 16.0)
        rings[2].write(frames[2][0], 16.0)
        counting.batches.clear()
        worker.service_all(feeds)
        assert sorted(counting.batches) == [1, 2]  # cam0 alone (T=2); cam1 + cam2 (T=1)
    finally:
        publisher.close()
        for ring in rings:
            ring.close()
            ring.unlink()


class TimedStepper(CountingStepper):
    """The real stepper with the time per call of each batch size that timing rounds would
    give it (here: a table), which the engine splits a turn's cameras by."""

    def __init__(self, stepper, table: dict[int, float]) -> None:
        super().__init__(stepper)
        self.table = table

    def call_ms(self, batch: int) -> float | None:
        return self.table.get(batch)


def test_split_batch_weighs_padding_against_more_calls() -> None:
    from forecaster.detection.engine import split_batch

    linear = {1: 1.0, 2: 2.0, 4: 4.0, 8: 8.0, 16: 16.0, 32: 32.0, 64: 64.0}
    assert split_batch(40, linear.get) == [8, 32]  # not 64 rows for 40 cameras
    assert split_batch(64, linear.get) == [64]
    assert sum(split_batch(45, linear.get)) == 45
    cheap_big = {1: 1.0, 2: 1.1, 4: 1.2, 8: 1.3, 16: 1.4, 32: 1.5, 64: 1.6}
    assert split_batch(40, cheap_big.get) == [40]  # padding costs less than a second call
    assert split_batch(40, {1: 1.0, 2: 2.0}.get) == [40]  # sizes not timed: one call
    assert split_batch(1, linear.get) == [1]


def test_a_turn_split_into_calls_scores_as_one_call(stepper) -> None:
    """Five cameras split into calls of 4 and 1 (as timings that make padding to 8 dear
    say) get the predictions and scores that one padded call gives them."""
    table = {1: 1.0, 2: 2.0, 4: 4.0, 8: 8.0}
    timed = TimedStepper(stepper, table)
    engines = [InferenceEngine(timed, CALIBRATION, ScorerConfig(mode="global"), window=3),
               InferenceEngine(stepper, CALIBRATION, ScorerConfig(mode="global"), window=3)]
    scenes = [SyntheticScene(seed=40 + i, height=32, width=32) for i in range(5)]
    outputs: list[list[tuple[str, int, float]]] = [[], []]
    for seq in range(6):
        items = [(f"cam{k}", scene.frame(seq)[None], [seq], [float(seq)], None)
                 for k, scene in enumerate(scenes)]
        for which, engine in enumerate(engines):
            if seq == 0:
                for k in range(5):
                    engine.add_camera(f"cam{k}")
            for result in engine.process_many(items):
                outputs[which] += [(m.camera, m.seq, m.score) for m in result.messages
                                   if isinstance(m, Score)]
    assert timed.batches == [1, 4] * 6  # 5 cameras: calls of 1 and 4, not 8 rows
    assert len(outputs[0]) == 5 * 3
    for (camera, seq, score), (other, other_seq, expected) in zip(*outputs, strict=True):
        assert (camera, seq) == (other, other_seq)
        assert score == pytest.approx(expected, rel=1e-4, abs=1e-4)
    for k in range(5):
        np.testing.assert_allclose(engines[0].cameras[f"cam{k}"].prediction,
                                   engines[1].cameras[f"cam{k}"].prediction, atol=1e-5)


class TickingStepper(CountingStepper):
    """The real stepper, standing for a runner that steps chunks as one-frame ticks (a
    lean runtime), which the worker batches step by step."""

    prefers_ticks = True


def test_frames_of_cameras_behind_by_different_counts_batch_step_by_step(
    stepper, tmp_path
) -> None:
    """Three cameras behind by 1, 2 and 3 frames: three calls of 3, 2 and 1 cameras (one
    step each), with the scores and predictions of one call per camera over its frames."""
    outputs: list[list[tuple[str, int, float]]] = [[], []]
    forecasts: list[list[tuple[str, int]]] = [[], []]
    batches: list[list[int]] = [[], []]
    for which, runner in enumerate([TickingStepper(stepper), CountingStepper(stepper)]):
        engine = InferenceEngine(runner, CALIBRATION, ScorerConfig(mode="global"), window=10)
        rings = [FrameRing.create(f"forecaster_test_{uuid.uuid4().hex[:8]}", 32, 32, slots=10)
                 for _ in range(3)]
        publisher = Publisher(f"ipc://{tmp_path}/s{which}.sock", sndhwm=10000, linger_ms=0)
        sent: list[object] = []
        original = publisher.send

        def keep(message: object, original=original, sent=sent) -> object:
            sent.append(message)
            return original(message)

        publisher.send = keep  # type: ignore[method-assign]
        try:
            feeds = [Feed(camera=f"cam{i}", ring=ring) for i, ring in enumerate(rings)]
            worker = Worker(engine, feeds, publisher, queue.Queue(),
                            mp.get_context("spawn").Event(), 60.0)
            scenes = [SyntheticScene(seed=30 + i, height=32, width=32) for i in range(3)]
            frames = [np.stack([scene.frame(i) for i in range(14)]) for scene in scenes]
            for k, ring in enumerate(rings):
                for i in range(10):
                    ring.write(frames[k][i], float(i))
            worker.service_all(feeds)  # the re-primes
            for k, ring in enumerate(rings):  # camera k is k + 1 frames behind
                for i in range(10, 11 + k):
                    ring.write(frames[k][i], float(i))
            runner.batches.clear()
            sent.clear()
            worker.service_all(feeds)
            batches[which] = list(runner.batches)
            outputs[which] = sorted((m.camera, m.seq, m.score) for m in sent
                                    if isinstance(m, Score))
            forecasts[which] = sorted((m.camera, m.seq) for m in sent
                                      if isinstance(m, Forecast))
            for k in range(3):
                expected = reference(stepper, frames[k][: 11 + k])[-1]
                np.testing.assert_allclose(engine.cameras[f"cam{k}"].prediction, expected,
                                           atol=1e-5)
        finally:
            publisher.close()
            for ring in rings:
                ring.close()
                ring.unlink()
    assert batches[0] == [4, 2, 1]  # steps: 3 cameras (padded to 4), then 2, then 1
    assert sorted(batches[1]) == [1, 1, 1]  # one call per frame count
    assert len(outputs[0]) == 1 + 2 + 3  # every frame scored
    for (camera, seq, score), (other, other_seq, expected) in zip(*outputs, strict=True):
        assert (camera, seq) == (other, other_seq)
        assert score == pytest.approx(expected, rel=1e-4, abs=1e-4)
    # a forecast from each camera's newest frame only, as one call over its frames gives
    assert forecasts[0] == forecasts[1] == [("cam0", 10), ("cam1", 11), ("cam2", 12)]


def test_model_path_argument_then_config_then_bundled(tmp_path: Path) -> None:
    from forecaster.config import Config, ModelConfig
    from forecaster.detection.engine import model_path
    from forecaster.model.artifact import bundled_model_path

    configured = Config(model=ModelConfig(path=str(tmp_path / "configured.keras")))
    assert model_path("given.keras", configured) == Path("given.keras")
    assert model_path(None, configured) == tmp_path / "configured.keras"
    assert model_path(None, Config()) == bundled_model_path()
    assert model_path(None, None) == bundled_model_path()


def test_load_gives_the_engine_the_worker_and_replay_run() -> None:
    from forecaster.detection.engine import load
    from forecaster.errors import ModelError
    from forecaster.model.artifact import bundled_model_path

    loaded = load(bundled_model_path())
    assert loaded.size == (loaded.runner.height, loaded.runner.width)
    assert loaded.device == "CPU" or loaded.device.startswith("GPU")
    engine = loaded.engine(ScorerConfig())
    assert engine.stepper is loaded.runner and engine.window == loaded.card.window
    engine.add_camera("cam0")
    frames = np.zeros((loaded.card.window + 1, *loaded.size), np.uint8)
    result = engine.process("cam0", frames, range(len(frames)), np.zeros(len(frames)))
    # the first frame scored is the one after ``window`` frames of context
    assert [m.seq for m in result.messages if isinstance(m, Score)] == [loaded.card.window]
    with pytest.raises(ModelError, match="expects"):
        load(bundled_model_path(), expect_size=(loaded.size[0] + 1, loaded.size[1]))


def test_frames_scored_after_a_skip_read_as_normal_footage() -> None:
    """The bundled model on its own calibration scene (160x120, no anomalies) in the global
    mode, with a gap of 10 frames every 8 frames fed, as a worker far behind skips: no
    frame is flagged, and no score reaches the alarm threshold. Scoring from the second
    frame after each gap (one frame to bring the state up to date), the highest score
    here was 9.5: that prediction still carries the motion of before the gap."""
    from forecaster.detection.engine import SKIP_WARMUP_FRAMES, load
    from forecaster.model.artifact import bundled_model_path
    from forecaster.offline.datasets import read_video

    loaded = load(bundled_model_path())
    frames, _ = read_video("synthetic:?anomaly_rate=0&seed=11", loaded.size, 400)
    engine = loaded.engine(ScorerConfig(mode="global"))
    engine.add_camera("cam0")
    window = loaded.card.window
    first = frames[:window]  # a primed state, then gaps
    engine.process("cam0", first, range(window), np.zeros(window))
    scores: list[Score] = []
    seq, gaps = window, 0
    while seq + 8 <= len(frames):
        chunk = range(seq, seq + 8)
        result = engine.process("cam0", frames[seq : seq + 8], chunk, np.zeros(8))
        scored = [m for m in result.messages if isinstance(m, Score)]
        assert [m.seq for m in scored] == list(chunk)[SKIP_WARMUP_FRAMES if gaps else 0:]
        scores += scored
        seq += 8 + 10
        engine.skip("cam0")
        gaps += 1
    assert gaps >= 15 and len(scores) >= 90
    assert not any(m.anomaly for m in scores)
    assert max(m.score for m in scores) < engine.scorer_config.threshold_on


class StepCounting(CountingStepper):
    """The real stepper, counting the frames of each model call."""

    def __init__(self, stepper) -> None:
        super().__init__(stepper)
        self.steps: list[int] = []

    def run(self, frames, state):
        self.steps.append(frames.shape[1])
        return super().run(frames, state)


def test_fast_camera_frames_held_into_one_chunk_score_as_tick_by_tick(
        stepper, ring, tmp_path) -> None:
    frames = scene_frames(24)
    counting = StepCounting(stepper)
    harness = Harness(counting, ring, tmp_path)
    worker = harness.worker = Worker(harness.engine, [harness.feed], harness.publisher,
                                     queue.Queue(), harness.stop, 60.0, batch_wait_s=60.0)

    def write(*seqs: int) -> None:
        for i in seqs:
            ring.write(frames[i], float(i))

    try:
        write(*range(10))
        worker.service(harness.feed)  # re-prime from the ring
        write(10)
        worker.service(harness.feed)  # one frame waiting: a call of its own
        write(11, 12)
        worker.service(harness.feed)  # two waiting: the camera is fast from now on
        assert counting.steps == [10, 1, 2]
        for i in range(13, 17):  # held while fewer than half a ring wait
            write(i)
            worker.service(harness.feed)
        assert counting.steps == [10, 1, 2]
        write(17)
        worker.service(harness.feed)  # five waiting: one call
        assert counting.steps == [10, 1, 2, 5]
        # a frame held no longer than batch_wait_s (less once the camera's rate cannot
        # make up the chunk in the time left): then it runs alone (and the camera is no
        # longer taken for fast)
        worker.batch_wait_s = 0.05
        harness.feed.rate = 1000.0  # a fast camera (the measured rate depends on the machine)
        write(18)
        began = time.monotonic()
        worker.service(harness.feed)
        assert counting.steps == [10, 1, 2, 5]  # held
        while len(counting.steps) == 4 and time.monotonic() < began + 10:
            worker.service(harness.feed)
        assert time.monotonic() - began <= 0.05 + 5
        write(19)
        worker.service(harness.feed)
        assert counting.steps == [10, 1, 2, 5, 1, 1]
        # at the end of the stream nothing is held
        write(20, 21)
        worker.service(harness.feed)
        write(22, 23)
        ring.set_ended()
        worker.service(harness.feed)
        assert counting.steps == [10, 1, 2, 5, 1, 1, 2, 2]
        messages = harness.drain()
        forecasts = [m.seq for m in messages if isinstance(m, Forecast)]
        assert forecasts == [9, 10, 12, 17, 18, 19, 21, 23]  # the newest frame of each call
        # the scores equal those of one model call per frame
        reference_engine = InferenceEngine(stepper, CALIBRATION, ScorerConfig(), window=10)
        reference_engine.add_camera("ref")
        reference_engine.process("ref", frames[:10], range(10), np.arange(10.0))
        expected = []
        for i in range(10, 24):
            result = reference_engine.process("ref", frames[i : i + 1], [i], [float(i)])
            expected += [m for m in result.messages if isinstance(m, Score)]
        scores = [m for m in messages if isinstance(m, Score)]
        assert [s.seq for s in scores] == [s.seq for s in expected] == list(range(10, 24))
        for got, want in zip(scores, expected, strict=True):
            assert got.mse == pytest.approx(want.mse, rel=1e-5, abs=1e-9)
            assert got.score == pytest.approx(want.score, rel=1e-5, abs=1e-5)
    finally:
        harness.close()
