"""Evaluation on a tiny hand-made labelled data set whose answer is known."""

from __future__ import annotations

import json
import re
from pathlib import Path

import cv2
import numpy as np
import pytest

from forecaster.offline.evaluate import METHODS, PROTOCOLS, evaluate_command, minmax
from tests.test_replay import cli, make_tiny_model, one_error_line

pytestmark = pytest.mark.timeout(120)

FRAMES = 40
ONSET = 25  # a white square jumps around from this frame to the end


def make_video(folder: Path, seed: int) -> list[int]:
    """A still, slightly noisy scene; from ONSET a white square appears at a new place each
    frame. Returns the labels (1 from ONSET on)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    yy, xx = np.mgrid[0:48, 0:48]
    background = 80.0 + 60.0 * np.sin(xx / 7.0 + seed) * np.cos(yy / 9.0)
    for i in range(FRAMES):
        frame = background + rng.normal(0.0, 2.0, background.shape)
        if i >= ONSET:
            y, x = rng.integers(0, 36, 2)
            frame[y : y + 12, x : x + 12] = 255.0
        cv2.imwrite(str(folder / f"{i:03d}.png"), np.clip(frame, 0, 255).astype(np.uint8))
    return [int(i >= ONSET) for i in range(FRAMES)]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    root = tmp_path_factory.mktemp("eval")
    data = root / "data"
    labels = {name: make_video(data / name, seed) for seed, name in enumerate(("01", "02"))}
    labels_path = root / "labels.json"
    labels_path.write_text(json.dumps(labels))
    # the untouched model predicts "the next frame equals this one"
    model = make_tiny_model(root / "copy.keras", perturb=False)
    return data, labels_path, model


def test_separable_anomaly_gives_auc_1_and_reversed_labels_0(dataset, tmp_path: Path) -> None:
    data, labels_path, model = dataset
    lines: list[str] = []
    report = evaluate_command([str(data)], labels=str(labels_path), model=str(model),
                              out=tmp_path / "out", echo=lines.append)
    assert report["frames"] == 2 * FRAMES
    assert report["frames_left_out"] == 2 * 10  # the first window frames of each video
    assert report["frames_evaluated"] == 2 * (FRAMES - 10)
    results = report["results"]
    for method in ("model", "copy-last", "frame-diff"):
        for protocol in PROTOCOLS:
            metrics = results[method][protocol]
            assert metrics["micro_auc"] == 1.0, (method, protocol)
            assert metrics["macro_auc"] == 1.0, (method, protocol)
            assert metrics["eer"] == 0.0 and metrics["best_f1"] == 1.0, (method, protocol)
    assert results["mog2"]["paper"]["macro_auc"] > 0.9
    text = "\n".join(lines)
    assert "20 left out" in text
    for method in METHODS:
        assert method in text
    saved = json.loads((tmp_path / "out" / "eval.json").read_text())
    assert saved["results"]["copy-last"]["causal"]["micro_auc"] == 1.0
    for name in ("roc.png", "timelines.png"):
        assert (tmp_path / "out" / name).read_bytes()[:4] == b"\x89PNG"

    reversed_path = tmp_path / "reversed.json"
    labels = json.loads(labels_path.read_text())
    reversed_path.write_text(json.dumps({k: [1 - v for v in vs] for k, vs in labels.items()}))
    report = evaluate_command([str(data)], labels=str(reversed_path), model=str(model),
                              out=tmp_path / "rev", echo=lambda _: None)
    for method in ("model", "copy-last", "frame-diff"):
        assert report["results"][method]["paper"]["micro_auc"] == 0.0
        assert report["results"][method]["causal"]["macro_auc"] == 0.0


def test_minmax() -> None:
    np.testing.assert_allclose(minmax(np.array([2.0, 4.0, 3.0])), [0.0, 1.0, 0.5])
    np.testing.assert_allclose(minmax(np.array([5.0, 5.0])), [0.0, 0.0])


def test_eval_cli_bad_inputs_exit_2(dataset, tmp_path: Path) -> None:
    data, labels_path, model = dataset
    line = one_error_line(cli(["eval", str(tmp_path / "absent"), "--labels", str(labels_path),
                               "--model", str(model)], tmp_path))
    assert "absent" in line
    short = tmp_path / "short.json"
    labels = json.loads(labels_path.read_text())
    labels["02"] = labels["02"][:-3]
    short.write_text(json.dumps(labels))
    line = one_error_line(cli(["eval", str(data), "--labels", str(short), "--model", str(model),
                               "--out", str(tmp_path / "o")], tmp_path))
    assert "'02'" in line and str(FRAMES) in line and str(FRAMES - 3) in line


def test_eval_out_is_checked_and_an_earlier_eval_is_replaced_only_with_force(
    dataset, tmp_path: Path
) -> None:
    data, labels_path, model = dataset
    args = ["eval", str(data), "--labels", str(labels_path), "--model", str(model)]
    a_file = tmp_path / "a-file"
    a_file.write_text("not a folder")
    for out in (a_file, a_file / "below"):
        line = one_error_line(cli([*args, "--out", str(out)], tmp_path))
        assert str(out) in line
    out = tmp_path / "out"
    out.mkdir()
    (out / "roc.png").write_bytes(b"an earlier run's plot")
    line = one_error_line(cli([*args, "--out", str(out)], tmp_path))
    assert str(out) in line and "roc.png" in line and "--force" in line
    assert (out / "roc.png").read_bytes() == b"an earlier run's plot"
    forced = cli([*args, "--out", str(out), "--force"], tmp_path)
    assert forced.returncode == 0, forced.stderr
    assert (out / "roc.png").read_bytes()[:4] == b"\x89PNG"
    assert json.loads((out / "eval.json").read_text())["frames"] == 2 * FRAMES


def test_eval_default_out_is_a_new_folder_in_the_user_cache(
    dataset, tmp_path: Path, user_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data, labels_path, model = dataset
    monkeypatch.chdir(tmp_path)
    lines: list[str] = []
    for _ in range(2):
        evaluate_command([str(data)], labels=str(labels_path), model=str(model),
                         echo=lines.append)
    made = sorted((user_cache / "forecaster" / "eval").iterdir())
    assert len(made) == 2 and all(re.fullmatch(r"copy-\d{8}-\d{6}(-2)?", m.name) for m in made)
    for folder in made:
        assert (folder / "eval.json").is_file()
        assert any(line.startswith(f"wrote {folder / 'eval.json'}") for line in lines)
    assert list(tmp_path.iterdir()) == []


def test_patch_mode_model_and_global_row(dataset, tmp_path: Path) -> None:
    """A model recalibrated per location is scored in patch mode; model-global keeps the
    whole-frame numbers."""
    from forecaster.offline.train import recalibrate

    data, labels_path, model = dataset
    normal = tmp_path / "normal"
    rng = np.random.default_rng(9)
    yy, xx = np.mgrid[0:48, 0:48]
    for v in range(2):
        background = 80.0 + 60.0 * np.sin(xx / 7.0 + v) * np.cos(yy / 9.0)
        (normal / f"n{v}").mkdir(parents=True)
        for i in range(FRAMES):
            frame = np.clip(background + rng.normal(0.0, 2.0, background.shape), 0, 255)
            cv2.imwrite(str(normal / f"n{v}" / f"{i:03d}.png"), frame.astype(np.uint8))
    patched = tmp_path / "patched.keras"
    calibration = recalibrate(model, patched, data=[str(normal / "n0")],
                              motion_data=[str(normal)], fused=None)
    assert calibration["frames"] == calibration["patch"]["frames"] == FRAMES - 10
    assert calibration["patch"]["motion_videos"] == ["n0", "n1"]
    assert calibration["patch"]["terms"]["motion"]["frames"] == 2 * (FRAMES - 11)
    assert set(calibration["patch"]["terms"]) == {"global", "motion"}
    lines: list[str] = []
    report = evaluate_command([str(data)], labels=str(labels_path), model=str(patched),
                              out=tmp_path / "out", echo=lines.append)
    assert report["scorer_mode"] == "patch"
    assert "the scorer's patch mode (8x8 windows every 4 px" in "\n".join(lines)
    results = report["results"]
    for row in ("model", "model-global"):
        for protocol in PROTOCOLS:
            assert results[row][protocol]["micro_auc"] == 1.0, (row, protocol)
    assert "model-global" in "\n".join(lines)


def test_model_term_and_cue_rows_are_the_fused_scores_two_terms(dataset, tmp_path: Path
                                                                ) -> None:
    """The fused score is its two terms weighed and standardised: eval's model-term and cue
    rows are exactly those terms, so the table shows what each adds."""
    data, labels_path, _ = dataset
    model = make_tiny_model(tmp_path / "fused.keras", perturb=False, fused=True)
    # the made-up calibration's cue is at 48 rows, the frames' own size
    lines: list[str] = []
    report = evaluate_command([str(data)], labels=str(labels_path), model=str(model),
                              out=tmp_path / "out", echo=lines.append, force=True)
    assert report["scorer_mode"] == "fused"
    fused = report["model_card"]["calibration"]["fused"]
    raw = json.loads((tmp_path / "out" / "eval.json").read_text())
    assert {"model-term", "cue"} <= set(raw["results"]) and {"model-term", "cue"} <= set(
        raw["methods"])
    table = "\n".join(lines)
    assert re.search(r"^model-term\s+causal\s+\d", table, re.M)
    assert re.search(r"^cue\s+causal\s+\d", table, re.M)
    # the test frames: a white square jumping to a new place each frame from ONSET on,
    # which both the model's error and the cue see
    results = report["results"]
    for row in ("model-term", "cue"):
        assert results[row]["causal"]["micro_auc"] > 0.9, row
    # a card without the normal motion per place: its cue term is the plain cue
    for protocol in PROTOCOLS:
        assert results["place-cue"][protocol]["micro_auc"] == pytest.approx(
            results["cue"][protocol]["micro_auc"])
    assert fused["error"] == "worst"  # the term is the card's, not the whole-frame error
    assert "model-term" in raw["methods"]["model-term"] or "error term" in raw["methods"][
        "model-term"]


def test_eval_without_fused_mode_still_reports_the_cue(dataset, tmp_path: Path) -> None:
    data, labels_path, model = dataset
    report = evaluate_command([str(data)], labels=str(labels_path), model=str(model),
                              out=tmp_path / "out", echo=lambda _: None)
    assert report["scorer_mode"] == "global"
    results = report["results"]
    assert results["cue"]["causal"]["micro_auc"] > 0.9
    assert results["model-term"]["causal"]["micro_auc"] == results["model-global"]["causal"][
        "micro_auc"]


def _walker_video(folder: Path, frames: int, *, onset: int | None = None, seed: int = 0
                  ) -> list[int]:
    """A square walking down the left side of a still scene, over and over; from ``onset``
    it walks down the right side instead, at the same speed (labelled 1 from then)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    yy, xx = np.mgrid[0:48, 0:48]
    background = 80.0 + 40.0 * np.sin(xx / 5.0) * np.cos(yy / 6.0)
    labels = []
    for i in range(frames):
        frame = background + rng.normal(0.0, 1.0, background.shape)
        right = onset is not None and i >= onset
        y, x = (2 * i) % 36, 34 if right else 4
        frame[y : y + 10, x : x + 10] = 250.0
        cv2.imwrite(str(folder / f"{i:03d}.png"), np.clip(frame, 0, 255).astype(np.uint8))
        labels.append(int(right))
    return labels


