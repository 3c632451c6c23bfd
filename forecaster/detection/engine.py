"""The inference engine: prediction, scoring and recovery, with no processes or rings.

:class:`InferenceEngine` holds each camera's recurrent state and scorer and turns frames
into protocol messages. The worker process feeds it from the cameras' rings
(:mod:`forecaster.daemon.worker`); replay, eval and bench feed it from files, so offline scores
are the live scores. :func:`load` loads a model for it (one way for all of them),
:func:`model_path` says which model a command uses, and :func:`check_model` whether its
card can score with the ``[scorer]`` settings (before TensorFlow is imported).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from forecaster.config import Config, ScorerConfig
from forecaster.detection.fit import FitCheck
from forecaster.detection.scorer import Scorer
from forecaster.errors import ModelError
from forecaster.model.artifact import ModelCard, bundled_model_path, read_card
from forecaster.protocol import Event, Forecast, Message, Score
from forecaster.sources.preprocess import to_unit

if TYPE_CHECKING:
    from forecaster.model.runners import Runner

#: per-frame numbers (capture times, motion cues): a list or a float array
Floats = Sequence[float] | np.ndarray
#: one camera's frames for one model call: camera, frames (T, H, W) uint8, seqs, capture
#: times, motion cues (None: no cue)
Item = tuple[str, np.ndarray, Sequence[int], Floats, Floats | None]


def prediction_to_uint8(prediction: np.ndarray) -> np.ndarray:
    """A float prediction in [0, 1] as the uint8 frame that is published."""
    return np.clip(prediction * 255.0 + 0.5, 0.0, 255.0).astype(np.uint8)


def make_scorer(calibration: Mapping[str, Any], config: ScorerConfig) -> Scorer:
    """One camera's scorer, as the engine makes it; ValueError when the calibration does not
    fit the settings (e.g. ``patch`` mode without a per-location calibration)."""
    return Scorer(
        calibration,
        mode=config.mode,
        threshold_on=config.threshold_on,
        threshold_off=config.threshold_off,
        min_on_frames=config.min_on_frames,
        min_off_frames=config.min_off_frames,
        adapt_rate=config.adapt_rate,
        merge_gap_s=config.merge_gap_s,
    )


def check_scorer(path: Path, card: ModelCard, config: ScorerConfig) -> None:
    """Build the scorer the engine will build from ``card``'s calibration and the ``[scorer]``
    settings; ModelError naming the model and the settings when that fails.

    ``run`` (before any process starts), ``check-config``, ``replay`` and ``eval`` call it,
    so a card that does not fit the settings is one line and exit 2, not a worker crash.
    """
    try:
        make_scorer(card.calibration, config)
    except ValueError as error:
        raise ModelError(
            f"model {path} does not fit the [scorer] settings (scorer.mode = "
            f"{config.mode!r}): {error}"
        ) from None


def check_model(path: Path, scorer: ScorerConfig) -> ModelCard:
    """The model card at ``path`` (no TensorFlow); ModelError if unusable for scoring with
    the ``scorer`` settings."""
    card = read_card(path)
    if not card.has_calibration():
        raise ModelError(
            f"model {path} has no usable calibration (log_mse_mean, log_mse_std, frames) in "
            f"its card; train it with `forecaster train`"
        )
    check_scorer(path, card, scorer)
    return card


def padded_batch(count: int) -> int:
    """The batch size a call for ``count`` cameras runs with: the next power of two."""
    return 1 << max(0, count - 1).bit_length()


#: what the engine's own work around one model call costs (ms), weighed when splitting
CALL_OVERHEAD_MS = 0.3


def split_batch(count: int, call_ms: Callable[[int], float | None]) -> list[int]:
    """How many cameras each call of a turn of ``count`` cameras takes: one call padded to
    the next power of two, or calls of powers of two and a padded rest (40 cameras: 32 + 8
    rather than 64 with 24 rows of padding), whichever costs least by ``call_ms(batch)``,
    the time one call of that batch size took, plus :data:`CALL_OVERHEAD_MS` per call;
    [count] when a size was not timed."""
    if count <= 1:
        return [count]
    sizes = []
    size = 1
    while size <= padded_batch(count):
        if call_ms(size) is None:
            return [count]
        sizes.append(size)
        size *= 2
    # best[n]: (cost, the cameras of the first call) for n cameras
    best: list[tuple[float, int]] = [(0.0, 0)]
    for n in range(1, count + 1):
        padded = padded_batch(n)
        options = [(float(call_ms(padded) or 0.0) + CALL_OVERHEAD_MS, n)]
        options += [(float(call_ms(p) or 0.0) + CALL_OVERHEAD_MS + best[n - p][0], p)
                    for p in sizes if p < n]
        best.append(min(options))
    parts = []
    left = count
    while left:
        take = best[left][1]
        parts.append(take)
        left -= take
    return parts


#: frames fed after a skip that only bring the state up to date (not scored); the worker
#: feeds this many more than half a ring after a skip
SKIP_WARMUP_FRAMES = 3


@dataclass(slots=True)
class CameraState:
    """What the engine keeps per camera between ticks."""

    camera: str
    scorer: Scorer
    #: does the model fit this camera (its first scores against the calibration)
    fit: FitCheck
    state: list[np.ndarray] | None = None
    #: frames fed since the last reset
    context: int = 0
    #: prediction for the next frame (float32, H x W), made from the last frame fed
    prediction: np.ndarray | None = None
    last_seq: int | None = None
    #: capture time of the last frame fed (None before the first)
    last_ts: float | None = None
    resets: int = 0


@dataclass(slots=True)
class StepResult:
    messages: list[Message] = field(default_factory=list)
    #: the model produced NaN or inf: the camera's state must be rebuilt
    non_finite: bool = False
    #: the camera's model-fit verdict was made during this call
    fit_decided: bool = False


class InferenceEngine:
    """Runs the stateful model for several cameras and scores every frame.

    A frame is scored against the prediction made from the previous frame, once the
    state that made that prediction has seen at least ``window`` frames (so the first
    ``window`` frames after a reset are not scored).
    """

    def __init__(
        self,
        stepper: Runner,
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
        #: batch size -> the input buffer of one-frame calls
        self._tick_inputs: dict[int, np.ndarray] = {}
        #: camera count -> the cameras of each call it is split into (split_batch)
        self._splits: dict[int, list[int]] = {}

    def _inputs(self, rows: int, steps: int, height: int, width: int) -> np.ndarray:
        """The float32 model input (rows, steps, H, W, 1): one buffer per batch size kept
        for ticks (steps == 1), a fresh array for catch-up and re-priming chunks."""
        if steps != 1:
            return np.empty((rows, steps, height, width, 1), np.float32)
        buffer = self._tick_inputs.get(rows)
        if buffer is None or buffer.shape[2:4] != (height, width):
            buffer = self._tick_inputs[rows] = np.zeros((rows, 1, height, width, 1), np.float32)
        return buffer

    def add_camera(self, camera: str) -> CameraState:
        cam = CameraState(camera=camera, scorer=make_scorer(self.calibration, self.scorer_config),
                          fit=FitCheck(self.scorer_config.threshold_off,
                                       float(self.calibration["log_mse_mean"]),
                                       float(self.calibration["log_mse_std"])))
        self.cameras[camera] = cam
        return cam

    def _episode_end(self, cam: CameraState) -> Event | None:
        """The "end" event of the camera's open anomaly episode, at its last frame."""
        if not cam.scorer.anomaly or cam.last_seq is None or cam.last_ts is None:
            return None
        return Event(
            camera=cam.camera,
            seq=cam.last_seq,
            ts=cam.last_ts,
            state="end",
            peak_score=cam.scorer.peak_score,
        )

    def skip(self, camera: str) -> None:
        """Frames of the camera were skipped: its state goes on from the last frame fed, but
        the first :data:`SKIP_WARMUP_FRAMES` frames fed after the gap only bring it up to
        date and are not scored (the ones after them are). A prediction made from a state
        that has seen only a frame or two since the gap still carries the motion of before
        it: the bundled model's global score of the frame it predicts was about 9 one frame
        after a gap, up to 3.6 two frames after, against under 2.2 on normal frames."""
        cam = self.cameras[camera]
        cam.prediction = None
        cam.context = min(cam.context, max(0, self.window - SKIP_WARMUP_FRAMES))

    def reset(self, camera: str) -> Event | None:
        """Forget the camera's recurrent state; the next frames re-prime it.

        An anomaly episode still open is closed: the returned "end" event says so.
        """
        cam = self.cameras[camera]
        end = self._episode_end(cam)
        cam.state = None
        cam.context = 0
        cam.prediction = None
        cam.resets += 1
        cam.scorer.reset()
        return end

    def end_of_stream(self, camera: str) -> Event | None:
        """The camera's finite source ended: the "end" event of an anomaly episode still
        open (at the last frame fed), or None. Sent before the "ended" status."""
        return self._episode_end(self.cameras[camera])

    def process(
        self, camera: str, frames: np.ndarray, seqs: Sequence[int], stamps: Floats,
        cues: Floats | None = None,
    ) -> StepResult:
        """Feed ``frames`` (T, H, W) uint8 of one camera in one model call, with their
        motion cues when the scorer uses them.

        Returns the score (and event) messages of every scored frame and the forecast
        made from the newest frame.
        """
        return self.process_many([(camera, frames, seqs, stamps, cues)])[0]

    def process_many(
        self, items: Sequence[Item], no_forecast: Collection[str] = ()
    ) -> list[StepResult]:
        """Feed several cameras the same number of frames in ONE model call.

        Each camera's state is a row of the batch; ``items`` holds
        ``(camera, frames (T, H, W) uint8, seqs, stamps, cues or None)`` with one T for all.
        The result of each camera equals what :meth:`process` gives for it alone, less the
        forecast message for the cameras in ``no_forecast`` (whose newer frames follow in
        another call).
        """
        counts = {item[1].shape[0] for item in items}
        if len(counts) != 1:
            raise ValueError(f"process_many needs one frame count for all cameras, got {counts}")
        parts = self._split(len(items))
        if len(parts) > 1:
            results: list[StepResult] = []
            start = 0
            for take in parts:
                results += self._call(items[start : start + take], no_forecast)
                start += take
            return results
        return self._call(items, no_forecast)

    def _split(self, count: int) -> list[int]:
        """:func:`split_batch` for ``count`` cameras by the runner's timings, kept per count
        once every batch size it weighs was timed (none: one call)."""
        found = self._splits.get(count)
        if found is not None:
            return found
        call_ms = getattr(self.stepper, "call_ms", None)
        if call_ms is None or count <= 1:
            return [count]
        if any(call_ms(1 << k) is None for k in range(padded_batch(count).bit_length())):
            return [count]  # not timed (yet): one call, decided again next time
        parts = self._splits[count] = split_batch(count, call_ms)
        return parts

    def _call(self, items: Sequence[Item], no_forecast: Collection[str]) -> list[StepResult]:
        """:meth:`process_many` in one model call (padded to a power of two)."""
        cams = [self.cameras[item[0]] for item in items]
        states: list[list[np.ndarray]] = []
        for cam in cams:
            if cam.state is None:
                cam.state = self.stepper.initial_state(1)
            states.append(cam.state)
        # Pad the batch to a power of two: the compiled one-frame step is specialised per
        # batch size, so a few sizes (compiled at start-up) serve any camera count.
        rows = 1 if len(items) == 1 else padded_batch(len(items))
        inputs = self._inputs(rows, *items[0][1].shape)
        for row, item in enumerate(items):
            to_unit(item[1], out=inputs[row, :, :, :, 0])
        if len(items) == 1:
            state = states[0]
        else:
            inputs[len(items):] = 0.0
            blank = self.stepper.initial_state(rows - len(items))
            state = [
                np.concatenate([*(cam_state[i] for cam_state in states), blank[i]])
                for i in range(len(blank))
            ]
        predictions, new_state = self.stepper.run(inputs, state)
        results = []
        for row, (cam, (_, _, seqs, stamps, cues)) in enumerate(zip(cams, items, strict=True)):
            predicted = predictions[row, :, :, :, 0]
            if not np.isfinite(predicted).all():
                results.append(StepResult(non_finite=True))
                continue
            cam.state = [array[row : row + 1] for array in new_state]
            results.append(self._score(cam, predicted, inputs[row, :, :, :, 0], seqs, stamps, cues,
                                       forecast=cam.camera not in no_forecast))
        return results

    def _score(
        self,
        cam: CameraState,
        predictions: np.ndarray,
        actual: np.ndarray,
        seqs: Sequence[int],
        stamps: Floats,
        cues: Floats | None,
        forecast: bool = True,
    ) -> StepResult:
        """Score each fed frame against the prediction made from the one before it; with
        ``forecast``, add the forecast made from the newest one."""
        camera = cam.camera
        result = StepResult()
        now = self.clock()
        for index in range(predictions.shape[0]):
            seq = int(seqs[index])
            ts = float(stamps[index])
            if cam.prediction is not None and cam.context >= self.window:
                cue = math.nan if cues is None else float(cues[index])
                scored = cam.scorer.score(cam.prediction, actual[index], cue, ts)
                if cam.fit.add(scored.mse):
                    result.fit_decided = True
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
                        box=scored.box,
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
            cam.last_ts = ts
        if not forecast:
            return result
        frame = prediction_to_uint8(predictions[-1])
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


