"""Training modes: window batches, stateful groups with state resets, determinism, resume."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
import pytest

from forecaster.errors import UsageError
from forecaster.model.artifact import load_model
from forecaster.model.batches import StatefulGroups, WindowBatches
from forecaster.model.builders import build_model
from forecaster.model.fitting import StatefulTrainer
from forecaster.model.losses import PixelLoss

pytestmark = pytest.mark.filterwarnings(
    "ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning"
)


def _videos(count: int, frames: int, size: int = 16, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (frames, size, size), dtype=np.uint8) for _ in range(count)]


def _data(count: int, frames: int = 30) -> list[str]:
    return [f"synthetic:?anomaly_rate=0&seed={seed}&frames={frames}" for seed in range(count)]


def _weights(path: Path) -> list[np.ndarray]:
    model, _ = load_model(path)
    return [np.asarray(w) for w in model.get_weights()]


# --- data ------------------------------------------------------------------------------------


def test_window_batches_targets_stride_and_epoch_order() -> None:
    videos = [np.arange(25, dtype=np.uint8)[:, None, None] * np.ones((1, 4, 4), np.uint8)]
    nxt = WindowBatches(videos, 10, 4, stride=5, shuffle=False, seed=0, target="next")
    assert [s for _, s in nxt.starts] == [0, 5, 10]  # 25 frames: windows of 10 + 1 target
    x, y = nxt[0]
    assert x.shape == (3, 10, 4, 4, 1) and y.shape == (3, 1, 4, 4, 1)
    np.testing.assert_allclose(y[:, 0, 0, 0, 0] * 255, [10, 15, 20], atol=1e-4)
    seq = WindowBatches(videos, 10, 4, stride=10, shuffle=False, seed=0)
    x, y = seq[0]
    np.testing.assert_allclose((y - x)[..., 0, 0, 0] * 255, 1.0, atol=1e-4)  # next frame each step
    many = [np.zeros((200, 2, 2), np.uint8)]
    a = WindowBatches(many, 4, 8, stride=1, shuffle=True, seed=3)
    b = WindowBatches(many, 4, 8, stride=1, shuffle=True, seed=3)
    a.set_epoch(2)
    first = a.order.copy()
    b.set_epoch(0)
    b.set_epoch(2)  # a resumed run at epoch 2 sees the same order
    np.testing.assert_array_equal(b.order, first)
    a.set_epoch(3)
    assert not np.array_equal(a.order, first)


def test_stateful_groups_fixed_batch_consecutive_chunks_reset_per_group() -> None:
    videos = _videos(3, 23) + _videos(1, 12)  # the last is shorter
    groups = StatefulGroups(videos, batch_size=2, chunk=5)
    assert groups.batch == 2
    assert [(g.members, g.chunks) for g in groups.groups] == [((0, 1), 4), ((2, 3), 2)]
    chunks = list(groups)
    assert [reset for _, _, reset in chunks] == [True, False, False, False, True, False]
    assert all(x.shape == (2, 5, 16, 16, 1) for x, _, _ in chunks)
    # consecutive: chunk k+1 starts where chunk k ended; targets are the next frames
    np.testing.assert_array_equal(chunks[1][0][:, 0], chunks[0][1][:, -1])
    np.testing.assert_array_equal(chunks[0][1][:, :-1], chunks[0][0][:, 1:])
    np.testing.assert_allclose(chunks[0][0][0, :, :, :, 0] * 255, videos[0][:5], atol=1e-3)
    # fewer videos than the batch: the batch is the number of videos; a group is filled up
    assert StatefulGroups(videos[:1], batch_size=8, chunk=5).batch == 1
    three = StatefulGroups(videos[:3], batch_size=2, chunk=5)
    assert [g.members for g in three.groups] == [(0, 1), (2, 0)]


# --- stateful training -----------------------------------------------------------------------


def _stateful_model(learning_rate: float) -> keras.Model:
    keras.utils.set_random_seed(0)
    model = build_model("convlstm-ae", 16, 16)
    delta = model.get_layer("delta")  # starts at zero: make the output depend on the state
    kernel, bias = delta.get_weights()
    rng = np.random.default_rng(0)
    delta.set_weights([rng.normal(0, 0.3, kernel.shape).astype(np.float32), bias])
    model.compile(optimizer=keras.optimizers.Adam(learning_rate), loss=PixelLoss("mse"))
    return model


def test_stateful_training_resets_the_state_exactly_when_a_new_group_starts() -> None:
    first, second = _videos(1, 13, seed=1), _videos(1, 13, seed=2)
    both = StatefulGroups(first + second, batch_size=1, chunk=4)  # group 1, then group 2
    alone = StatefulGroups(second, batch_size=1, chunk=4)
    assert both.num_chunks == 6 and alone.num_chunks == 3
    # learning rate 0: the weights do not move, so a training pass on group 2 after group 1
    # must give exactly the losses of a fresh pass on group 2 alone
    trainer = StatefulTrainer(_stateful_model(0.0), PixelLoss("mse"))
    for train in (True, False):
        after = trainer.run(both, train=train)[3:]
        fresh = trainer.run(alone, train=train)
        np.testing.assert_allclose(after, fresh, rtol=1e-6, atol=0)
        # the check is sensitive: group 1's state leaking into group 2 changes its losses
        leaky = [(x, y, i == 0) for i, (x, y, _) in enumerate(both)]
        leaked = trainer.run(iter(leaky), train=train)[3:]
        assert abs(leaked[0] - fresh[0]) > 1e-6 * abs(fresh[0])
        # within a group the state is carried: chunk 2 differs from chunk 2 run afresh
        restarted = [(x, y, True) for x, y, _ in alone]
        assert abs(trainer.run(iter(restarted), train=train)[1] - fresh[1]) > 1e-6 * fresh[1]


def test_stateful_mode_needs_a_recurrent_arch(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from forecaster.cli import main
    from forecaster.offline.train import TrainSettings, train_command

    with pytest.raises(UsageError, match="recurrent"):
        train_command(_data(2), tmp_path / "m.keras",
                      TrainSettings(arch="conv3d-vae", mode="stateful"))
    code = main(["train", "synthetic:", "--out", str(tmp_path / "m.keras"), "--arch",
                 "seed-convlstm-pool", "--mode", "stateful"])
    assert code == 2 and "recurrent" in capsys.readouterr().err
    with pytest.raises(UsageError, match="no checkpoint"):
        train_command(_data(2), tmp_path / "m.keras", TrainSettings(resume=True, progress=False))


# --- determinism, checkpoints, resume --------------------------------------------------------


def test_same_seed_same_weights_in_stateful_mode(tmp_path: Path) -> None:
    from forecaster.offline.train import TrainSettings, train_command

    paths = [
        train_command(_data(3), tmp_path / f"run{i}.keras",
                      TrainSettings(mode="stateful", epochs=1, size=(32, 32), batch_size=2,
                                    seed=5, progress=False))
        for i in (1, 2)
    ]
    for a, b in zip(_weights(paths[0]), _weights(paths[1]), strict=True):
        np.testing.assert_array_equal(a, b)
    _, card = load_model(paths[0])
    assert card.training["mode"] == "stateful" and card.training["chunk"] == 10
    assert card.training["batch_size"] == 2 and card.training["deterministic"] is True


def test_resume_continues_from_the_last_checkpoint(tmp_path: Path, user_cache: Path) -> None:
    from forecaster.offline.train import TrainSettings, train_command

    common = TrainSettings(arch="convlstm-ae", mode="window", size=(32, 32), batch_size=4,
                           clip=8, seed=1, patience=5, progress=False)
    straight = train_command(_data(3), tmp_path / "straight.keras", replace(common, epochs=2))
    ckpt = tmp_path / "ckpt"
    train_command(_data(3), tmp_path / "first.keras",
                  replace(common, epochs=1, checkpoint_dir=ckpt, tensorboard=tmp_path / "tb"))
    assert json.loads((ckpt / "state.json").read_text())["epoch"] == 1
    resumed = train_command(_data(3), tmp_path / "resumed.keras",
                            replace(common, epochs=2, checkpoint_dir=ckpt,
                                    tensorboard=tmp_path / "tb", resume=True))
    _, card = load_model(resumed)
    assert card.training["resumed_from_epoch"] == 1 and card.training["epochs_run"] == 2
    # the same epoch-2 weights and optimizer state as a run that never stopped
    # checkpoints and logs by default: in the user's cache, under the model's absolute path
    kept = user_cache / "forecaster" / "train" / tmp_path.relative_to(tmp_path.anchor)
    assert sorted(p.name for p in kept.iterdir()) == ["straight.checkpoints", "straight.logs"]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith("straight")] == [
        "straight.keras"]
    last_straight = keras.saving.load_model(kept / "straight.checkpoints" / "last.keras")
    last_resumed = keras.saving.load_model(ckpt / "last.keras")
    assert int(last_resumed.optimizer.iterations) == int(last_straight.optimizer.iterations) > 0
    for a, b in zip(last_straight.get_weights(), last_resumed.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(_weights(straight), _weights(resumed), strict=True):
        np.testing.assert_array_equal(a, b)
    assert (ckpt / "best.weights.h5").is_file()
    for run in ("train", "validation"):  # TensorBoard event files, appended on resume
        assert list((tmp_path / "tb" / run).glob("events.out.tfevents.*"))
    with pytest.raises(UsageError, match="mode"):
        train_command(_data(3), tmp_path / "other.keras",
                      replace(common, epochs=3, checkpoint_dir=ckpt, resume=True,
                              mode="stateful", clip=None))


@pytest.mark.timeout(180)
def test_train_command_is_quiet_and_keeps_its_folders_out_of_the_model_folder(
    tmp_path: Path, user_cache: Path
) -> None:
    """As a user runs it, without TF_CPP_MIN_LOG_LEVEL: no native TensorFlow chatter
    (CUDA, oneDNN, absl) on a machine without a GPU, and nothing beside the model file."""
    env = {key: value for key, value in os.environ.items() if key != "TF_CPP_MIN_LOG_LEVEL"}
    out = tmp_path / "m.keras"
    result = subprocess.run(
        [sys.executable, "-m", "forecaster", "train", *_data(2, frames=60), "--out", str(out),
         "--epochs", "1", "--max-frames", "60", "--size", "32x32"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=170,
    )
    assert result.returncode == 0, result.stderr
    noise = [line for line in result.stderr.splitlines()
             if any(word in line for word in ("cuInit", "oneDNN", "absl", "cuda_"))]
    assert noise == [], result.stderr
    assert [p.name for p in tmp_path.iterdir()] == ["m.keras"]
    kept = user_cache / "forecaster" / "train" / tmp_path.relative_to(tmp_path.anchor)
    assert (kept / "m.checkpoints" / "last.keras").is_file()
    assert f"checkpoints in {kept / 'm.checkpoints'}" in result.stderr


def test_bench_is_quiet_too(tmp_path: Path) -> None:
    """``forecaster bench`` imports TensorFlow itself: none of its native start-up lines."""
    env = {key: value for key, value in os.environ.items() if key != "TF_CPP_MIN_LOG_LEVEL"}
    result = subprocess.run(
        [sys.executable, "-m", "forecaster", "bench", "--skip-archs"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=170,
    )
    assert result.returncode == 0, result.stderr
    assert "measured peak" in result.stdout
    noise = [line for line in result.stderr.splitlines()
             if any(word in line for word in ("cuInit", "oneDNN", "absl", "cudart", "cuda_"))]
    assert noise == [], result.stderr
