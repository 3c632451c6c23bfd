"""Recorded frames to the engine in chunks, as replay, eval and bench feed it.

One model call per chunk, the recurrent state carried between chunks, so every score
equals the one the daemon computes frame by frame; a non-finite output resets the camera
and re-primes from the chunk's last frames, as the worker does from its ring.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from forecaster.detection.engine import Floats, InferenceEngine
from forecaster.protocol import Message, Score

if TYPE_CHECKING:
    from forecaster.model.runners import Runner

log = logging.getLogger("forecaster.replay")

DEFAULT_CHUNK = 128


class RecordingStepper:
    """Wraps a :class:`~forecaster.model.step.Stepper` and keeps the last predictions.

    The engine publishes the forecast of the newest frame of a call only; the preview and
    the per-frame forecasts of a replay need all of them.
    """

    def __init__(self, stepper: Runner) -> None:
        self.stepper = stepper
        self.height, self.width = stepper.height, stepper.width
        #: (B, T, H, W, 1) predictions of the last ``run`` call
        self.last: np.ndarray | None = None

    def initial_state(self, batch: int) -> list[np.ndarray]:
        return list(self.stepper.initial_state(batch))

    def run(self, frames: np.ndarray, state: Sequence[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
        predictions, new_state = self.stepper.run(frames, state)
        self.last = predictions
        return predictions, new_state


@dataclass
class ChunkResult:
    messages: list[Message]
    #: prediction made from each frame of the chunk (T, H, W) float32, or None
    predictions: np.ndarray | None
    #: frames fed after a reset because the model returned non-finite values
    reset: bool = False


def feed_chunk(
    engine: InferenceEngine,
    stepper: RecordingStepper,
    camera: str,
    frames: np.ndarray,
    seqs: Sequence[int],
    stamps: Floats,
    cues: np.ndarray | None = None,
) -> ChunkResult:
    """Feed one chunk (with the frames' motion cues, when the scorer uses them); on
    non-finite output reset and re-prime from the chunk's last frames.

    The re-prime mirrors the worker, which rebuilds the state from the frames in its ring.
    """
    result = engine.process(camera, frames, seqs, stamps, cues)
    if not result.non_finite:
        predictions = None if stepper.last is None else stepper.last[0, :, :, :, 0]
        return ChunkResult(result.messages, predictions)
    log.warning("%s: model output not finite at frames %d-%d; resetting its state",
                camera, seqs[0], seqs[-1])
    messages: list[Message] = []
    end = engine.reset(camera)
    if end is not None:
        messages.append(end)
    tail = max(0, len(frames) - engine.window)
    result = engine.process(camera, frames[tail:], seqs[tail:], stamps[tail:],
                            None if cues is None else cues[tail:])
    if result.non_finite:
        engine.reset(camera)
        return ChunkResult(messages, None, reset=True)
    messages.extend(result.messages)
    return ChunkResult(messages, None, reset=True)


def score_video(
    engine: InferenceEngine,
    stepper: RecordingStepper,
    camera: str,
    frames: np.ndarray,
    chunk: int = DEFAULT_CHUNK,
    cues: np.ndarray | None = None,
    terms: list[tuple[float, float]] | None = None,
) -> list[Score]:
    """Score all ``frames`` (T, H, W) uint8 of one video (with their motion cues, when the
    scorer uses them); one Score per scored frame. ``terms``: a list that gets each scored
    frame's two terms alone (:attr:`forecaster.detection.scorer.Scorer.terms_log`)."""
    engine.add_camera(camera).scorer.terms_log = terms
    scores: list[Score] = []
    stamps = np.zeros(len(frames))
    for start in range(0, len(frames), chunk):
        stop = min(start + chunk, len(frames))
        result = feed_chunk(engine, stepper, camera, frames[start:stop],
                            range(start, stop), stamps[start:stop],
                            None if cues is None else cues[start:stop])
        scores.extend(m for m in result.messages if isinstance(m, Score))
    return scores
