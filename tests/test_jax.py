"""The JAX backend: under ``KERAS_BACKEND=jax`` the one-frame step and ``forecaster replay``
run without importing TensorFlow and give the TensorFlow backend's numbers.

Keras fixes its backend at import, so the JAX side runs in one subprocess (the model
loaded once, N one-frame ticks with carried state, then ``python -m forecaster replay`` in
the same process); the TensorFlow side runs here.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
TICKS = 12
BATCH = 2
#: frames run through the window runner (BATCH x this many windows: padded on JAX)
WINDOW_FRAMES = 3
REPLAY = ["replay", "synthetic:?frames=40&seed=1", "--chunk", "16"]
#: tolerances: the step's predictions and state (absolute), the replay's scores
STEP_ATOL = 1e-5
MSE_RTOL = 1e-5
SCORE_ATOL = 1e-4

pytestmark = [
    pytest.mark.timeout(300),
    pytest.mark.skipif(
        find_spec("jax") is None,
        reason="jax is not installed: pip install -e '.[jax]' (the test extra has it) to "
        "check the JAX backend",
    ),
]

# Run under KERAS_BACKEND=jax. Records every attempt to import TensorFlow (none may happen:
# the JAX path must run where TensorFlow is not installed).
JAX_SCRIPT = """
import importlib.abc, json, runpy, sys

tried = []

