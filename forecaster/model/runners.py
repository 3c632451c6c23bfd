"""Runners: what the worker calls every tick, with one interface for every architecture.

A runner has ``initial_state(batch) -> state`` and ``run(frames, state) -> (predictions,
new_state)``: frames (B, T, H, W, 1) float32 in [0, 1], predictions of the same shape (at
step t the prediction of frame t+1), the state an opaque list of arrays. The worker never
looks inside the state, so the same engine runs a recurrent model one step per frame
(:class:`~forecaster.model.step.Stepper`, state = the ConvLSTM's (h, c)) and a clip model
on a window of frames every tick (:class:`WindowRunner`, state = the last frames).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import keras
import numpy as np

from forecaster.errors import ModelError
from forecaster.model import DEFAULT_WINDOW
from forecaster.model.builders import arch_of, frame_size, input_frames

log = logging.getLogger("forecaster.model")

#: windows per model call; a longer chunk (catch-up, replay) runs in several calls
MAX_WINDOWS_PER_CALL = 32


class Runner(Protocol):
    """The interface of :class:`~forecaster.model.step.Stepper` and :class:`WindowRunner`."""

    height: int
    width: int

    def initial_state(self, batch: int) -> list[np.ndarray]: ...

    def run(
        self, frames: np.ndarray, state: Sequence[np.ndarray]
    ) -> tuple[np.ndarray, list[np.ndarray]]: ...


def check_frames(frames: Any, height: int, width: int, who: str) -> np.ndarray:
    """``frames`` as float32 (B, T>=1, height, width, 1); ModelError naming the shape."""
    frames = np.asarray(frames, dtype=np.float32)
    if frames.ndim != 5 or frames.shape[2:] != (height, width, 1) or frames.shape[1] < 1:
        raise ModelError(
            f"{who} expects frames of shape (B, T>=1, {height}, {width}, 1), got {frames.shape}"
        )
    return frames


class WindowRunner:
    """Runs a model on the last ``window`` frames at every step.

    The state is the last ``window - 1`` frames (black at the start). ``run`` builds the T
    windows that end at each new frame and runs the model on all of them in one batched
    call (at most :data:`MAX_WINDOWS_PER_CALL` windows per call), so a catch-up chunk or a
    replay chunk costs one call. The worker scores a frame only once ``window`` real frames
    were fed, so the black frames of the initial state never reach a score.

    Works for clip models (``output="next"``: one frame out per window) and for recurrent
    models run without carried state (``output="sequence"``: the last step's prediction is
    kept), which is how ``bench`` compares the two ways of running a model.

    On TensorFlow the call is a compiled graph, traced once for any number of windows.
    ``jit=True`` compiles it with XLA (per shape, with a fallback when XLA is unavailable);
    the default (``jit=None`` or False) does not: on a 2-core x86 CPU, XLA made a 64x64
    tick 1.5x slower for seed-convlstm-pool and 40x slower for conv3d-vae.
    On JAX the call is ``jax.jit``-compiled per shape, so a call is padded with black
    windows to a power of two (outputs of the padding dropped): 6 shapes at most.
    """

    def __init__(
        self, model: keras.Model, *, window: int | None = None, jit: bool | None = None
    ) -> None:
        self.model = model
        self.arch = arch_of(model)
        self.height, self.width = frame_size(model)
        fixed = input_frames(model)
        if window is None:
            window = fixed or DEFAULT_WINDOW
        if fixed is not None and window != fixed:
            raise ModelError(f"{self.arch.name} model takes {fixed}-frame windows, not {window}")
        if window < 2:
            raise ModelError(f"window must be at least 2 frames, got {window}")
        self.window = window
        self.state_shapes = [(window - 1, self.height, self.width, 1)]
        self.jit = jit
        self._fn = _compile_window(model, window, self.height, self.width, jit=False)
        self._xla_fn: Callable[[Any], Any] | None = None
        self._xla_checked = False
        self._pad_calls = keras.config.backend() == "jax"
        if jit and keras.config.backend() == "tensorflow":
            self._xla_fn = _compile_window(model, window, self.height, self.width, jit=True)

    def initial_state(self, batch: int) -> list[np.ndarray]:
        """The state before any frame: ``window - 1`` black frames."""
        return [np.zeros((batch, *shape), dtype=np.float32) for shape in self.state_shapes]

    def run(
        self, frames: np.ndarray, state: Sequence[np.ndarray]
    ) -> tuple[np.ndarray, list[np.ndarray]]:
        """Feed ``frames`` (B, T, H, W, 1) after ``state``: the predictions (B, T, H, W, 1),
        at step t from the window ending at frame t, and the last ``window - 1`` frames."""
        frames = check_frames(frames, self.height, self.width, "window runner")
        if len(state) != 1:
            raise ModelError(f"window runner expects 1 state array, got {len(state)}")
        batch, steps = frames.shape[:2]
        past = np.asarray(state[0], dtype=np.float32)
        if past.shape != (batch, *self.state_shapes[0]):
            raise ModelError(
                f"state shape {past.shape} does not match {(batch, *self.state_shapes[0])}"
            )
        sequence = np.concatenate([past, frames], axis=1)  # (B, window - 1 + T, H, W, 1)
        index = np.arange(steps)[:, None] + np.arange(self.window)[None, :]
        windows = sequence[:, index].reshape(batch * steps, self.window, self.height, self.width, 1)
        outputs = [
            self._call(windows[start : start + MAX_WINDOWS_PER_CALL])
            for start in range(0, len(windows), MAX_WINDOWS_PER_CALL)
        ]
        predictions = np.concatenate(outputs, axis=0).reshape(
            batch, steps, self.height, self.width, 1
        )
        return predictions, [np.ascontiguousarray(sequence[:, -(self.window - 1) :])]

    def _call(self, windows: np.ndarray) -> np.ndarray:
        if self._pad_calls:
            count = len(windows)
            size = min(MAX_WINDOWS_PER_CALL, 1 << (count - 1).bit_length())
            if size > count:
                padding = np.zeros((size - count, *windows.shape[1:]), dtype=np.float32)
                windows = np.concatenate([windows, padding])
            return np.asarray(self._fn(windows))[:count]
        if self._xla_fn is not None:
            if self._xla_checked:
                return np.asarray(self._xla_fn(windows))
            try:
                outputs = self._xla_fn(windows)
            except Exception as exc:  # XLA unavailable on this platform: keep the plain graph
                log.warning("XLA compilation failed, running without it: %s", exc)
                self._xla_fn = None
            else:
                self._xla_checked = True
                return np.asarray(outputs)
        return np.asarray(self._fn(windows))


def _compile_window(
    model: keras.Model, window: int, height: int, width: int, *, jit: bool
) -> Callable[[Any], Any]:
    """windows (N, window, H, W, 1) -> the prediction after each window (N, H, W, 1)."""

    def last(outputs: Any) -> Any:
        return outputs[:, -1]

    backend = keras.config.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        def call(windows: Any) -> Any:
            return last(model(windows, training=False))

        if jit:
            return tf.function(call, jit_compile=True, reduce_retracing=True)
        signature = [tf.TensorSpec((None, window, height, width, 1), tf.float32)]
        return tf.function(call, input_signature=signature)
    if backend == "jax":
        import jax

        @jax.jit
        def jax_call(trainable: Any, non_trainable: Any, windows: Any) -> Any:
            outputs, _ = model.stateless_call(trainable, non_trainable, windows, training=False)
            return last(outputs)

        def call_with_weights(windows: Any) -> Any:
            trainable = [v.value for v in model.trainable_variables]
            non_trainable = [v.value for v in model.non_trainable_variables]
            return jax_call(trainable, non_trainable, windows)

        return call_with_weights

    def eager_call(windows: Any) -> Any:
        return last(model(windows, training=False))

    return eager_call
