"""Pure model builders.

Every architecture is a graph function ``(layers, frames, initial_state) -> (predictions,
state)`` applied to a dict of named layers. The sequence model (the one trained and saved)
calls it with no initial state; a recurrent architecture's stepper calls the very same
layer objects (through its ``step_graph``, by default the same function) with the carried
state as extra inputs, so both share one set of weights.

Two kinds of architecture:

- **recurrent** (``convlstm-ae``, ``seed-convlstm``): the state after a frame is all the
  model needs from the past, so the daemon runs one step per frame, carrying it
  (:class:`~forecaster.model.step.Stepper`). Their time dimension is left open.
- **clip** (``seed-convlstm-pool``, ``convlstm-vae``, ``conv3d-vae``): the model maps a clip of
  ``window`` frames to the next frame and is no one-step recurrence (an average over the
  window, a dense bottleneck over the clip), so the daemon runs it on the last ``window``
  frames every tick (:class:`~forecaster.model.runners.WindowRunner`). Their time
  dimension is fixed to ``window``.

Outputs are either a prediction at every step (``output="sequence"``: (B, T, H, W, 1), at
step t the prediction of frame t+1) or one prediction of the frame after the input
(``output="next"``: (B, 1, H, W, 1)).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any, Literal

import keras

from forecaster.errors import ModelError
from forecaster.model import DEFAULT_LOSS, DEFAULT_WINDOW, frame_size_fits

LayerDict = dict[str, keras.layers.Layer]
GraphFn = Callable[[LayerDict, Any, "list[Any] | None"], "tuple[Any, list[Any]]"]
StateShapesFn = Callable[[LayerDict, int, int], list[tuple[int, ...]]]

@dataclass(frozen=True)
class Arch:
    """One architecture: how to make its layers, how to wire them, and its state shape."""

    name: str
    make_layers: Callable[[int, int, int], LayerDict]  # (height, width, window)
    graph: GraphFn  # the sequence model: called with initial_state None
    #: per-sample state shapes of a recurrent arch; None for a clip arch
    state_shapes: StateShapesFn | None
    output: Literal["sequence", "next"] = "sequence"
    #: graph of the stepper (state in and out, a prediction at every step); default: graph
    step_graph: GraphFn | None = None
    #: the sequence model takes exactly ``window`` frames (else any number)
    fixed_time: bool = False
    default_loss: str = DEFAULT_LOSS
    #: the pixel loss is multiplied by H x W (the VAE loss: reconstruction x H x W + KL)
    loss_per_pixel_sum: bool = False
    summary: str = ""

    @property
    def model_name(self) -> str:
        """The keras.Model name; identifies the architecture of a loaded model."""
        return self.name.replace("-", "_")

    @property
    def kind(self) -> Literal["recurrent", "clip"]:
        """``recurrent``: a state carried from frame to frame (a stepper); ``clip``: run on
        the window of the last frames every tick."""
        return "clip" if self.state_shapes is None else "recurrent"

    @property
    def recurrent(self) -> bool:
        return self.state_shapes is not None


def check_size(height: int, width: int) -> None:
    """Raise ModelError unless ``height`` x ``width`` suits the encoder (divisible by 4)."""
    if not frame_size_fits(height, width):
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


@keras.saving.register_keras_serializable(package="forecaster")
class Sampling(keras.layers.Layer):
    """The VAE's latent sample: (z_mean, z_log_var) -> z, and its KL divergence as a loss.

    In training, ``z = z_mean + exp(z_log_var / 2) * eps`` with ``eps ~ N(0, 1)``; at
    inference ``z = z_mean``, so a model's predictions (and the daemon's scores) are
    reproducible. Every call adds ``kl_weight * mean over the batch of
    KL(N(z_mean, exp(z_log_var)) || N(0, 1))`` (summed over the latent axis) with
    ``add_loss``, so ``model.fit`` minimises reconstruction + KL and ``val_loss``
    includes the KL term too.
    """

    def __init__(self, kl_weight: float = 1.0, seed: int | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.kl_weight = float(kl_weight)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, z_mean: Any, z_log_var: Any, training: bool | None = None) -> Any:
        ops = keras.ops
        kl = -0.5 * ops.sum(1.0 + z_log_var - ops.square(z_mean) - ops.exp(z_log_var), axis=-1)
        self.add_loss(self.kl_weight * ops.mean(kl))
        if not training:
            return z_mean
        eps = keras.random.normal(ops.shape(z_mean), seed=self.seed_generator)
        return z_mean + ops.exp(0.5 * z_log_var) * eps

    def compute_output_shape(
        self, z_mean_shape: tuple[int | None, ...], z_log_var_shape: tuple[int | None, ...]
    ) -> tuple[int | None, ...]:
        return z_mean_shape

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "kl_weight": self.kl_weight, "seed": self.seed}


def with_sequences(layer: keras.layers.Layer) -> keras.layers.Layer:
    """A twin of a ConvLSTM2D layer that shares its cell (its weights) but returns every
    step's output and the final state, whatever ``return_sequences``/``return_state`` the
    original was built with. Used by step graphs; never saved."""
    config = {
        **layer.get_config(),
        "return_sequences": True,
        "return_state": True,
        "name": f"{layer.name}_steps",
    }
    twin = type(layer).from_config(config)
    twin.cell = layer.cell
    twin.unroll = layer.unroll
    return twin


def unrolled(layer: keras.layers.Layer) -> keras.layers.Layer:
    """``layer`` itself, or for a recurrent layer a twin sharing its cell (its weights) that
    unrolls its time loop (inputs of a fixed, short length: no loop in the graph)."""
    if not isinstance(layer, keras.layers.RNN):
        return layer
    twin = type(layer).from_config({**layer.get_config(), "name": f"{layer.name}_unrolled"})
    twin.cell = layer.cell
    twin.unroll = True
    return twin


def _per_frame(layer: keras.layers.Layer, x: Any, name: str) -> Any:
    """Apply an already built per-image layer to every frame of ``x`` (same weights)."""
    return PerFrame(layer, name=name)(x)


# --- convlstm-ae ---------------------------------------------------------------------------
# The default architecture (about 98k parameters). Input per step: the frame and its
# difference to the previous frame. A strided conv encoder down to H/4 x W/4, one ConvLSTM2D
# there, a transposed-conv decoder with skips from the H/2 features and the inputs, and a
# residual output: clip(frame + delta, 0, 1).

CONVLSTM_FILTERS = 32


def _convlstm_ae_layers(height: int, width: int, window: int) -> LayerDict:
    del height, width, window  # fully convolutional: no layer depends on the frame size
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


# --- seed-convlstm, seed-convlstm-pool: the stack of the first question ----------------------

SEED_FILTERS = 40
SEED_DEPTH = 4


def _seed_stack(last_returns_sequences: bool) -> LayerDict:
    """4 x (ConvLSTM2D(40, 3x3, padding same) + BatchNormalization), as in the question."""
    layers: LayerDict = {}
    for i in range(1, SEED_DEPTH + 1):
        layers[f"convlstm{i}"] = keras.layers.ConvLSTM2D(
            SEED_FILTERS,
            (3, 3),
            padding="same",
            return_sequences=i < SEED_DEPTH or last_returns_sequences,
            name=f"convlstm{i}",
        )
        layers[f"bn{i}"] = keras.layers.BatchNormalization(name=f"bn{i}")
    return layers


def _seed_convlstm_layers(height: int, width: int, window: int) -> LayerDict:
    del window
    layers = _seed_stack(last_returns_sequences=False)
    # remedy (b): the last ConvLSTM2D returns its last output only; a Conv2D head
    layers["head"] = keras.layers.Conv2D(
        1, (3, 3), activation="sigmoid", padding="same", name="head"
    )
    layers["next"] = keras.layers.Reshape((1, height, width, 1), name="next")
    return layers


def _seed_convlstm_graph(
    layers: LayerDict, frames: Any, initial_state: list[Any] | None
) -> tuple[Any, list[Any]]:
    if initial_state is not None:
        return _seed_convlstm_step_graph(layers, frames, initial_state)
    x = frames
    for i in range(1, SEED_DEPTH + 1):
        x = layers[f"bn{i}"](layers[f"convlstm{i}"](x))  # last: (B, H, W, 40)
    return layers["next"](layers["head"](x)), []  # (B, 1, H, W, 1)


def _seed_convlstm_step_graph(
    layers: LayerDict, frames: Any, initial_state: list[Any] | None
) -> tuple[Any, list[Any]]:
    """The same cells with return_sequences semantics: a prediction after every frame.

    The last layer's BatchNormalization and head run per frame; at the last step this is
    exactly the sequence model's output.
    """
    x = frames
    states: list[Any] = []
    for i in range(1, SEED_DEPTH + 1):
        cell = with_sequences(layers[f"convlstm{i}"])
        if initial_state is None:
            x, h, c = cell(x)
        else:
            x, h, c = cell(x, initial_state=initial_state[2 * i - 2 : 2 * i])
        states += [h, c]
        if i < SEED_DEPTH:
            x = layers[f"bn{i}"](x)  # built on (B, T, H, W, 40), as in the sequence model
    x = _per_frame(layers[f"bn{SEED_DEPTH}"], x, name=f"bn{SEED_DEPTH}_frames")
    return _per_frame(layers["head"], x, name="head_frames"), states


def _seed_state_shapes(layers: LayerDict, height: int, width: int) -> list[tuple[int, ...]]:
    shapes: list[tuple[int, ...]] = []
    for i in range(1, SEED_DEPTH + 1):
        hidden = (height, width, int(layers[f"convlstm{i}"].filters))
        shapes += [hidden, hidden]
    return shapes


def _seed_convlstm_pool_layers(height: int, width: int, window: int) -> LayerDict:
    del height, width
    layers = _seed_stack(last_returns_sequences=True)
    # remedy (a): the question's Conv3D head on the sequence, averaged over the window
    layers["head"] = keras.layers.Conv3D(
        1, (3, 3, 3), activation="sigmoid", padding="same", name="head"
    )
    layers["pool"] = keras.layers.AveragePooling3D(pool_size=(window, 1, 1), name="pool")
    return layers


def _seed_convlstm_pool_graph(
    layers: LayerDict, frames: Any, initial_state: list[Any] | None
) -> tuple[Any, list[Any]]:
    del initial_state  # a clip model
    x = frames
    for i in range(1, SEED_DEPTH + 1):
        x = layers[f"bn{i}"](layers[f"convlstm{i}"](x))  # (B, window, H, W, 40)
    return layers["pool"](layers["head"](x)), []  # (B, 1, H, W, 1)


# --- convlstm-vae, conv3d-vae: the variational autoencoder of the second question ------------

LATENT_DIM = 6
VAE_HIDDEN = 16
VAE_FILTERS = (32, 64)


def _vae_head_layers(height: int, width: int, channels: int) -> LayerDict:
    """Dense(16) -> z_mean, z_log_var (latent 6) -> sampling -> Dense -> reshape input."""
    return {
        "flatten": keras.layers.Flatten(name="flatten"),
        "hidden": keras.layers.Dense(VAE_HIDDEN, activation="relu", name="hidden"),
        "z_mean": keras.layers.Dense(LATENT_DIM, name="z_mean"),
        "z_log_var": keras.layers.Dense(LATENT_DIM, name="z_log_var"),
        "sampling": Sampling(name="sampling"),
        "dec_dense": keras.layers.Dense(
            (height // 4) * (width // 4) * channels, activation="relu", name="dec_dense"
        ),
    }


def _vae_latent(layers: LayerDict, features: Any) -> Any:
    hidden = layers["hidden"](layers["flatten"](features))
    z_mean = layers["z_mean"](hidden)
    z_log_var = layers["z_log_var"](hidden)
    return layers["dec_dense"](layers["sampling"](z_mean, z_log_var))


def _convlstm_vae_layers(height: int, width: int, window: int) -> LayerDict:
    del window
    f1, f2 = VAE_FILTERS
    layers: LayerDict = {
        "enc1": keras.layers.ConvLSTM2D(
            f1, 3, strides=2, padding="same", return_sequences=True, name="enc1"
        ),
        "enc2": keras.layers.ConvLSTM2D(
            f2, 3, strides=2, padding="same", return_sequences=False, name="enc2"
        ),
    }
    layers.update(_vae_head_layers(height, width, f2))
    layers.update(
        {
            "dec_reshape": keras.layers.Reshape((height // 4, width // 4, f2), name="dec_reshape"),
            "dec1": keras.layers.Conv2DTranspose(
                f2, 3, strides=2, padding="same", activation="relu", name="dec1"
            ),
            "dec2": keras.layers.Conv2DTranspose(
                f1, 3, strides=2, padding="same", activation="relu", name="dec2"
            ),
            "dec_out": keras.layers.Conv2DTranspose(
                1, 3, padding="same", activation="sigmoid", name="dec_out"
            ),
            "next": keras.layers.Reshape((1, height, width, 1), name="next"),
        }
    )
    return layers


def _convlstm_vae_graph(
    layers: LayerDict, frames: Any, initial_state: list[Any] | None
) -> tuple[Any, list[Any]]:
    del initial_state
    features = layers["enc2"](layers["enc1"](frames))  # (B, H/4, W/4, 64)
    x = layers["dec_reshape"](_vae_latent(layers, features))
    x = layers["dec_out"](layers["dec2"](layers["dec1"](x)))  # (B, H, W, 1)
    return layers["next"](x), []


def _conv3d_vae_layers(height: int, width: int, window: int) -> LayerDict:
    del window
    f1, f2 = VAE_FILTERS
    layers: LayerDict = {
        "enc1": keras.layers.Conv3D(
            f1, 3, strides=2, padding="same", activation="relu", name="enc1"
        ),
        "enc2": keras.layers.Conv3D(
            f2, 3, strides=2, padding="same", activation="relu", name="enc2"
        ),
    }
    layers.update(_vae_head_layers(height, width, f2))
    up = (1, 2, 2)  # the decoded clip is one frame: upsample space only
    layers.update(
        {
            "dec_reshape": keras.layers.Reshape(
                (1, height // 4, width // 4, f2), name="dec_reshape"
            ),
            "dec1": keras.layers.Conv3DTranspose(
                f2, 3, strides=up, padding="same", activation="relu", name="dec1"
            ),
            "dec2": keras.layers.Conv3DTranspose(
                f1, 3, strides=up, padding="same", activation="relu", name="dec2"
            ),
            "dec_out": keras.layers.Conv3DTranspose(
                1, 3, padding="same", activation="sigmoid", name="dec_out"
            ),
        }
    )
    return layers


def _conv3d_vae_graph(
    layers: LayerDict, frames: Any, initial_state: list[Any] | None
) -> tuple[Any, list[Any]]:
    del initial_state
    features = layers["enc2"](layers["enc1"](frames))  # (B, window/4, H/4, W/4, 64)
    x = layers["dec_reshape"](_vae_latent(layers, features))  # (B, 1, H/4, W/4, 64)
    return layers["dec_out"](layers["dec2"](layers["dec1"](x))), []  # (B, 1, H, W, 1)


SPECS: dict[str, Arch] = {
    "convlstm-ae": Arch(
        name="convlstm-ae",
        make_layers=_convlstm_ae_layers,
        graph=_convlstm_ae_graph,
        state_shapes=_convlstm_ae_state_shapes,
        summary="frame + frame difference -> strided conv encoder -> ConvLSTM2D(32) at H/4 "
        "-> transposed-conv decoder with skips -> clip(frame + delta); a prediction per step",
    ),
    "seed-convlstm": Arch(
        name="seed-convlstm",
        make_layers=_seed_convlstm_layers,
        graph=_seed_convlstm_graph,
        state_shapes=_seed_state_shapes,
        step_graph=_seed_convlstm_step_graph,
        output="next",
        summary="4 x (ConvLSTM2D(40, 3x3) + BatchNormalization), the last returning its last "
        "output only, Conv2D(1, 3x3, sigmoid) head: T frames -> the next frame",
    ),
    "seed-convlstm-pool": Arch(
        name="seed-convlstm-pool",
        make_layers=_seed_convlstm_pool_layers,
        graph=_seed_convlstm_pool_graph,
        state_shapes=None,
        output="next",
        fixed_time=True,
        summary="4 x (ConvLSTM2D(40, 3x3) + BatchNormalization) on the sequence, "
        "Conv3D(1, 3x3x3, sigmoid), AveragePooling3D((window, 1, 1)): window -> next frame",
    ),
    "convlstm-vae": Arch(
        name="convlstm-vae",
        make_layers=_convlstm_vae_layers,
        graph=_convlstm_vae_graph,
        state_shapes=None,
        output="next",
        fixed_time=True,
        loss_per_pixel_sum=True,
        summary="ConvLSTM2D(32, s2) -> ConvLSTM2D(64, s2) -> Dense(16) -> z (6) -> Dense -> "
        "Conv2DTranspose x 3: window -> next frame; loss pixel x H x W + KL",
    ),
    "conv3d-vae": Arch(
        name="conv3d-vae",
        make_layers=_conv3d_vae_layers,
        graph=_conv3d_vae_graph,
        state_shapes=None,
        output="next",
        fixed_time=True,
        loss_per_pixel_sum=True,
        summary="Conv3D(32, s2) -> Conv3D(64, s2) -> Dense(16) -> z (6) -> Dense -> "
        "Conv3DTranspose x 3: window -> next frame; loss pixel x H x W + KL",
    ),
}


def frames_input(
    height: int, width: int, name: str = "frames", time: int | None = None
) -> Any:
    """A ``(batch, time, height, width, 1)`` float32 input (``time`` None: any length)."""
    return keras.Input(shape=(time, height, width, 1), dtype="float32", name=name)


def build_model(arch: str, height: int, width: int, window: int = DEFAULT_WINDOW) -> keras.Model:
    """Build the sequence model of ``arch`` for ``height`` x ``width`` gray frames.

    Input (batch, time, H, W, 1) float32 in [0, 1] (time = ``window`` for clip archs, else
    any). Output (batch, time, H, W, 1), at each step t the prediction of frame t+1, for
    ``output="sequence"`` archs; (batch, 1, H, W, 1), the frame after the input, for
    ``output="next"`` archs.
    """
    spec = get_spec(arch)
    check_size(height, width)
    if window < 2:
        raise ModelError(f"window must be at least 2 frames, got {window}")
    frames = frames_input(height, width, time=window if spec.fixed_time else None)
    predictions, _ = spec.graph(spec.make_layers(height, width, window), frames, None)
    return keras.Model(frames, predictions, name=spec.model_name)


ARCHS: dict[str, Callable[[int, int], keras.Model]] = {
    name: partial(build_model, name) for name in SPECS
}


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


def check_layers(model: keras.Model, arch: Arch, window: int = DEFAULT_WINDOW) -> None:
    """ModelError unless ``model`` has every layer its architecture's graphs call (a model
    saved by another version of the architecture may lack some)."""
    height, width = frame_size(model)
    expected = set(arch.make_layers(height, width, window))
    missing = sorted(expected - {layer.name for layer in model.layers})
    if missing:
        raise ModelError(
            f"{arch.name} model lacks the layer(s) {', '.join(missing)} of this version's "
            f"{arch.name}: it was made by another version; train it again"
        )


def model_layers(model: keras.Model) -> LayerDict:
    """The named layers of a sequence model, for wiring a second graph onto its weights."""
    return {layer.name: layer for layer in model.layers}


def frame_size(model: keras.Model) -> tuple[int, int]:
    """(height, width) of the frames a sequence model takes."""
    shape = tuple(model.inputs[0].shape)
    if len(shape) != 5 or shape[2] is None or shape[3] is None or shape[4] != 1:
        raise ModelError(f"model input must be (batch, time, H, W, 1), got {shape}")
    return int(shape[2]), int(shape[3])


def input_frames(model: keras.Model) -> int | None:
    """The number of frames a sequence model takes (None: any number)."""
    steps = model.inputs[0].shape[1]
    return None if steps is None else int(steps)
