"""Replay: files through the live pipeline's code; its outputs; live = replay."""

from __future__ import annotations

import itertools
import json
import math
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from forecaster.client import Subscriber
from forecaster.offline.detection_metrics import roc_auc
from forecaster.offline.replay import replay_command
from forecaster.offline.scores_csv import CSV_COLUMNS, read_scores_csv
from forecaster.protocol import Event, Forecast, Score, Status
from tests.conftest import free_port
from tests.daemon_harness import wait_for

pytestmark = pytest.mark.timeout(120)

SIZE = 32
CLIP = "synthetic:?frames=100&seed=1&anomaly_rate=0.05&width=64&height=48"


def make_tiny_model(path: Path, *, perturb: bool = True, fused: bool = False,
                    place: bool = False) -> Path:
    """A small untrained model with a calibration, saved to ``path``.

    Untouched, the model predicts "the next frame equals this one" (its output layer starts
    at zero); ``perturb`` gives that layer random weights, so predictions depend on the
    carried state. ``fused`` adds a (made-up) calibration of the fused mode, with a motion
    cue at 48 rows; ``place`` a (made-up) normal motion per place on a grid that is not
    the cue's (resized to it where the cue is measured).
    """
    import keras

    from forecaster.model.artifact import ModelCard, save_model
    from forecaster.model.builders import build_model

    keras.utils.set_random_seed(3)
    model = build_model("convlstm-ae", SIZE, SIZE)
    if perturb:
        layer = model.get_layer("delta")
        weights = layer.get_weights()
        weights[0] = np.random.default_rng(0).normal(0, 0.05, weights[0].shape).astype("float32")
        layer.set_weights(weights)
    card = ModelCard(
        arch="convlstm-ae",
        height=SIZE,
        width=SIZE,
        window=10,
        calibration={"log_mse_mean": -7.0, "log_mse_std": 0.5, "frames": 100},
    )
    if fused:
        from forecaster.detection.fused import FusedSettings

        card.calibration["fused"] = {
            **FusedSettings(error="worst", cue_height=48).as_dict(), "height": SIZE,
            "width": SIZE, "frames": 100, "score_mean": 0.5, "score_std": 1.5,
            "terms": {"error": {"mean": -7.0, "std": 0.5}, "flow": {"mean": -2.0, "std": 1.0}}}
        if place:
            from forecaster.detection.flow import PlaceNorm

            divisors = np.random.default_rng(1).uniform(0.6, 3.0, (7, 9))
            card.calibration["fused"]["place"] = PlaceNorm(divisors).as_dict()
    save_model(model, path, card)
    return path


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("model") / "tiny.keras")


@pytest.fixture(scope="module")
def tiny_fused_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("model") / "fused.keras", fused=True)


@pytest.fixture(scope="module")
def tiny_placed_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("model") / "placed.keras", fused=True,
                           place=True)


def env() -> dict[str, str]:
    out = dict(os.environ)
    out["TF_CPP_MIN_LOG_LEVEL"] = "3"
    out["PYTHONUNBUFFERED"] = "1"
    return out


def cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "forecaster", *args], cwd=cwd, env=env(),
                          capture_output=True, text=True, timeout=120)


def one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 2, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.strip().splitlines() if "error" in line.lower()]
    assert len(lines) == 1, result.stderr
    return lines[0]


def write_avi(path: Path, frames: int, seed: int = 6) -> Path:
    from forecaster.sources.synthetic import SyntheticScene

    scene = SyntheticScene(seed=seed, height=72, width=96, anomaly_rate=0.05)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 25.0, (96, 72))
    for i in range(frames):
        writer.write(cv2.cvtColor(scene.frame(i), cv2.COLOR_GRAY2BGR))
    writer.release()
    return path


def close(a: float, b: float) -> bool:
    """Equal to 1e-5 (relative for values above 1, absolute below)."""
    return abs(a - b) <= 1e-5 * max(1.0, abs(b))