class Spy(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "tensorflow":
            tried.append(name)
        return None

sys.meta_path.insert(0, Spy())
out, replay = sys.argv[1], sys.argv[2:]
import numpy as np
from forecaster.detection.engine import load
WINDOW_FRAMES = %d
from forecaster.model.artifact import bundled_model_path

loaded = load(bundled_model_path())
frames = np.load(out + "/frames.npy")
state = loaded.runner.initial_state(frames.shape[0])
predictions = []
for t in range(frames.shape[1]):
    prediction, state = loaded.runner.run(frames[:, t : t + 1], state)
    predictions.append(prediction[:, 0])
np.savez(out + "/ticks.npz", np.stack(predictions, axis=1), *state)
from forecaster.model.step import make_runner

window = make_runner(loaded.runner.model, window=10)
np.save(out + "/window.npy", window.run(frames[:, :WINDOW_FRAMES], window.initial_state(frames.shape[0]))[0])
sys.argv = ["forecaster", *replay]
try:
    runpy.run_module("forecaster", run_name="__main__", alter_sys=True)
    code = 0
except SystemExit as exit:
    code = exit.code
import keras
result = {"code": code, "backend": keras.config.backend(), "device": loaded.device,
          "runner": type(loaded.runner).__name__, "tensorflow": tried}
with open(out + "/result.json", "w") as file:
    json.dump(result, file)
"""


def _frames() -> np.ndarray:
    return np.random.default_rng(7).random((BATCH, TICKS, 64, 64, 1), dtype=np.float32)


def _env(folder: Path, backend: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(KERAS_BACKEND=backend, PYTHONPATH=str(REPO), XDG_CACHE_HOME=str(folder / "cache"),
               TF_CPP_MIN_LOG_LEVEL="3")
    return env


@pytest.fixture(scope="module")
def jax_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    """The JAX subprocess's folder (ticks.npz, replay/scores.csv) and its result.json."""
    out = tmp_path_factory.mktemp("jax")
    np.save(out / "frames.npy", _frames())
    proc = subprocess.run(
        [sys.executable, "-c", JAX_SCRIPT % WINDOW_FRAMES, str(out), *REPLAY, "--out", str(out / "replay")],
        cwd=out, env=_env(out, "jax"), capture_output=True, text=True, timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    return out, json.loads((out / "result.json").read_text())


def _tensorflow_here() -> None:
    import keras

    if keras.config.backend() != "tensorflow":
        pytest.skip(f"the reference runs on TensorFlow; this process uses {keras.config.backend()}")


def test_jax_one_frame_step_equals_the_tensorflow_step(
    jax_run: tuple[Path, dict[str, Any]],
) -> None:
    out, result = jax_run
    assert result["backend"] == "jax"
    assert result["runner"] == "Stepper"
    assert result["device"].endswith("via JAX"), result["device"]
    assert result["tensorflow"] == [], f"the JAX path imported {result['tensorflow']}"
    _tensorflow_here()
    from forecaster.detection.engine import load
    from forecaster.model.artifact import bundled_model_path

    runner = load(bundled_model_path()).runner
    frames = _frames()
    state = runner.initial_state(BATCH)
    predictions = []
    for t in range(TICKS):
        prediction, state = runner.run(frames[:, t : t + 1], state)
        predictions.append(prediction[:, 0])
    with np.load(out / "ticks.npz") as jax_arrays:
        got = [jax_arrays[f"arr_{i}"] for i in range(len(jax_arrays.files))]
    assert len(got) == 1 + len(state)
    np.testing.assert_allclose(got[0], np.stack(predictions, axis=1), rtol=0, atol=STEP_ATOL)
    for jax_state, tf_state in zip(got[1:], state, strict=True):
        assert float(np.abs(tf_state).max()) > 1e-3  # the state carried something
        np.testing.assert_allclose(jax_state, tf_state, rtol=0, atol=STEP_ATOL)


def test_jax_window_runner_equals_the_tensorflow_one(jax_run: tuple[Path, dict[str, Any]]) -> None:
    """The bundled model run on a 10-frame window every tick (how clip models run)."""
    out, _ = jax_run
    _tensorflow_here()
    from forecaster.model.artifact import bundled_model_path, load_model
    from forecaster.model.step import make_runner

    runner = make_runner(load_model(bundled_model_path())[0], window=10)
    expected, _ = runner.run(_frames()[:, :WINDOW_FRAMES], runner.initial_state(BATCH))
    got = np.load(out / "window.npy")
    assert got.shape == expected.shape == (BATCH, WINDOW_FRAMES, 64, 64, 1)
    np.testing.assert_allclose(got, expected, rtol=0, atol=STEP_ATOL)


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as file:
        return list(csv.DictReader(file))


def test_jax_replay_writes_the_tensorflow_replays_scores(
    jax_run: tuple[Path, dict[str, Any]], tmp_path: Path,
) -> None:
    out, result = jax_run
    assert result["code"] == 0
    _tensorflow_here()
    from forecaster.cli import main

    assert main([*REPLAY, "--out", str(tmp_path / "tf")]) == 0
    jax_rows = _rows(out / "replay" / "scores.csv")
    tf_rows = _rows(tmp_path / "tf" / "scores.csv")
    assert len(tf_rows) > 20
    assert len(jax_rows) == len(tf_rows)
    for jax_row, tf_row in zip(jax_rows, tf_rows, strict=True):
        for key in ("camera", "seq", "anomaly", "label"):
            assert jax_row[key] == tf_row[key], (key, jax_row, tf_row)
        assert float(jax_row["mse"]) == pytest.approx(float(tf_row["mse"]), rel=MSE_RTOL)
        for key in ("psnr", "score"):
            assert float(jax_row[key]) == pytest.approx(float(tf_row[key]), abs=SCORE_ATOL)


@pytest.mark.parametrize(
    ("backend", "args", "says"),
    [
        ("jax", ["train", "data", "--out", "m.keras"], "forecaster train runs on the TensorFlow"),
        ("jax", ["bench"], "forecaster bench runs on the TensorFlow"),
        ("torch", ["replay", "synthetic:?frames=5", "--out", "r"], "'torch'"),
    ],
)
def test_commands_a_backend_cannot_run_exit_2_naming_it(
    backend: str, args: list[str], says: str, tmp_path: Path,
) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "forecaster", *args], cwd=tmp_path, env=_env(tmp_path, backend),
        capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 2, proc.stderr
    assert says in proc.stderr
    assert "Traceback" not in proc.stderr


def test_the_backend_set_in_keras_json_counts(tmp_path: Path) -> None:
    (tmp_path / "keras.json").write_text(json.dumps({"backend": "jax"}))
    env = _env(tmp_path, "")
    del env["KERAS_BACKEND"]
    env["KERAS_HOME"] = str(tmp_path)
    proc = subprocess.run(
        [sys.executable, "-m", "forecaster", "train", "data", "--out", "m.keras"], cwd=tmp_path,
        env=env, capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 2, proc.stderr
    assert "backend is 'jax'" in proc.stderr