def model_path(model: str | Path | None, config: Config | None) -> Path:
    """The model a command uses: ``model``, else the config's ``model.path``, else the
    bundled model."""
    if model:
        return Path(model)
    if config is not None and config.model.path:
        return Path(config.model.path)
    return bundled_model_path()


@dataclass
class LoadedModel:
    """A model loaded for the engine: its card and the runner the engine calls."""

    path: Path
    card: ModelCard
    runner: Runner
    #: where it runs ("CPU" or "GPU (<name>)")
    device: str

    @property
    def size(self) -> tuple[int, int]:
        return (int(self.card.height), int(self.card.width))

    def engine(self, scorer: ScorerConfig, runner: Runner | None = None) -> InferenceEngine:
        """A fresh engine with the ``[scorer]`` settings; ``runner``: the model's runner
        wrapped (e.g. to keep every prediction), instead of the model's own."""
        return InferenceEngine(runner if runner is not None else self.runner,
                               self.card.calibration, scorer, window=self.card.window)


def load(
    path: Path, *, expect_size: tuple[int, int] | None = None, runtime: str = "tensorflow"
) -> LoadedModel:
    """Load the model at ``path`` and make its runner (imports Keras and its backend,
    TensorFlow or JAX); ModelError as :func:`forecaster.model.artifact.load_model` says.
    ``runtime``: what runs one-frame steps (``model.runtime``; see
    :func:`forecaster.model.lean.lean_runner`)."""
    from forecaster.backend import prepare_backend

    device = prepare_backend()
    from forecaster.model.artifact import load_model
    from forecaster.model.lean import lean_runner
    from forecaster.model.step import make_runner

    model, card = load_model(path, expect_size=expect_size)
    runner = lean_runner(make_runner(model), path, runtime, device)
    return LoadedModel(path=path, card=card, runner=runner, device=device)