def test_replay_writes_scores_summary_and_timeline(tiny_model: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    summary = replay_command([CLIP], out=out, model=str(tiny_model), chunk=64, preview=True,
                             progress=False)
    rows = read_scores_csv(out / "scores.csv")
    header = (out / "scores.csv").read_text().splitlines()[0].split(",")
    assert header == [*CSV_COLUMNS, "label"]
    assert [r["seq"] for r in rows] == list(range(10, 100))
    assert {r["camera"] for r in rows} == {"synthetic-1"}
    assert all(r["label"] in (0, 1) for r in rows)
    labels = np.array([r["label"] for r in rows])
    assert 0 < labels.sum() < len(labels)
    saved = json.loads((out / "summary.json").read_text())
    assert saved == json.loads(json.dumps(summary))
    video = saved["videos"][0]
    assert video["frames"] == 100 and video["frames_scored"] == 90
    assert video["fps"] > 0
    expected = roc_auc(labels, np.array([r["score"] for r in rows]))
    assert video["auc"] == pytest.approx(expected, abs=1e-12)
    assert saved["total"]["auc"] == pytest.approx(expected, abs=1e-12)
    for event in video["events"]:
        assert set(event) == {"start_seq", "end_seq", "peak_score"}
    png = (out / "timeline.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    import av

    from forecaster.recording.h264 import faststart

    assert faststart(out / "synthetic-1.mp4")  # H.264 with its index first: a browser plays it
    with av.open(str(out / "synthetic-1.mp4")) as container:
        assert container.streams.video[0].codec_context.codec_tag == "avc1"
    preview = cv2.VideoCapture(str(out / "synthetic-1.mp4"))
    shown, marked = 0, []
    while True:
        ok, image = preview.read()
        if not ok:
            break
        shown += 1
        # actual | forecast | error side by side, each panel in the source's 64:48 shape
        assert abs(image.shape[1] / 3 / image.shape[0] - 64 / 48) < 0.02
        blue, green, red = (int(v) for v in image[1, image.shape[1] // 2])
        marked.append(blue > 180 and red > 180 and green < 100)  # the LABEL bar, magenta
    preview.release()
    assert shown == 100
    assert sum(marked[10:]) == labels.sum()  # a frame is marked when it is labelled


def test_chunked_replay_equals_one_frame_per_call(tiny_model: Path, tmp_path: Path) -> None:
    replay_command([CLIP], out=tmp_path / "chunked", model=str(tiny_model), chunk=64,
                   progress=False)
    replay_command([CLIP], out=tmp_path / "single", model=str(tiny_model), chunk=1,
                   progress=False)
    # paced at the scene's own rate, one frame per call, as a camera would deliver it
    paced = replay_command([f"{CLIP}&fps=200"], out=tmp_path / "paced", model=str(tiny_model),
                           realtime=True, progress=False)
    assert paced["chunk"] == 1 and paced["total"]["fps"] < 200 * 1.1
    chunked = read_scores_csv(tmp_path / "chunked" / "scores.csv")
    single = read_scores_csv(tmp_path / "single" / "scores.csv")
    assert [r["seq"] for r in chunked] == [r["seq"] for r in single]
    def values(rows: list[dict]) -> list[tuple]:
        return [(r["seq"], r["mse"], r["psnr"], r["score"], r["anomaly"]) for r in rows]

    assert values(read_scores_csv(tmp_path / "paced" / "scores.csv")) == values(single)
    for a, b in zip(chunked, single, strict=True):
        assert abs(a["mse"] - b["mse"]) <= 1e-5 * b["mse"], (a, b)
        assert close(a["psnr"], b["psnr"]) and close(a["score"], b["score"]), (a, b)
        assert a["anomaly"] == b["anomaly"]


def test_publish_sends_every_frame_and_ends_with_status(tiny_model: Path, tmp_path: Path) -> None:
    from forecaster.config import Config, ScorerConfig
    from forecaster.ipc.publisher import Publisher

    # thresholds every frame exceeds: an episode starts and is still open at the end
    always = Config(scorer=ScorerConfig(threshold_on=-1000.0, threshold_off=-2000.0))

    endpoint = f"ipc://{tmp_path}/replay.sock"
    with Publisher(endpoint, sndhwm=100_000, linger_ms=1000) as publisher, \
            Subscriber(endpoint, rcvhwm=100_000) as sub:
        probe = Status(camera="probe", seq=0, ts=0.0, fps=0.0, frames_captured=0,
                       frames_dropped=0, state_resets=0, connected=True, ended=False)
        for _ in range(200):  # wait until the subscription has joined
            publisher.send(probe)
            if sub.recv(timeout=0.02) is not None:
                break
        while sub.recv(timeout=0.05) is not None:
            pass
        replay_command([CLIP], out=tmp_path / "out", model=str(tiny_model), chunk=32,
                       config=always, publisher=publisher, progress=False)
        messages = []
        while (msg := sub.recv(timeout=1.0)) is not None:
            messages.append(msg)
            if isinstance(msg, Status) and msg.ended:
                break
    forecasts = [m for m in messages if isinstance(m, Forecast)]
    scores = [m for m in messages if isinstance(m, Score)]
    assert [f.seq for f in forecasts] == list(range(100))
    assert all(f.target_seq == f.seq + 1 and f.frame.shape == (SIZE, SIZE) for f in forecasts)
    rows = read_scores_csv(tmp_path / "out" / "scores.csv")
    assert [s.seq for s in scores] == [r["seq"] for r in rows]
    assert all(s.score == r["score"] and s.mse == r["mse"] for s, r in zip(scores, rows, strict=True))
    # as the daemon does: each score before its frame's event and forecast, and the open
    # episode's end event before the ended status
    start = next(i for i, m in enumerate(messages) if isinstance(m, Event))
    assert [type(m) for m in messages[start - 1 : start + 2]] == [Score, Event, Forecast]
    assert messages[start - 1].seq == messages[start].seq == messages[start + 1].seq
    end, status = messages[-2:]
    assert isinstance(end, Event) and end.state == "end" and end.seq == 99
    assert [m.state for m in messages if isinstance(m, Event)] == ["start", "end"]
    assert isinstance(status, Status) and status.ended and status.reason == "end of stream"
    assert status.camera == "synthetic-1" and status.frames_captured == 100 and status.seq == 99


def test_missing_and_corrupt_inputs_exit_2(tiny_model: Path, tmp_path: Path) -> None:
    missing = tmp_path / "nope.avi"
    line = one_error_line(cli(["replay", str(missing), "--model", str(tiny_model)], tmp_path))
    assert str(missing) in line
    corrupt = tmp_path / "random.avi"
    corrupt.write_bytes(np.random.default_rng(0).bytes(20_000))
    line = one_error_line(cli(["replay", str(corrupt), "--model", str(tiny_model)], tmp_path))
    assert str(corrupt) in line
    line = one_error_line(cli(["replay", CLIP, "--model", str(tmp_path / "none.keras")], tmp_path))
    assert "none.keras" in line


def test_labels_of_wrong_length_exit_2(tiny_model: Path, tmp_path: Path) -> None:
    video = write_avi(tmp_path / "clip.avi", 30)
    folder = tmp_path / "frames"
    folder.mkdir()
    for i in range(12):
        cv2.imwrite(str(folder / f"{i:03d}.png"), np.full((40, 40), i * 10, np.uint8))
    labels = tmp_path / "labels.json"
    labels.write_text(json.dumps({"clip": [0] * 29, "frames": [0] * 12}))
    line = one_error_line(cli(["replay", str(video), "--labels", str(labels), "--model",
                               str(tiny_model)], tmp_path))
    assert "'clip'" in line and "30" in line and "29" in line
    labels.write_text(json.dumps({"frames": [0] * 13}))
    line = one_error_line(cli(["replay", str(folder), "--labels", str(labels), "--model",
                               str(tiny_model), "--out", str(tmp_path / "o")], tmp_path))
    assert "'frames'" in line and "12" in line and "13" in line


def test_folder_of_images_of_different_sizes_replays_every_image(
    tiny_model: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "mixed"
    folder.mkdir()
    for i in range(20):  # three large images first, then small gray and colour ones
        shape = (1500, 1500, 3) if i < 3 else (48, 64) if i % 2 else (60, 40, 3)
        cv2.imwrite(str(folder / f"{i:03d}.png"), np.full(shape, i * 10, np.uint8))
    out = tmp_path / "out"
    result = cli(["replay", str(folder), "--model", str(tiny_model), "--out", str(out)], tmp_path)
    assert result.returncode == 0, result.stderr
    assert "skipped" not in result.stderr
    video = json.loads((out / "summary.json").read_text())["videos"][0]
    assert video["frames"] == 20 and video["frames_skipped"] == 0


def test_out_that_is_a_file_or_cannot_be_made_exit_2(tiny_model: Path, tmp_path: Path) -> None:
    a_file = tmp_path / "a-file"
    a_file.write_text("not a folder")
    for out in (a_file, a_file / "below"):
        line = one_error_line(cli(["replay", CLIP, "--model", str(tiny_model), "--out", str(out)],
                                  tmp_path))
        assert str(out) in line
    if os.geteuid() != 0:  # root may write anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        line = one_error_line(cli(["replay", CLIP, "--model", str(tiny_model), "--out",
                                   str(locked)], tmp_path))
        assert "not writable" in line and str(locked) in line


def test_out_holding_an_earlier_replay_is_refused_unless_force(
    tiny_model: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    clip = write_avi(tmp_path / "clip.avi", 15)
    first = cli(["replay", str(clip), "--model", str(tiny_model), "--out", str(out), "--preview"],
                tmp_path)
    assert first.returncode == 0, first.stderr
    assert (out / "clip.mp4").is_file()
    (out / "notes.txt").write_text("the user's own file")
    again = [CLIP, "--model", str(tiny_model), "--out", str(out)]
    line = one_error_line(cli(["replay", *again], tmp_path))
    assert str(out) in line and "scores.csv" in line and "--force" in line
    assert {r["camera"] for r in read_scores_csv(out / "scores.csv")} == {"clip"}
    forced = cli(["replay", *again, "--force"], tmp_path)
    assert forced.returncode == 0, forced.stderr
    assert {r["camera"] for r in read_scores_csv(out / "scores.csv")} == {"synthetic-1"}
    assert sorted(p.name for p in out.iterdir()) == [
        "notes.txt", "scores.csv", "summary.json", "timeline.png"]


def test_default_out_is_a_new_folder_in_the_user_cache(
    tiny_model: Path, tmp_path: Path, user_cache: Path
) -> None:
    work = tmp_path / "work"
    work.mkdir()
    result = cli(["replay", "synthetic:?frames=12&width=64&height=48", "--model", str(tiny_model)], work)
    assert result.returncode == 0, result.stderr
    assert list(work.iterdir()) == []
    (made,) = (user_cache / "forecaster" / "replay").iterdir()
    assert re.fullmatch(r"\d{8}-\d{6}", made.name)
    assert f"wrote {made}" in result.stdout
    assert (made / "summary.json").is_file()


@pytest.mark.timeout(180)
@pytest.mark.parametrize("which", ["tiny_model", "tiny_fused_model", "tiny_placed_model"])
def test_live_scores_equal_replay_scores(which: str, request: pytest.FixtureRequest,
                                         tmp_path: Path) -> None:
    """The fused mode's motion cue is made by the capture process live and by replay
    offline (divided by the card's normal motion per place where it has one): the scores
    agree all the same."""
    tiny_model = request.getfixturevalue(which)
    frames = 60
    video = write_avi(tmp_path / "clip.avi", frames)
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    config = tmp_path / "config.toml"
    config.write_text("\n".join([
        "[capture]",
        f"size = [{SIZE}, {SIZE}]",
        "[model]",
        f'path = "{tiny_model}"',
        "[publish]",
        f'endpoint = "{endpoint}"',
        "sndhwm = 10000",
        "status_interval_s = 0.5",
        "[scorer]",  # every frame over the threshold: an episode is still open at the end
        "threshold_on = -1000.0",
        "threshold_off = -2000.0",
        "[[cameras]]",
        'id = "clip"',
        f'source = "{video}"',
        "fps = 20",
    ]) + "\n")
    live: dict[int, Score] = {}
    live_events: list[tuple[str, int]] = []
    with Subscriber(endpoint, kinds=["score", "status", "event"]) as sub:
        proc = subprocess.Popen(
            [sys.executable, "-m", "forecaster", "run", "--config", str(config), "--max-frames",
             str(frames)],
            cwd=tmp_path, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 150
        ended = False
        while time.monotonic() < deadline:
            msg = sub.recv(timeout=0.5)
            if isinstance(msg, Score):
                live[msg.seq] = msg
            elif isinstance(msg, Event):
                assert not ended, "an event after the ended status"
                live_events.append((msg.state, msg.seq))
            elif isinstance(msg, Status) and msg.ended:
                ended = True
            elif msg is None and proc.poll() is not None:
                break
        _out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert ended, err
    assert sorted(live) == list(range(10, frames)), "frames were dropped"
    assert live_events == [("start", 11), ("end", frames - 1)]
    from forecaster.config import load_config
    from forecaster.ipc.publisher import Publisher

    replay_endpoint = f"ipc://{tmp_path}/replay.sock"
    with Publisher(replay_endpoint, sndhwm=100_000, linger_ms=1000) as publisher, \
            Subscriber(replay_endpoint, kinds=["event", "status"]) as sub:
        probe = Status(camera="probe", seq=0, ts=0.0, fps=0.0, frames_captured=0,
                       frames_dropped=0, state_resets=0, connected=True, ended=False)
        wait_for(lambda: publisher.send(probe) and sub.recv(timeout=0.02), 10, "the subscription")
        while sub.recv(timeout=0.05) is not None:
            pass
        replay_command([str(video)], out=tmp_path / "replay", model=str(tiny_model), chunk=64,
                       config=load_config(config), publisher=publisher, progress=False)
        replayed = []
        while (msg := sub.recv(timeout=1.0)) is not None and not isinstance(msg, Status):
            replayed.append((msg.state, msg.seq))
    assert replayed == live_events
    rows = {r["seq"]: r for r in read_scores_csv(tmp_path / "replay" / "scores.csv")}
    assert sorted(rows) == sorted(live)
    for seq, score in live.items():
        row = rows[seq]
        assert row["camera"] == "clip"
        assert abs(score.mse - row["mse"]) <= 1e-5 * row["mse"], (seq, score, row)
        assert close(score.psnr, row["psnr"]) and close(score.score, row["score"]), (seq, score)
        assert score.anomaly == row["anomaly"]


def test_timeline_notes_videos_left_out_and_titles_each_panel(tmp_path: Path) -> None:
    from forecaster.offline.replay_results import MAX_PANELS, VideoResult, plot_replay, timeline

    results = [
        VideoResult(name=f"v{i}", camera=f"v{i}", source=f"v{i}", frames=3, seqs=[1, 2],
                    scores=[0.5, 1.5])
        for i in range(MAX_PANELS + 2)
    ]
    title, panels = timeline(results, threshold_on=3.0)
    assert title == f"first {MAX_PANELS} of {MAX_PANELS + 2} videos (all are in scores.csv)"
    assert [p.title for p in panels] == [f"v{i}: 3 frames, 0 events" for i in range(MAX_PANELS)]
    few_title, few = timeline(results[:2], threshold_on=3.0)
    assert few_title == "" and len(few) == 2
    png = plot_replay(tmp_path / "timeline.png", results[:2], 3.0)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_replay_with_labels_reports_the_model_term_and_the_cue_alone(
        tiny_fused_model: Path, tiny_model: Path, tmp_path: Path) -> None:
    """Fused mode: the summary has the AUC of each term alone next to the score's, on the
    same frames."""
    summary = replay_command([CLIP], out=tmp_path / "fused", model=str(tiny_fused_model),
                             chunk=64, progress=False)
    total = summary["total"]
    assert total["auc"] is not None
    assert total["auc_model_term"] is not None and total["auc_cue"] is not None
    assert 0.0 <= total["auc_model_term"] <= 1.0 and 0.0 <= total["auc_cue"] <= 1.0
    assert total["auc_cue"] != total["auc_model_term"]
    # global mode has no terms: nothing to report, and nothing made up
    summary = replay_command([CLIP], out=tmp_path / "global", model=str(tiny_model), chunk=64,
                             progress=False)
    assert summary["total"]["auc_model_term"] is None and summary["total"]["auc_cue"] is None


def write_mp4_with_creation_time(path: Path, frames: int, fps: int, created: str) -> None:
    """An H.264 MP4 of the synthetic scene (anomalies often) whose container names the time
    its recording began, as a camera writes it."""
    import av

    from forecaster.sources.synthetic import SyntheticScene

    scene = SyntheticScene(seed=1, anomaly_rate=0.2)
    with av.open(str(path), "w", format="mp4") as container:
        container.metadata["creation_time"] = created
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = 160, 120, "yuv420p"
        for i in range(frames):
            frame = av.VideoFrame.from_ndarray(
                cv2.cvtColor(scene.frame(i), cv2.COLOR_GRAY2BGR), format="bgr24")
            frame.pts = i
            container.mux(stream.encode(frame))
        container.mux(stream.encode())


@pytest.mark.timeout(180)
def test_replay_times_are_the_position_in_the_video_or_the_files_own_time(
        tmp_path: Path) -> None:
    from forecaster.config import load_config
    from forecaster.offline.replay_time import parse_time

    toml = tmp_path / "config.toml"
    toml.write_text("[recording]\npre_s = 0.2\npost_s = 0.2\n")
    video = tmp_path / "cam.mp4"
    write_mp4_with_creation_time(video, 100, 10, "2024-05-01T12:00:00.000000Z")
    origin = parse_time("2024-05-01T12:00:00Z")
    assert origin == 1714564800.0
    cases = [(video, origin, 10.0, "file"),
             # no time of its own, no nominal rate: positions at --fps from 0
             ("synthetic:?seed=1&anomaly_rate=0.2&frames=100&fps=0", 0.0, 20.0, "position")]
    for index, (source, start, fps, time_from) in enumerate(cases):
        out = tmp_path / f"out{index}"
        summary = replay_command([str(source)], out=out, config=load_config(toml), clips=True,
                                 fps=fps, progress=False)
        assert summary["videos"][0]["time_from"] == time_from
        rows = read_scores_csv(out / "scores.csv")
        assert rows and all(r["ts"] == pytest.approx(start + r["seq"] / fps, abs=1e-6)
                            for r in rows)
        sidecars = [json.loads(p.read_text()) for p in (out / "events").glob("*/*.json")]
        assert sidecars, "no event recorded"
        day = time.strftime("%Y%m%d", time.gmtime(start))
        for sidecar in sidecars:
            assert sidecar["start_ts"] == pytest.approx(start + sidecar["start_seq"] / fps)
            assert sidecar["end_ts"] == pytest.approx(start + sidecar["end_seq"] / fps)
            stem = time.strftime("%Y%m%d-%H%M%S", time.gmtime(sidecar["start_ts"]))
            assert sidecar["clip"].split("/")[1].startswith(f"{stem}-{sidecar['start_seq']}.")
            assert stem.startswith(day)


@pytest.mark.timeout(180)
def test_merge_gap_merges_the_replays_events_closer_than_it(tmp_path: Path) -> None:
    """Through the real engine: events whose gap (from one's settling frame to the next
    one's start, in the video's time) is under ``merge_gap_s`` become one, which ends
    ``merge_gap_s`` after the last one settled."""
    from forecaster.config import parse_config

    fps, gap_s = 25.0, 1.02  # between two frames' times: no gap equals it
    source = "synthetic:?seed=1&anomaly_rate=0.2&frames=400&fps=0"
    found = {}
    for gap in (0.0, gap_s):
        config = parse_config({"scorer": {"merge_gap_s": gap}})
        summary = replay_command([source], out=tmp_path / f"gap{gap}", config=config, fps=fps,
                                 progress=False)
        found[gap] = [(e["start_seq"], e["end_seq"]) for e in summary["videos"][0]["events"]]
    apart = found[0.0]
    assert len(apart) >= 3, apart
    gaps = [(b[0] - a[1]) / fps for a, b in itertools.pairwise(apart) if a[1]]
    assert any(g < gap_s for g in gaps) and any(g >= gap_s for g in gaps), gaps
    expected: list[tuple[int, int | None]] = []
    for start, end in apart:
        if expected and expected[-1][1] is not None and (start - expected[-1][1]) / fps < gap_s:
            expected[-1] = (expected[-1][0], end)  # merged: the earlier one goes on
        else:
            expected.append((start, end))
    wait = math.ceil(gap_s * fps)  # an event ends gap_s after it settled, if the video lasts
    expected = [(start, None if end is None or end + wait > 399 else end + wait)
                for start, end in expected]
    assert found[gap_s] == expected, (apart, found[gap_s])
