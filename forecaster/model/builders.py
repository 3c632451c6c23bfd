"""Pure model builders. The time dimension is left open (``None``).

Every architecture is a graph function ``(layers, frames, initial_state) -> (predictions,
state)`` applied to a dict of named layers. The sequence model (the one trained and saved)
calls it with a zero initial state; the stepper calls the very same layer objects with the
carried state as extra inputs, so both share one set of weights.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import keras

from forecaster.errors import ModelError

LayerDict = dict[str, keras.layers.Layer]
GraphFn = Callable[[LayerDict, Any, "list[Any] | None"], "tuple[Any, list[Any]]"]


@dataclass(frozen=True)
class Arch:
    """One architecture: how to make its layers, how to wire them, and its state shape."""

    name: str
    model_name: str  # keras.Model name; identifies the architecture of a loaded model
    make_layers: Callable[[int, int], LayerDict]
    graph: GraphFn
    state_shapes: Callable[[LayerDict, int, int], list[tuple[int, ...]]]  # per-sample shapes


def check_size(height: int, width: int) -> None:
    """Raise ModelError unless ``height`` x ``width`` suits the encoder (divisible by 4)."""
    if height < 16 or width < 16 or height % 4 or width % 4:
        raise ModelError(f"frame size must be at least 16x16 and divisible by 4, got {height}x{width}")


@keras.saving.register_keras_serializable(package="forecaster")
class PerFrame(keras.layers.Wrapper):
    """Apply a per-image layer to every frame of a (batch, time, ...) tensor.

    Folds time into the batch axis, so one convolution runs over all frames at once
    (``keras.layers.TimeDistributed`` loops over time steps instead).
    """

    def build(self, input_shape: tuple[int | None, ...]) -> None:
        super().build((None, *input_shape[2:]))

    def compute_output_shape(self, input_shape: tuple[int | None, ...]) -> tuple[int | None, ...]:
        child = self.layer.compute_output_shape((None, *input_shape[2:]))
        return (input_shape[0], input_shape[1], *child[1:])

    def call(self, inputs: Any) -> Any:
        batch_time = keras.ops.shape(inputs)[:2]
        folded = keras.ops.reshape(inputs, (-1, *inputs.shape[2:]))
        outputs = self.layer(folded)
        return keras.ops.reshape(outputs, (*batch_time, *outputs.shape[1:]))


@keras.saving.register_keras_serializable(package="forecaster")
class ShiftFrames(keras.layers.Layer):
    """The previous frame at every step: (frames, previous) -> (shifted frames, last frame).

    ``shifted[:, t]`` is ``frames[:, t - 1]``, and ``previous`` (the last frame of the
    preceding chunk; black when absent) at t = 0. The last frame is the state for the next
    chunk, so a sequence split into chunks gives the same shifted frames.
    """

    def call(self, frames: Any, previous: Any = None) -> tuple[Any, Any]:
        if previous is None:
            previous = keras.ops.zeros_like(frames[:, 0])
        shifted = keras.ops.concatenate(
            [keras.ops.expand_dims(previous, 1), frames[:, :-1]], axis=1
        )
        return shifted, frames[:, -1]


# --- convlstm-ae ---------------------------------------------------------------------------

CONVLSTM_FILTERS = 32


def _convlstm_ae_layers(height: int, width: int) -> LayerDict:
    del height, width  # fully convolutional: no layer depends on the frame size
    td = PerFrame
    conv = keras.layers.Conv2D
    deconv = keras.layers.Conv2DTranspose
    return {
        "shift": ShiftFrames(name="shift"),
        "motion": keras.layers.Subtract(name="motion"),
        "inputs": keras.layers.Concatenate(axis=-1, name="inputs"),
        "enc1": td(conv(16, 5, strides=2, padding="same", activation="relu"), name="enc1"),
        "enc2": td(conv(32, 3, strides=2, padding="same", activation="relu"), name="enc2"),
        "convlstm": keras.layers.ConvLSTM2D(
            CONVLSTM_FILTERS,
            3,
            padding="same",
            return_sequences=True,
            return_state=True,
            name="convlstm",
        ),
        "dec1": td(deconv(32, 3, strides=2, padding="same", activation="relu"), name="dec1"),
        "skip1": keras.layers.Concatenate(axis=-1, name="skip1"),
        "dec2": td(deconv(16, 3, strides=2, padding="same", activation="relu"), name="dec2"),
        "skip0": keras.layers.Concatenate(axis=-1, name="skip0"),
        "refine": td(conv(16, 3, padding="same", activation="relu"), name="refine"),
        # zero-initialised: an untrained model predicts "the next frame equals this one"
        "delta": td(conv(1, 3, padding="same", kernel_initializer="zeros"), name="delta"),
        "residual": keras.layers.Add(name="residual"),
        "clip": keras.layers.ReLU(max_value=1.0, name="clip"),
    }


def _convlstm_ae_graph(
    layers: LayerDict, frames: Any, initial_state: list[Any] | None
) -> tuple[Any, list[Any]]:
    # state: ConvLSTM (h, c) and the last frame seen (for the frame difference)
    if initial_state is None:
        previous, last = layers["shift"](frames)
    else:
        previous, last = layers["shift"](frames, previous=initial_state[2])
    motion = layers["motion"]([frames, previous])  # frame t - frame t-1
    x = layers["inputs"]([frames, motion])  # (B, T, H, W, 2)
    e1 = layers["enc1"](x)  # (B, T, H/2, W/2, 16)
    e2 = layers["enc2"](e1)  # (B, T, H/4, W/4, 32)
    if initial_state is None:
        m, h, c = layers["convlstm"](e2)
    else:
        m, h, c = layers["convlstm"](e2, initial_state=initial_state[:2])
    d1 = layers["skip1"]([layers["dec1"](m), e1])  # (B, T, H/2, W/2, 48)
    d2 = layers["skip0"]([layers["dec2"](d1), x])  # (B, T, H, W, 18)
    delta = layers["delta"](layers["refine"](d2))
    predictions = layers["clip"](layers["residual"]([frames, delta]))
    return predictions, [h, c, last]


def _convlstm_ae_state_shapes(layers: LayerDict, height: int, width: int) -> list[tuple[int, ...]]:
    filters = int(layers["convlstm"].filters)
    hidden = (height // 4, width // 4, filters)
    return [hidden, hidden, (height, width, 1)]


SPECS: dict[str, Arch] = {
    "convlstm-ae": Arch(
        name="convlstm-ae",
        model_name="convlstm_ae",
        make_layers=_convlstm_ae_layers,
        graph=_convlstm_ae_graph,
        state_shapes=_convlstm_ae_state_shapes,
    ),
}


def frames_input(height: int, width: int, name: str = "frames") -> Any:
    """A ``(batch, None, height, width, 1)`` float32 input."""
    return keras.Input(shape=(None, height, width, 1), dtype="float32", name=name)


def build_model(arch: str, height: int, width: int) -> keras.Model:
    """Build the sequence model of ``arch`` for ``height`` x ``width`` gray frames.

    Input (batch, time, H, W, 1) float32 in [0, 1]; output the same shape: at each step t
    the prediction of frame t+1.
    """
    spec = get_spec(arch)
    check_size(height, width)
    frames = frames_input(height, width)
    predictions, _ = spec.graph(spec.make_layers(height, width), frames, None)
    return keras.Model(frames, predictions, name=spec.model_name)


def build_convlstm_ae(height: int, width: int) -> keras.Model:
    """The default architecture (about 98k parameters).

    Input per step: the frame and its difference to the previous frame. A strided conv
    encoder down to H/4 x W/4, one ConvLSTM2D there, a transposed-conv decoder with skips
    from the H/2 features and the inputs, and a residual output: clip(frame + delta, 0, 1).
    """
    return build_model("convlstm-ae", height, width)


ARCHS: dict[str, Callable[[int, int], keras.Model]] = {"convlstm-ae": build_convlstm_ae}


def get_spec(arch: str) -> Arch:
    """The architecture named ``arch``; ModelError listing the known ones otherwise."""
    try:
        return SPECS[arch]
    except KeyError:
        known = ", ".join(sorted(SPECS))
        raise ModelError(f"unknown model architecture {arch!r} (known: {known})") from None


def arch_of(model: keras.Model) -> Arch:
    """The architecture a built or loaded sequence model was made with."""
    for spec in SPECS.values():
        if model.name == spec.model_name:
            return spec
    raise ModelError(f"model {model.name!r} is not a known forecaster architecture")


def model_layers(model: keras.Model) -> LayerDict:
    """The named layers of a sequence model, for wiring a second graph onto its weights."""
    return {layer.name: layer for layer in model.layers}


def frame_size(model: keras.Model) -> tuple[int, int]:
    """(height, width) of the frames a sequence model takes."""
    shape = tuple(model.inputs[0].shape)
    if len(shape) != 5 or shape[2] is None or shape[3] is None or shape[4] != 1:
        raise ModelError(f"model input must be (batch, time, H, W, 1), got {shape}")
    return int(shape[2]), int(shape[3])
