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
from forecaster.model.builders import arch_of, frame_size, frames_input, model_layers, unrolled
from forecaster.model.runners import Runner, WindowRunner

StepFn = Callable[..., Any]

log = logging.getLogger("forecaster.model")


class Stepper:
    """Runs a sequence model one chunk at a time, carrying its recurrent state.

    Two graphs share the model's weights: the *tick* graph (exactly one frame, the
    recurrent layers unrolled, no loop) that every tick of the daemon runs, and the *chunk*
    graph (any number of frames, one loop) for catch-up, re-priming and replay.

    On TensorFlow, by default (``jit=None``) the tick graph is compiled with XLA once per
    batch size into a concrete function that is called directly (no retracing checks on
    the per-tick path), and the chunk graph is one graph traced once for any batch and
    length. ``jit=True`` uses XLA for chunks too (compiled per shape), ``jit=False`` never.

    On JAX the tick is ``jax.jit``-compiled once per batch size, and a chunk runs as a loop
    of ticks, the state carried as JAX arrays between them: a chunk graph would be compiled
    for every new chunk length (about 1 s of CPU each, where a catch-up chunk can take any
    length), and on a CPU the loop costs no more per frame than the compiled chunk.
    ``jit=True`` compiles chunk graphs instead (per shape).
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
        self.tick_model = build_step_model(model, steps=1)
        self.jit = jit
        self._fn = _compile(self.step_model, self.height, self.width, jit=bool(jit))
        self._tensorflow = keras.config.backend() == "tensorflow"
        # TensorFlow: batch size -> compiled tick function; other backends: one function
        self._tick_fns: dict[int, StepFn] = {}
        self._tick_xla = jit is not False
        self._tick_any: StepFn | None = None
        if not self._tensorflow:
            self._tick_any = _compile(self.tick_model, self.height, self.width, jit=bool(jit))
        self._chunks_as_ticks = keras.config.backend() == "jax" and not jit

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
        if frames.ndim != 5 or frames.shape[2:] != (self.height, self.width, 1) or frames.shape[1] < 1:
            raise ModelError(
                f"stepper expects frames of shape (B, T>=1, {self.height}, {self.width}, 1), "
                f"got {frames.shape}"
            )
        if len(state) != len(self.state_shapes):
            raise ModelError(f"stepper expects {len(self.state_shapes)} state arrays, got {len(state)}")
        batch = frames.shape[0]
        state = [np.asarray(array, dtype=np.float32) for array in state]
        for array, shape in zip(state, self.state_shapes, strict=True):
            if array.shape[0] != batch or array.shape[1:] != shape:
                raise ModelError(
                    f"state shape {tuple(array.shape)} does not match {(batch, *shape)}"
                )
        if frames.shape[1] == 1:
            outputs = self._tick(batch)(frames, *state)
        elif self._chunks_as_ticks:
            return self._run_ticks(frames, state)
        else:
            outputs = self._fn(frames, *state)
        return np.asarray(outputs[0]), [np.asarray(s) for s in outputs[1:]]

    def _run_ticks(
        self, frames: np.ndarray, state: list[np.ndarray]
    ) -> tuple[np.ndarray, list[np.ndarray]]:
        """A chunk as a loop of one-frame ticks; the state stays on the device between them."""
        tick = self._tick(frames.shape[0])
        carried: list[Any] = list(state)
        predictions = []
        for t in range(frames.shape[1]):
            outputs = tick(frames[:, t : t + 1], *carried)
            predictions.append(outputs[0])
            carried = list(outputs[1:])
        return (
            np.concatenate([np.asarray(p) for p in predictions], axis=1),
            [np.asarray(s) for s in carried],
        )

    def _tick(self, batch: int) -> StepFn:
        """The compiled one-frame function for ``batch`` (built at the first call)."""
        if self._tick_any is not None:
            return self._tick_any
        fn = self._tick_fns.get(batch)
        if fn is None:
            fn = self._tick_fns[batch] = self._compile_tick(batch)
        return fn

    def _compile_tick(self, batch: int) -> StepFn:
        import tensorflow as tf

        tick_model = self.tick_model

        def call(frames: Any, *states: Any) -> Any:
            return tick_model([frames, *states], training=False)

        specs = [tf.TensorSpec((batch, 1, self.height, self.width, 1), tf.float32)]
        specs += [tf.TensorSpec((batch, *shape), tf.float32) for shape in self.state_shapes]
        if self._tick_xla:
            try:
                concrete = tf.function(call, jit_compile=True).get_concrete_function(*specs)
                concrete(*[tf.zeros(spec.shape) for spec in specs])  # compiles now
                return concrete
            except Exception as exc:  # XLA unavailable on this platform: plain graphs
                log.warning("XLA compilation failed, running without it: %s", exc)
                self._tick_xla = False
        return tf.function(call).get_concrete_function(*specs)


def build_step_model(model: keras.Model, steps: int | None = None) -> keras.Model:
    """The step model of a recurrent sequence model: [frames, *state] -> [predictions, *state].

    It calls the sequence model's own layer objects (shared weights). Frames (B, T, H, W, 1)
    with T open, or fixed to ``steps`` (the recurrent layers then unrolled: no loop in the
    graph); predictions (B, T, H, W, 1), at step t the prediction of frame t+1.
    """
    arch = arch_of(model)
    if arch.state_shapes is None:
        raise ModelError(f"{arch.name} is a clip model: it has no step model")
    height, width = frame_size(model)
    layers = model_layers(model)
    frames = frames_input(height, width, time=steps)
    states = [
        keras.Input(shape=shape, dtype="float32", name=f"state_{i}")
        for i, shape in enumerate(arch.state_shapes(layers, height, width))
    ]
    if steps is not None:
        layers = {name: unrolled(layer) for name, layer in layers.items()}
    graph = arch.step_graph or arch.graph
    predictions, new_states = graph(layers, frames, states)
    suffix = "step" if steps is None else f"step{steps}"
    return keras.Model([frames, *states], [predictions, *new_states], name=f"{model.name}_{suffix}")


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
