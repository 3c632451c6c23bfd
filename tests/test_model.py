"""The model package: builders, the stateful stepper, the artifact format, training."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import zipfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
import pytest

from forecaster.errors import ModelError
from forecaster.model.artifact import (
    CARD_MEMBER,
    ModelCard,
    bundled_model_path,
    load_model,
    read_card,
    save_model,
)
from forecaster.model.builders import ARCHS, build_model
from forecaster.model.step import Stepper
from forecaster.offline.train import Video, calibrate, gradient_difference, l1_gdl, split_videos

REPO = Path(__file__).resolve().parents[1]

# TensorFlow tensors meet NumPy 2's copy keyword inside Keras' weight conversion
pytestmark = pytest.mark.filterwarnings(
    "ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning"
)


def _untrained(height: int, width: int, seed: int = 1) -> keras.Model:
    """A model whose output depends on the recurrent state (the delta layer is not zero)."""
    keras.utils.set_random_seed(seed)
    model = build_model("convlstm-ae", height, width)
    delta = model.get_layer("delta")
    kernel, bias = delta.get_weights()
    rng = np.random.default_rng(seed)
    delta.set_weights([rng.normal(0, 0.2, kernel.shape).astype(np.float32), bias])
    return model


def _frames(batch: int, steps: int, height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((batch, steps, height, width, 1), dtype=np.float32)


def _card(height: int = 64, width: int = 64) -> ModelCard:
    return ModelCard(
        arch="convlstm-ae",
        height=height,
        width=width,
        window=10,
        calibration={"log_mse_mean": -8.5, "log_mse_std": 0.4, "frames": 100},
        training={"videos": 1, "frames": 10, "epochs": 1, "loss": "l1+gdl", "seed": 0},
        versions={"forecaster": "test"},
    )


@pytest.fixture(scope="module")
def model_64x80() -> keras.Model:
    return _untrained(64, 80)


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, keras.Model, ModelCard]:
    model = _untrained(64, 64, seed=2)
    path = tmp_path_factory.mktemp("saved") / "model.keras"
    card = _card()
    save_model(model, path, card)
    return path, model, card


# --- builders ------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [(64, 64), (64, 80)])
def test_build_shapes_and_size(size: tuple[int, int]) -> None:
    height, width = size
    model = build_model("convlstm-ae", height, width)
    assert tuple(model.input_shape) == (None, None, height, width, 1)
    assert tuple(model.output_shape) == (None, None, height, width, 1)
    out = np.asarray(model(_frames(2, 3, height, width)))
    assert out.shape == (2, 3, height, width, 1)
    assert model.count_params() < 150_000
    assert "convlstm-ae" in ARCHS


def test_untrained_model_predicts_the_same_frame_clipped() -> None:
    model = build_model("convlstm-ae", 32, 32)
    frames = _frames(1, 4, 32, 32)
    np.testing.assert_allclose(np.asarray(model(frames)), frames, atol=1e-6)


@pytest.mark.parametrize(("arch", "size"), [("convlstm-ae", (62, 64)), ("nope", (64, 64))])
def test_build_rejects_bad_arch_or_size(arch: str, size: tuple[int, int]) -> None:
    with pytest.raises(ModelError):
        build_model(arch, *size)


# --- stepper -------------------------------------------------------------------------------


def test_stepper_one_frame_and_chunks_equal_sequence(model_64x80: keras.Model) -> None:
    frames = _frames(2, 12, 64, 80)
    expected = np.asarray(model_64x80(frames))
    stepper = Stepper(model_64x80)
    for chunk in (1, 3):
        state = stepper.initial_state(2)
        outputs = []
        for start in range(0, 12, chunk):
            predictions, state = stepper.run(frames[:, start : start + chunk], state)
            assert predictions.shape == (2, chunk, 64, 80, 1)
            outputs.append(predictions)
        np.testing.assert_allclose(np.concatenate(outputs, axis=1), expected, atol=1e-5)
    # the state matters: a fresh state on the last frame gives another prediction
    fresh, _ = stepper.run(frames[:, -1:], stepper.initial_state(2))
    assert np.abs(fresh[:, 0] - expected[:, -1]).max() > 1e-4


def test_stepper_reset_equals_fresh(model_64x80: keras.Model) -> None:
    stepper = Stepper(model_64x80)
    first = _frames(1, 5, 64, 80, seed=1)
    second = _frames(1, 4, 64, 80, seed=2)
    fresh, fresh_state = stepper.run(second, stepper.initial_state(1))
    _, state = stepper.run(first, stepper.initial_state(1))
    assert np.abs(state[0]).max() > 0
    again, again_state = stepper.run(second, stepper.initial_state(1))
    np.testing.assert_array_equal(again, fresh)
    for a, b in zip(again_state, fresh_state, strict=True):
        np.testing.assert_array_equal(a, b)


def test_stepper_rejects_wrong_shapes(model_64x80: keras.Model) -> None:
    stepper = Stepper(model_64x80)
    with pytest.raises(ModelError, match="64, 80"):
        stepper.run(np.zeros((1, 1, 64, 64, 1), np.float32), stepper.initial_state(1))
    with pytest.raises(ModelError, match="state"):
        stepper.run(np.zeros((2, 1, 64, 80, 1), np.float32), stepper.initial_state(1))


# --- artifact ------------------------------------------------------------------------------


def test_save_load_round_trip(saved: tuple[Path, keras.Model, ModelCard]) -> None:
    path, model, card = saved
    assert CARD_MEMBER in zipfile.ZipFile(path).namelist()
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary file left
    loaded, loaded_card = load_model(path, expect_size=(64, 64))
    assert loaded_card == card
    frames = _frames(1, 6, 64, 64)
    np.testing.assert_array_equal(np.asarray(loaded(frames)), np.asarray(model(frames)))
    stepped, _ = Stepper(loaded).run(frames, Stepper(loaded).initial_state(1))
    np.testing.assert_allclose(stepped, np.asarray(model(frames)), atol=1e-5)
    # the card member does not get in the way of plain Keras loading in safe mode
    plain = keras.saving.load_model(path, safe_mode=True, compile=False)
    assert plain.count_params() == model.count_params()


def test_card_json_round_trip_and_validation() -> None:
    card = _card(64, 80)
    assert ModelCard.from_json(card.to_json()) == card
    assert card.has_calibration()
    bad = json.loads(card.to_json())
    bad["height"] = "64"
    with pytest.raises(ValueError, match="height"):
        ModelCard.from_json(json.dumps(bad))


def test_read_card_does_not_import_tensorflow(saved: tuple[Path, keras.Model, ModelCard]) -> None:
    path = saved[0]
    code = (
        "import sys\n"
        "from forecaster.model.artifact import read_card\n"
        f"card = read_card({str(path)!r})\n"
        "assert 'tensorflow' not in sys.modules, 'tensorflow imported'\n"
        "assert 'keras' not in sys.modules, 'keras imported'\n"
        "print(card.height, card.width, card.calibration['frames'])\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["64", "64", "100"]


def test_load_model_errors_name_the_file(
    tmp_path: Path, saved: tuple[Path, keras.Model, ModelCard]
) -> None:
    missing = tmp_path / "missing.keras"
    with pytest.raises(ModelError, match="not found") as info:
        load_model(missing)
    assert str(missing) in str(info.value)

    garbage = tmp_path / "garbage.keras"
    garbage.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(ModelError, match="not a model") as info:
        load_model(garbage)
    assert str(garbage) in str(info.value)

    no_card = tmp_path / "no_card.keras"
    _untrained(32, 32).save(no_card)
    with pytest.raises(ModelError, match=CARD_MEMBER) as info:
        load_model(no_card)
    assert str(no_card) in str(info.value)

    path = saved[0]
    with pytest.raises(ModelError) as info:
        load_model(path, expect_size=(64, 80))
    assert str(info.value) == f"model {path} expects 64x64 frames, configured size is 64x80"


def test_load_model_names_the_layers_a_model_of_another_version_lacks(tmp_path: Path) -> None:
    frames = keras.Input(shape=(None, 64, 64, 1), name="frames")
    hidden = keras.layers.ConvLSTM2D(4, 3, padding="same", return_sequences=True,
                                     name="convlstm")(frames)
    outputs = keras.layers.Conv3D(1, 1, name="delta")(hidden)
    other = keras.Model(frames, outputs, name="convlstm_ae")  # the arch's name, not its layers
    path = tmp_path / "other_version.keras"
    save_model(other, path, _card())
    with pytest.raises(ModelError) as info:
        load_model(path)
    message = str(info.value)
    assert message.startswith(f"model {path}: convlstm-ae model lacks the layer(s) ")
    assert "shift" in message and "enc1" in message and "train it again" in message


# --- training ------------------------------------------------------------------------------


def test_losses() -> None:
    a = _frames(2, 3, 16, 16, seed=3)
    b = _frames(2, 3, 16, 16, seed=4)
    assert np.asarray(l1_gdl(a, a)).tolist() == [0.0, 0.0]
    assert (np.asarray(l1_gdl(a, b)) > 0).all()
    blurred = np.full_like(a, a.mean())
    assert (np.asarray(gradient_difference(a, blurred)) > 0.1).all()


def test_split_videos_by_video_or_tail() -> None:
    videos = [Video(f"v{i}", np.zeros((30, 8, 8), np.uint8)) for i in range(5)]
    train, val = split_videos(videos, 0.2, clip=8, seed=0)
    assert len(train) == 4 and len(val) == 1
    assert {v.name for v in train} | {v.name for v in val} == {f"v{i}" for i in range(5)}
    train, val = split_videos(videos[:1], 0.25, clip=8, seed=0)
    assert len(train[0].frames) + len(val[0].frames) == 30
    assert len(val[0].frames) >= 9 and val[0].name.startswith("v0[")


def test_calibration_uses_frames_with_full_context(model_64x80: keras.Model) -> None:
    stepper = Stepper(model_64x80)
    rng = np.random.default_rng(5)
    video = Video("noise", rng.integers(0, 256, (14, 64, 80), dtype=np.uint8))
    labels = np.zeros(14, np.uint8)
    labels[12] = 1
    labelled = Video("noise", video.frames, labels)
    assert calibrate(stepper, [video], window=10)["frames"] == 4  # frames 10..13
    assert calibrate(stepper, [labelled], window=10)["frames"] == 3  # frame 12 is anomalous


def test_train_command_writes_a_calibrated_model(tmp_path: Path) -> None:
    from forecaster.offline.train import TrainSettings, train_command

    data = [f"synthetic:?anomaly_rate=0&seed={seed}&frames=40" for seed in (7, 8)]
    out = train_command(
        data,
        tmp_path / "tiny.keras",
        TrainSettings(epochs=1, size=(32, 32), batch_size=4, seed=0, window=4, clip=8,
                      progress=False),
    )
    model, card = load_model(out, expect_size=(32, 32))
    assert (card.arch, card.height, card.width, card.window) == ("convlstm-ae", 32, 32, 4)
    cal = card.calibration
    assert math.isfinite(cal["log_mse_mean"]) and math.isfinite(cal["log_mse_std"])
    assert cal["log_mse_std"] > 0 and cal["frames"] == 36  # one 40-frame video, 4 of context
    assert card.training["epochs_run"] == 1 and card.training["seed"] == 0
    assert card.training["videos"] == 2 and card.versions["keras"] == keras.__version__
    assert model.get_layer("convlstm") is not None


# --- the bundled model ---------------------------------------------------------------------


def test_bundled_model_loads_and_is_calibrated() -> None:
    path = bundled_model_path()
    if not path.is_file():
        pytest.skip(f"bundled model not found: {path}")
    card = read_card(path)
    assert (card.arch, card.height, card.width) == ("convlstm-ae", 64, 64)
    assert card.has_calibration()
    # it forecasts held-out normal footage better than "nothing moves"
    assert card.calibration["mse_mean"] < card.calibration["copy_last_mse_mean"]
    assert path.stat().st_size < 5_000_000
    model, loaded = load_model(path, expect_size=(64, 64))
    assert loaded == card
    stepper = Stepper(model)
    zeros = np.zeros((1, 1, 64, 64, 1), np.float32)
    predictions, _ = stepper.run(zeros, stepper.initial_state(1))
    assert predictions.shape == (1, 1, 64, 64, 1) and np.isfinite(predictions).all()


def test_the_command_line_lists_the_registries_without_importing_keras() -> None:
    from forecaster.model import ARCH_NAMES, LOSS_NAMES
    from forecaster.model.builders import SPECS
    from forecaster.model.losses import LOSSES

    assert tuple(SPECS) == ARCH_NAMES
    assert sorted(LOSSES) == sorted(LOSS_NAMES)
    code = (
        "import sys\n"
        "from forecaster.cli import main\n"
        "try:\n"
        "    main(['train', '--help'])\n"
        "except SystemExit as stop:\n"
        "    assert stop.code == 0, stop.code\n"
        "assert 'keras' not in sys.modules, 'keras imported'\n"
        "assert 'tensorflow' not in sys.modules, 'tensorflow imported'\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    for name in (*ARCH_NAMES, *LOSS_NAMES):
        assert name in result.stdout
