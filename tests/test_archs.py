"""Every architecture: shapes, parameter counts, runners equal to the sequence model,
training, saving and loading with safe_mode=True."""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
import pytest

from forecaster.errors import ModelError
from forecaster.model.artifact import load_model
from forecaster.model.builders import SPECS, arch_of, build_model, get_spec
from forecaster.model.runners import WindowRunner
from forecaster.model.step import Stepper, make_runner

pytestmark = pytest.mark.filterwarnings(
    "ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning"
)

ALL = sorted(SPECS)
RECURRENT = sorted(name for name, spec in SPECS.items() if spec.recurrent)
CLIP = sorted(name for name, spec in SPECS.items() if not spec.recurrent)


def _frames(batch: int, steps: int, height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((batch, steps, height, width, 1), dtype=np.float32)


def _model(arch: str, height: int = 32, width: int = 32, seed: int = 1) -> keras.Model:
    """An untrained model whose output depends on its inputs' past (and state)."""
    keras.utils.set_random_seed(seed)
    model = build_model(arch, height, width)
    rng = np.random.default_rng(seed)
    if arch == "convlstm-ae":  # its delta layer starts at zero: the output would copy the frame
        delta = model.get_layer("delta")
        kernel, bias = delta.get_weights()
        delta.set_weights([rng.normal(0, 0.2, kernel.shape).astype(np.float32), bias])
    elif arch.startswith("seed-"):  # a near-constant sigmoid output at init: sharpen the head
        head = model.get_layer("head")
        kernel, bias = head.get_weights()
        head.set_weights([kernel * 10.0, bias])
    else:  # VAEs: a dense bottleneck that barely varies at init
        for name in ("hidden", "z_mean", "dec_dense"):
            layer = model.get_layer(name)
            kernel, bias = layer.get_weights()
            spread = 3.0 / np.sqrt(kernel.shape[0])
            layer.set_weights([rng.normal(0, spread, kernel.shape).astype(np.float32), bias])
    return model


def _reference(model: keras.Model, frames: np.ndarray, window: int = 10) -> np.ndarray:
    """What a runner must return: the model's prediction after every frame of ``frames``."""
    spec = arch_of(model)
    steps = frames.shape[1]
    if spec.name == "convlstm-ae":
        return np.asarray(model(frames))
    if spec.name == "seed-convlstm":  # one frame out per call: run every prefix
        return np.concatenate([np.asarray(model(frames[:, : t + 1])) for t in range(steps)], 1)
    padded = np.concatenate([np.zeros_like(frames[:, : window - 1]), frames], axis=1)
    windows = np.stack([padded[:, t : t + window] for t in range(steps)], axis=1)
    batch = frames.shape[0]
    out = np.asarray(model(windows.reshape(batch * steps, *windows.shape[2:])))
    return out.reshape(batch, steps, *frames.shape[2:])


# --- builders ------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ALL)
@pytest.mark.parametrize("size", [(64, 64), (64, 80)])
def test_every_arch_builds_for_any_size_divisible_by_4(arch: str, size: tuple[int, int]) -> None:
    height, width = size
    spec = get_spec(arch)
    model = build_model(arch, height, width)
    steps = 10 if spec.fixed_time else None
    assert tuple(model.input_shape) == (None, steps, height, width, 1)
    out = np.asarray(model(_frames(2, 10, height, width)))
    expected_steps = 10 if spec.output == "sequence" else 1
    assert out.shape == (2, expected_steps, height, width, 1)
    assert np.isfinite(out).all()


@pytest.mark.parametrize("arch", ["seed-convlstm", "seed-convlstm-pool"])
def test_seed_stack_maps_ten_frames_to_one_with_the_questions_parameter_counts(arch: str) -> None:
    model = build_model(arch, 64, 64)
    out = np.asarray(model(_frames(1, 10, 64, 64)))
    assert out.shape == (1, 1, 64, 64, 1)
    assert ((out >= 0) & (out <= 1)).all()  # sigmoid head
    counts = {layer.name: layer.count_params() for layer in model.layers}
    assert counts["convlstm1"] == 59_200
    assert [counts[f"convlstm{i}"] for i in (2, 3, 4)] == [115_360] * 3
    assert [counts[f"bn{i}"] for i in (1, 2, 3, 4)] == [160] * 4
    assert model.get_layer("convlstm4").return_sequences == (arch == "seed-convlstm-pool")
    if arch == "seed-convlstm-pool":
        assert model.get_layer("pool").pool_size == (10, 1, 1)
        assert model.get_layer("head").kernel_size == (3, 3, 3)


def test_vae_samples_in_training_uses_z_mean_at_inference_and_adds_kl() -> None:
    model = _model("conv3d-vae")
    frames = _frames(2, 10, 32, 32)
    first = np.asarray(model(frames, training=False))
    np.testing.assert_array_equal(np.asarray(model(frames, training=False)), first)
    assert len(model.losses) == 1 and float(model.losses[0]) >= 0.0  # the KL term
    sampled = np.asarray(model(frames, training=True))
    assert np.abs(sampled - first).max() > 0


# --- runners -------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ALL)
def test_runner_equals_the_sequence_model(arch: str) -> None:
    model = _model(arch)
    frames = _frames(2, 12, 32, 32, seed=3)
    expected = _reference(model, frames)
    runner = make_runner(model)
    assert isinstance(runner, Stepper if arch in RECURRENT else WindowRunner)
    for chunk in (1, 5, 12):  # ticks, catch-up chunks, a whole replay chunk
        state = runner.initial_state(2)
        outputs = []
        for start in range(0, 12, chunk):
            predictions, state = runner.run(frames[:, start : start + chunk], state)
            assert predictions.shape == (2, min(chunk, 12 - start), 32, 32, 1)
            outputs.append(predictions)
        np.testing.assert_allclose(np.concatenate(outputs, axis=1), expected, atol=1e-5)
    # the past matters: the last frame alone, from a fresh state, predicts something else
    fresh, _ = runner.run(frames[:, -1:], runner.initial_state(2))
    assert np.abs(fresh[:, 0] - expected[:, -1]).max() > 1e-4


@pytest.mark.parametrize("arch", RECURRENT)
@pytest.mark.parametrize("jit", [None, False])
def test_tick_graph_has_no_loop_and_equals_the_chunk_graph(arch: str, jit: bool | None) -> None:
    import tensorflow as tf

    model = _model(arch)
    stepper = Stepper(model, jit=jit)
    ops = {op.type for op in stepper._tick(3).graph.get_operations()}
    assert not ops & {"While", "StatelessWhile"}, sorted(ops)
    frames = _frames(3, 4, 32, 32, seed=5)
    state = [tf.constant(s) for s in stepper.initial_state(3)]
    loop_state = list(state)
    for t in range(4):  # the tick function against the loop graph, step by step
        tick = stepper.run(frames[:, t : t + 1], state)
        state = tick[1]
        loop = stepper._fn(frames[:, t : t + 1], *loop_state)
        loop_state = list(loop[1:])
        np.testing.assert_allclose(tick[0], np.asarray(loop[0]), atol=1e-6)
        for a, b in zip(tick[1], loop[1:], strict=True):
            np.testing.assert_allclose(a, np.asarray(b), atol=1e-6)
    assert set(stepper._tick_fns) == {3}


@pytest.mark.parametrize("arch", RECURRENT)
def test_recurrent_model_on_a_window_equals_the_sequence_model(arch: str) -> None:
    model = _model(arch)
    frames = _frames(1, 14, 32, 32, seed=4)
    runner = make_runner(model, window=10)
    assert isinstance(runner, WindowRunner)
    predictions, _ = runner.run(frames, runner.initial_state(1))
    expected = np.asarray(model(frames[:, 4:14]))[:, -1]
    np.testing.assert_allclose(predictions[:, -1], expected, atol=1e-5)


def test_clip_arch_has_no_stepper_and_window_runner_checks_shapes() -> None:
    model = _model("conv3d-vae")
    with pytest.raises(ModelError, match="clip model"):
        Stepper(model)
    runner = make_runner(model)
    assert isinstance(runner, WindowRunner) and runner.window == 10
    with pytest.raises(ModelError, match="32, 32"):
        runner.run(np.zeros((1, 1, 32, 40, 1), np.float32), runner.initial_state(1))
    with pytest.raises(ModelError, match="state"):
        runner.run(np.zeros((2, 1, 32, 32, 1), np.float32), runner.initial_state(1))
    with pytest.raises(ModelError, match="10-frame"):
        WindowRunner(model, window=5)


# --- training, saving, loading -------------------------------------------------------------


def _data(count: int, frames: int) -> list[str]:
    return [f"synthetic:?anomaly_rate=0&seed={seed}&frames={frames}" for seed in range(count)]


@pytest.mark.parametrize(
    ("arch", "mode", "size"),
    [  # the cheap archs also at 64x80: a model trained at 64x80 predicts 64x80 frames
        ("convlstm-ae", "stateful", (64, 80)),
        ("seed-convlstm", "stateful", (32, 32)),
        ("seed-convlstm-pool", "window", (32, 32)),
        ("convlstm-vae", "window", (32, 32)),
        ("conv3d-vae", "window", (64, 80)),
    ],
)
def test_every_arch_trains_saves_and_reloads_in_safe_mode(
    tmp_path: Path, arch: str, mode: str, size: tuple[int, int]
) -> None:
    from forecaster.offline.train import TrainSettings, train_command

    height, width = size
    out = train_command(
        _data(2, 26),
        tmp_path / f"{arch}.keras",
        TrainSettings(arch=arch, mode=mode, epochs=1, size=size, batch_size=4,
                      stride=8 if mode == "window" else None, progress=False),
    )
    model, card = load_model(out, expect_size=size)  # keras safe_mode=True
    assert (card.arch, card.height, card.width, card.window) == (arch, height, width, 10)
    assert card.has_calibration()
    training = card.training
    assert training["mode"] == mode and training["epochs_run"] == 1
    assert training["loss"] == get_spec(arch).default_loss
    assert training["params"] == model.count_params()
    assert set(training["train_videos"]).isdisjoint(training["val_videos"])
    runner = make_runner(model)
    predictions, state = runner.run(_frames(1, 3, height, width), runner.initial_state(1))
    assert predictions.shape == (1, 3, height, width, 1) and np.isfinite(predictions).all()
    assert isinstance(state, list)


def test_load_model_rejects_a_card_of_another_arch(tmp_path: Path) -> None:
    from forecaster.model.artifact import ModelCard, save_model

    path = tmp_path / "vae.keras"
    card = ModelCard(arch="convlstm-ae", height=32, width=32, window=10)
    save_model(build_model("conv3d-vae", 32, 32), path, card)
    with pytest.raises(ModelError, match="conv3d-vae model but its card says convlstm-ae"):
        load_model(path)


@pytest.mark.parametrize("arch", ["conv3d-vae", "seed-convlstm"])
def test_inference_engine_runs_every_runner_unchanged_in_any_chunking(arch: str) -> None:
    from forecaster.config import ScorerConfig
    from forecaster.detection.engine import InferenceEngine

    calibration = {"log_mse_mean": -6.0, "log_mse_std": 0.5, "frames": 100}
    frames = (_frames(1, 16, 32, 32, seed=6)[0, :, :, :, 0] * 255).astype(np.uint8)
    runs = []
    for chunk in (1, 7):  # live ticks and catch-up / replay chunks
        engine = InferenceEngine(make_runner(_model(arch)), calibration, ScorerConfig(), window=10)
        engine.add_camera("cam0")
        scores = []
        for start in range(0, 16, chunk):
            seqs = range(start, min(start + chunk, 16))
            result = engine.process("cam0", frames[seqs[0] : seqs[-1] + 1], seqs, [0.0] * len(seqs))
            scores += [(m.seq, m.mse) for m in result.messages if type(m).__name__ == "Score"]
        runs.append(scores)
    assert [seq for seq, _ in runs[0]] == list(range(10, 16))  # scored after 10 frames
    np.testing.assert_allclose([m for _, m in runs[1]], [m for _, m in runs[0]], rtol=1e-4)