def test_place_cue_row_sees_a_walker_where_none_walks(tmp_path: Path) -> None:
    """Calibrated on footage where walkers keep to the left, the card keeps the normal
    motion per place: eval's place-cue row (and the default score) finds a walker on the
    right at the same speed, which the plain cue cannot tell from the normal ones."""
    from forecaster.detection.fused import DEFAULT_FUSED
    from forecaster.offline.train import recalibrate

    model = make_tiny_model(tmp_path / "tiny.keras", perturb=False)
    normal = tmp_path / "normal"
    for v in range(2):
        _walker_video(normal / f"n{v}", 60, seed=v)
    placed = tmp_path / "placed.keras"
    calibration = recalibrate(model, placed, data=[str(normal / "n0")],
                              motion_data=[str(normal)], fused=DEFAULT_FUSED)
    place = calibration["fused"]["place"]
    assert (place["rows"], place["cols"]) == (11, 11)  # 8x8 windows every 4 px of 48x48
    divisors = np.asarray(place["divisors"]).reshape(11, 11)
    assert divisors[:, :3].mean() > 1.15 * divisors[:, 6:].mean()  # the left is where they walk
    data = tmp_path / "test"
    labels = {"t0": _walker_video(data / "t0", 60, onset=30, seed=5)}
    labels_path = tmp_path / "labels.json"
    labels_path.write_text(json.dumps(labels))
    lines: list[str] = []
    report = evaluate_command([str(data)], labels=str(labels_path), model=str(placed),
                              out=tmp_path / "out", echo=lines.append)
    assert re.search(r"^place-cue\s+causal\s+\d", "\n".join(lines), re.M)
    results = report["results"]
    assert results["place-cue"]["causal"]["micro_auc"] > 0.9
    assert results["cue"]["causal"]["micro_auc"] < 0.75
    assert results["model"]["causal"]["micro_auc"] > 0.9
