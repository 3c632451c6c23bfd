"""The stateful one-step function: frames + carried recurrent state -> predictions + state.

``Stepper`` wires a second functional graph onto the layer objects of a recurrent sequence
model (built or loaded), with the ConvLSTM state as extra inputs and outputs, so it shares
the trained weights. Running a sequence through it in chunks of any length, carrying the
state, gives a prediction after every frame: what the sequence model gives on the whole
sequence at once (for ``output="next"`` archs such as ``seed-convlstm``: what it gives on
every prefix of the sequence).

``make_runner(model)`` is what the worker, replay and evaluation use: a ``Stepper`` for a
recurrent architecture, a :class:`~forecaster.model.runners.WindowRunner` (the last
``window`` frames as state, the model run on a whole window every tick) for a clip
architecture. Both have the same interface: ``initial_state(batch)`` and
``run(frames, state) -> (predictions, new_state)``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import keras
import numpy as np

from forecaster.errors import ModelError
from forecaster.model.builders import arch_of, frame_size, frames_input, model_layers
from forecaster.model.runners import Runner, WindowRunner

StepFn = Callable[..., Any]

log = logging.getLogger("forecaster.model")


class Stepper:
    """Runs a sequence model one chunk at a time, carrying its recurrent state.

    On TensorFlow, calls are compiled graph functions: by default (``jit=None``) the
    single-frame call of every tick is compiled with XLA (about twice as fast; compiled
    once per batch size), and longer chunks (catch-up, re-priming) run one graph traced
    once for any batch and length. ``jit=True`` uses XLA for every call (compiled per
    shape), ``jit=False`` never. On JAX every call is ``jax.jit``-compiled per shape.
    """

    def __init__(self, model: keras.Model, *, jit: bool | None = None) -> None:
        self.model = model
        self.arch = arch_of(model)
        if self.arch.state_shapes is None:
            raise ModelError(
                f"{self.arch.name} is a clip model (no one-step recurrence): run it with "
                f"make_runner(model), which runs it on a window of frames every tick"
            )
        self.height, self.width = frame_size(model)
        layers = model_layers(model)
        self.state_shapes = self.arch.state_shapes(layers, self.height, self.width)
        self.step_model = build_step_model(model)
        self.jit = jit
        self._fn = _compile(self.step_model, self.height, self.width, jit=bool(jit))
        self._single_fn: StepFn | None = None
        self._single_checked = False
        if jit is None and keras.config.backend() == "tensorflow":
            self._single_fn = _compile(self.step_model, self.height, self.width, jit=True)

    def initial_state(self, batch: int) -> list[np.ndarray]:
        """The state before any frame: zeros, one array per state tensor."""
        return [np.zeros((batch, *shape), dtype=np.float32) for shape in self.state_shapes]

    def run(
        self, frames: np.ndarray, state: Sequence[np.ndarray]
    ) -> tuple[np.ndarray, list[np.ndarray]]:
        """Feed ``frames`` (B, T, H, W, 1) float32 in [0, 1] after ``state``.

        Returns the predictions (B, T, H, W, 1) float32 — at step t the prediction of frame
        t+1 — and the state after the last frame.
        """
        frames = np.asarray(frames, dtype=np.float32)
        expected = (self.height, self.width, 1)
        if frames.ndim != 5 or frames.shape[2:] != expected or frames.shape[1] < 1:
            raise ModelError(
                f"stepper expects frames of shape (B, T>=1, {self.height}, {self.width}, 1), "
                f"got {frames.shape}"
            )
        if len(state) != len(self.state_shapes):
            raise ModelError(f"stepper expects {len(self.state_shapes)} state arrays, got {len(state)}")
        batch = frames.shape[0]
        state = [np.asarray(array, dtype=np.float32) for array in state]
        for array, shape in zip(state, self.state_shapes, strict=True):
            if tuple(array.shape) != (batch, *shape):
                raise ModelError(
                    f"state shape {tuple(array.shape)} does not match {(batch, *shape)}"
                )
        outputs = self._call(frames, state)
        return np.asarray(outputs[0]), [np.asarray(s) for s in outputs[1:]]

    def _call(self, frames: np.ndarray, state: Sequence[np.ndarray]) -> Any:
        if self._single_fn is None or frames.shape[1] != 1:
            return self._fn(frames, *state)
        if self._single_checked:
            return self._single_fn(frames, *state)
        try:
            outputs = self._single_fn(frames, *state)
        except Exception as exc:  # XLA unavailable on this platform: keep the plain graph
            log.warning("XLA compilation failed, running without it: %s", exc)
            self._single_fn = None
            return self._fn(frames, *state)
        self._single_checked = True
        return outputs


def build_step_model(model: keras.Model) -> keras.Model:
    """The step model of a recurrent sequence model: [frames, *state] -> [predictions, *state].

    It calls the sequence model's own layer objects (shared weights). Frames (B, T, H, W, 1)
    with T open; predictions (B, T, H, W, 1), at step t the prediction of frame t+1.
    """
    arch = arch_of(model)
    if arch.state_shapes is None:
        raise ModelError(f"{arch.name} is a clip model: it has no step model")
    height, width = frame_size(model)
    layers = model_layers(model)
    frames = frames_input(height, width)
    states = [
        keras.Input(shape=shape, dtype="float32", name=f"state_{i}")
        for i, shape in enumerate(arch.state_shapes(layers, height, width))
    ]
    graph = arch.step_graph or arch.graph
    predictions, new_states = graph(layers, frames, states)
    return keras.Model([frames, *states], [predictions, *new_states], name=f"{model.name}_step")


def make_runner(
    model: keras.Model, *, window: int | None = None, jit: bool | None = None
) -> Runner:
    """The runner the daemon uses for ``model``: a :class:`Stepper` for a recurrent
    architecture, a :class:`WindowRunner` for a clip architecture.

    ``window``: run even a recurrent model on a window of that many frames every tick (no
    carried state), as the original Keras answers predict; for comparisons (``bench``).
    """
    arch = arch_of(model)
    if arch.state_shapes is not None and window is None:
        return Stepper(model, jit=jit)
    return WindowRunner(model, window=window, jit=jit)


def _compile(step_model: keras.Model, height: int, width: int, *, jit: bool) -> StepFn:
    backend = keras.config.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        def call(frames: Any, *states: Any) -> Any:
            return step_model([frames, *states], training=False)

        if jit:
            return tf.function(call, jit_compile=True, reduce_retracing=True)
        signature = [tf.TensorSpec((None, None, height, width, 1), tf.float32)]
        signature += [
            tf.TensorSpec((None, *s.shape[1:]), tf.float32) for s in step_model.inputs[1:]
        ]
        return tf.function(call, input_signature=signature)
    if backend == "jax":
        import jax

        @jax.jit
        def jax_call(trainable: Any, non_trainable: Any, frames: Any, *states: Any) -> Any:
            outputs, _ = step_model.stateless_call(
                trainable, non_trainable, [frames, *states], training=False
            )
            return outputs

        def call_with_weights(frames: Any, *states: Any) -> Any:
            trainable = [v.value for v in step_model.trainable_variables]
            non_trainable = [v.value for v in step_model.non_trainable_variables]
            return jax_call(trainable, non_trainable, frames, *states)

        return call_with_weights

    def eager_call(frames: Any, *states: Any) -> Any:
        return step_model([frames, *states], training=False)

    return eager_call
