"""Training with tf.distribute: TF_CONFIG checks, rows dealt to replicas, two replicas in
one process (state resets per replica, window mode), two worker processes on loopback.

Equivalence tolerance. A distributed step and a single-process step on the same global
batch compute the same gradient (each replica's loss is its rows' share of the batch's
mean), except that float32 sums run in another order: the all-reduce adds the replicas'
partial gradients, the single process sums over the whole batch at once. That is a few
ulps (~1e-7 relative) per gradient; Adam turns it into weight differences of about
1e-7 of its step (learning rate 1e-3), so ~1e-10 per step. The runs here measured at most
7.5e-9 (absolute, weights of magnitude up to 1). The tests allow 1e-6 absolute on every
weight and 1e-5 relative on the losses: over 100 times what rounding gives, and 1000
times below what a real fault gives (a row trained twice or dropped, a state carried
across a reset, a wrong loss scale: the weights move by about the learning rate, 1e-3,
in one step, or the loss changes by a factor).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from forecaster.errors import UsageError
from forecaster.model.distributed import deal_rows, parse_tf_config
from tests.conftest import ROOT, free_port

WEIGHT_ATOL = 1e-6
LOSS_RTOL = 1e-5


def _env(tmp_path: Path) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "3"}
    env.pop("TF_CONFIG", None)
    return env


def _compare(a: Path, b: Path) -> dict[str, float]:
    """Weights and card losses of two model files: the largest differences."""
    from forecaster.model.artifact import load_model

    model_a, card_a = load_model(a)
    model_b, card_b = load_model(b)
    weights = [float(np.max(np.abs(x - y)))
               for x, y in zip(model_a.get_weights(), model_b.get_weights(), strict=True)]
    losses = [abs(card_a.training[k] - card_b.training[k]) / abs(card_b.training[k])
              for k in ("final_loss", "final_val_loss")]
    return {"weights": max(weights), "losses": max(losses)}


# --- TF_CONFIG -------------------------------------------------------------------------------


def test_tf_config_is_read_and_checked() -> None:
    two = parse_tf_config('{"cluster": {"worker": ["10.0.0.1:2222", "10.0.0.2:2222"]}, '
                          '"task": {"type": "worker", "index": 1}}')
    assert (two.num_workers, two.rank, two.is_chief) == (2, 1, False)
    assert parse_tf_config('{"cluster": {"worker": ["a:1", "b:1"]}, '
                           '"task": {"type": "worker", "index": 0}}').is_chief
    chief = parse_tf_config('{"cluster": {"chief": ["a:1"], "worker": ["b:1"]}, '
                            '"task": {"type": "worker", "index": 0}}')
    assert (chief.num_workers, chief.rank, chief.is_chief) == (2, 1, False)
    bad = {
        "{not json": "not JSON",
        "[1]": "JSON object",
        '{"task": {"type": "worker", "index": 0}}': "needs \"cluster\"",
        '{"cluster": {"worker": ["a:1"]}}': "needs \"task\"",
        '{"cluster": {"worker": ["a:1"], "ps": ["b:1"]}, "task": {"type": "worker", '
        '"index": 0}}': "unsupported task type 'ps'",
        '{"cluster": {"worker": ["a"]}, "task": {"type": "worker", "index": 0}}': "host:port",
        '{"cluster": {"worker": ["a:1"]}, "task": {"type": "worker", "index": 1}}':
            "from 0 to 0 .* got 1",
        '{"cluster": {"worker": ["a:1"]}, "task": {"type": "evaluator", "index": 0}}':
            "task.type",
    }
    for text, reason in bad.items():
        with pytest.raises(UsageError, match=reason):
            parse_tf_config(text)


def test_bad_tf_config_is_exit_2_naming_it(tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str],
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    from forecaster.cli import main

    monkeypatch.setenv("TF_CONFIG", '{"cluster": {"worker": ["127.0.0.1:1"]}, "task": {}}')
    code = main(["train", "synthetic:", "--out", str(tmp_path / "m.keras"), "--distributed"])
    err = capsys.readouterr().err
    assert code == 2 and "TF_CONFIG needs \"task\"" in err and "Traceback" not in err
    assert not (tmp_path / "m.keras").exists()


def test_distributed_without_tf_config_is_mirrored_on_this_machine_and_refuses_resume(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from forecaster.cli import main
    from forecaster.model.distributed import make_distribution

    here = make_distribution(env={})
    assert here.name == "MirroredStrategy" and here.is_chief and here.replicas >= 1
    assert here.description.startswith("MirroredStrategy on this machine, ")
    code = main(["train", "synthetic:", "--out", str(tmp_path / "m.keras"), "--distributed",
                 "--resume"])
    err = capsys.readouterr().err
    assert code == 2 and "--resume does not apply to --distributed" in err, err


def test_a_lost_worker_is_one_line_naming_the_reason() -> None:
    from forecaster.errors import ForecasterError
    from forecaster.model.distributed import WorkerLost, _reason

    message = ("Graph execution error:\n\nDetected at node adam/CollectiveReduceV2\n"
               "Collective ops is aborted by: recvmsg:Connection reset by peer\nmore")
    error = WorkerLost(_reason(message))
    assert isinstance(error, ForecasterError) and error.exit_code == 1
    assert "(Collective ops is aborted by: recvmsg:Connection reset by peer)" in str(error)
    assert "\n" not in str(error) and _reason("") == "no reason given"


def test_rows_are_dealt_round_robin_padded_at_weight_zero() -> None:
    index, weight = deal_rows(5, 2, 3)
    assert index.tolist() == [[0, 2, 4], [1, 3, 0]]
    assert weight.tolist() == [[1, 1, 1], [1, 1, 0]]
    index, weight = deal_rows(1, 2, 1)  # a replica with no row gets one at weight zero
    assert index.tolist() == [[0], [0]] and weight.tolist() == [[1], [0]]
    with pytest.raises(ValueError, match="cannot deal 5 rows"):
        deal_rows(5, 2, 2)


# --- two replicas in one process --------------------------------------------------------------


@pytest.mark.timeout(240)
def test_two_replicas_reset_state_per_group_and_match_one_process(tmp_path: Path) -> None:
    """MirroredStrategy over two logical CPUs (tests/two_replicas.py, a fresh process)."""
    result = subprocess.run([sys.executable, str(ROOT / "tests" / "two_replicas.py"),
                             str(tmp_path)], env=_env(tmp_path), capture_output=True,
                            text=True, timeout=230)
    assert result.returncode == 0, result.stderr[-3000:]
    found = json.loads((tmp_path / "result.json").read_text())
    assert found["replicas"] == 2
    resets = found["resets"]
    # learning rate 0: after group 1, group 2 gives each replica the losses of a fresh run
    np.testing.assert_allclose(resets["after"], resets["fresh"], rtol=1e-6, atol=0)
    assert all(len(chunk) == 2 for chunk in resets["after"])
    # sensitive: without the reset, group 1's state leaks into group 2 on every replica
    leaked = np.abs(np.array(resets["leaky"][0]) - np.array(resets["fresh"][0]))
    assert np.all(leaked > 1e-6 * np.abs(resets["fresh"][0])), resets
    differences = _compare(tmp_path / "two.keras", tmp_path / "one.keras")
    assert differences["weights"] < WEIGHT_ATOL and differences["losses"] < LOSS_RTOL, differences


# --- two worker processes ---------------------------------------------------------------------


@pytest.mark.timeout(300)
def test_two_workers_on_loopback_train_the_model_of_one_process(tmp_path: Path) -> None:
    """Two ``forecaster train --distributed`` processes (MultiWorkerMirroredStrategy over
    gRPC on loopback), stateful mode: two groups of two videos, so every replica resets
    once; the chief's model loads, runs and matches a single process's with the same
    global batch and seed. The single run goes alongside the workers."""
    data = [f"synthetic:?anomaly_rate=0&seed={seed}&frames=22" for seed in range(5)]
    common = ["--epochs", "1", "--size", "16x16", "--batch-size", "2", "--seed", "4"]
    cluster = {"worker": [f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"]}
    env = _env(tmp_path)
    runs = []
    for index in range(2):
        worker_env = {**env, "TF_CONFIG": json.dumps(
            {"cluster": cluster, "task": {"type": "worker", "index": index}})}
        runs.append(subprocess.Popen(
            [sys.executable, "-m", "forecaster", "train", *data, "--out",
             str(tmp_path / f"worker{index}.keras"), *common, "--distributed"],
            env=worker_env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True))
    runs.append(subprocess.Popen(
        [sys.executable, "-m", "forecaster", "train", *data, "--out",
         str(tmp_path / "single.keras"), *common],
        env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outputs = []
    try:
        for run in runs:
            outputs.append(run.communicate(timeout=280))
    finally:
        for run in runs:
            if run.poll() is None:
                run.kill()
                run.wait()
    for run, (_, err) in zip(runs, outputs, strict=True):
        assert run.returncode == 0, err[-3000:]
    chief_err = outputs[0][1]
    assert "worker 0 of 2 workers: waiting for all of them to start" in chief_err, chief_err
    assert "worker 0 (chief) of 2 workers, 2 replicas in sync" in chief_err, chief_err
    assert "global batch 2, 1 per replica" in chief_err
    assert "the chief writes the model" in outputs[1][0]
    assert not (tmp_path / "worker1.keras").exists()  # only the chief writes

    from forecaster.model.artifact import load_model
    from forecaster.model.step import make_runner

    model, card = load_model(tmp_path / "worker0.keras")
    assert card.training["distribution"] == {
        "strategy": "MultiWorkerMirroredStrategy", "workers": 2, "replicas": 2}
    assert card.training["mode"] == "stateful" and card.training["chunks"] == 4
    reference, _ = load_model(tmp_path / "single.keras")
    frames = np.random.default_rng(0).random((1, 5, 16, 16, 1), dtype=np.float32)
    runner, single = make_runner(model), make_runner(reference)
    predicted, _ = runner.run(frames, runner.initial_state(1))
    expected, _ = single.run(frames, single.initial_state(1))
    assert np.all(np.isfinite(predicted))
    np.testing.assert_allclose(predicted, expected, rtol=0, atol=1e-5)
    differences = _compare(tmp_path / "worker0.keras", tmp_path / "single.keras")
    assert differences["weights"] < WEIGHT_ATOL and differences["losses"] < LOSS_RTOL, differences
