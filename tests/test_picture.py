"""The live page's picture of a camera (shared memory at the end of its ring) and the box
around the anomalous region (score messages, snapshots)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest

from forecaster.config import RecordingConfig
from forecaster.detection.region import error_box
from forecaster.detection.scorer import Scorer
from forecaster.ipc.picture import WANTED_S, PictureSlot
from forecaster.ipc.ring import FrameRing
from forecaster.protocol import Event, ProtocolError, Score, decode, encode
from forecaster.recording.event_board import EventBoard, EventNotes
from forecaster.recording.recorder import Recorder


@pytest.fixture
def ring() -> Iterator[FrameRing]:
    ring = FrameRing.create(f"forecaster_pictest_{uuid.uuid4().hex[:8]}", 64, 64, slots=4)
    try:
        yield ring
    finally:
        ring.close()
        ring.unlink()


def test_the_capture_side_writes_pictures_only_while_a_page_asks(ring: FrameRing) -> None:
    capture = PictureSlot(ring)
    web = PictureSlot(FrameRing.attach(ring.name))
    image = np.zeros((360, 1280, 3), np.uint8)
    cv2.rectangle(image, (600, 100), (700, 200), (0, 0, 255), -1)
    assert not capture.offer(image, 0, 1.0, 640, now=1000.0)  # nobody asked
    assert web.read() is None
    web.want(0.2, now=1000.0)
    assert capture.offer(image, 1, 2.0, 640, now=1000.0)
    assert not capture.offer(image, 2, 2.1, 640, now=1000.1)  # within the interval
    picture = web.read()
    assert picture is not None and (picture.seq, picture.ts) == (1, 2.0)
    decoded = cv2.imdecode(np.frombuffer(picture.jpeg, np.uint8), cv2.IMREAD_COLOR)
    assert decoded.shape == (180, 640, 3)  # scaled to recording.max_width, aspect kept
    assert decoded[75, 325, 2] > 200 and decoded[75, 325, 0] < 60
    assert web.read(newer_than=1) is None  # nothing newer
    assert capture.offer(image, 3, 2.2, 640, now=1000.2)
    assert web.read(newer_than=1).seq == 3  # type: ignore[union-attr]
    # the request lapses by itself when the page stops renewing it (a web process gone)
    assert not capture.offer(image, 4, 2.3, 640, now=1000.0 + WANTED_S + 0.1)
    web.close()
    capture.close()


def test_a_picture_being_written_is_never_read_torn(ring: FrameRing) -> None:
    slot = PictureSlot(ring)
    assert slot.write(b"\xff\xd8 first", 5, 1.0)
    slot._meta[0] += 1  # a writer in the middle of its write
    assert slot.read() is None
    slot._meta[0] += 1
    assert slot.read().jpeg == b"\xff\xd8 first"  # type: ignore[union-attr]
    assert not slot.write(b"x" * (slot.capacity + 1), 6, 2.0)  # too big: refused whole
    assert slot.read().seq == 5  # type: ignore[union-attr]
    slot.close()


def test_the_box_surrounds_the_windows_of_largest_error() -> None:
    squared = np.full((64, 64), 1e-4, np.float32)
    squared[40:50, 8:20] = 0.2
    x0, y0, x1, y1 = error_box(squared)  # type: ignore[misc]
    assert x0 <= 8 and y0 <= 40 and x1 >= 20 and y1 >= 50
    assert x1 - x0 <= 24 and y1 - y0 <= 24  # around the blob, not the frame
    assert error_box(np.zeros((64, 64), np.float32)) is None


def test_scores_carry_the_box_only_at_or_above_threshold_off() -> None:
    scorer = Scorer({"log_mse_mean": -8.0, "log_mse_std": 0.5}, mode="global")
    calm = np.full((64, 64), 0.5, np.float32)
    assert scorer.score(calm, calm + 0.001).box is None
    wrong = calm.copy()
    wrong[10:20, 30:40] = 1.0
    result = scorer.score(calm, wrong)
    assert result.score >= scorer.threshold_off
    x0, y0, x1, y1 = result.box  # type: ignore[misc]
    assert x0 <= 30 and y0 <= 10 and x1 >= 40 and y1 >= 20


def test_the_box_crosses_the_wire_as_an_additive_field() -> None:
    score = Score("cam0", 7, 1.0, 0.01, 20.0, 4.0, True, 3.0, box=(8, 40, 24, 52))
    parts = encode(score)
    assert json.loads(parts[1])["box"] == [8, 40, 24, 52]
    assert decode(parts) == score
    plain = encode(Score("cam0", 8, 1.0, 0.01, 20.0, 0.0, False, 3.0))
    assert b"box" not in plain[1]  # absent when there is none: old readers see no change
    with pytest.raises(ProtocolError, match="box"):
        encode(Score("cam0", 9, 1.0, 0.01, 20.0, 4.0, True, 3.0, box=(5, 5, 5, 9)))
    bad = json.dumps({**json.loads(parts[1]), "box": [8, 40, "x", 52]}).encode()
    with pytest.raises(ProtocolError, match="box"):
        decode([parts[0], bad])


def test_the_snapshot_is_boxed_where_the_peak_frame_was_anomalous(tmp_path: Path) -> None:
    """The worker puts the peak frame's box on the event board (fractions of the model's
    frame); the capture's recorder draws it on the snapshot and names it in the sidecar."""
    board = EventBoard(1)
    notes = EventNotes(["cam"], board, size=(64, 64))
    notes.note(Score("cam", 24, 1.0, 0.01, 20.0, 3.5, False, 3.0, box=(0, 0, 8, 8)))
    notes.note(Event("cam", 24, 1.0, "start", 3.5))
    assert board.read(0).peak_box == (0.0, 0.0, 0.125, 0.125)  # type: ignore[union-attr]
    notes.note(Score("cam", 26, 1.1, 0.01, 20.0, 9.0, True, 3.0, box=(32, 16, 48, 40)))
    entry = board.read(0)
    assert entry is not None and entry.peak_seq == 26
    assert entry.peak_box == (0.5, 0.25, 0.75, 0.625)

    settings = RecordingConfig(pre_s=0.2, post_s=0.1, max_width=320)
    recorder = Recorder("cam", tmp_path, settings, model="m.keras")
    gray = np.full((180, 320, 3), 128, np.uint8)
    for seq in range(40):
        recorder.on_frame(gray, seq, 1000.0 + seq * 0.04)
        if seq == 24:
            recorder.start(24, 1000.0 + 24 * 0.04, 3.5, board.read(0).peak_box)  # type: ignore[union-attr]
            recorder.peak(26, 9.0, entry.peak_box)
        if seq == 30:
            recorder.end(30, 1000.0 + 30 * 0.04, 9.0)
    recorder.close()
    (sidecar_path,) = tmp_path.glob("cam/*.json")
    sidecar = json.loads(sidecar_path.read_text())
    assert sidecar["peak_seq"] == 26
    assert sidecar["box"] == [160, 45, 240, 112]  # in the snapshot's pixels
    snapshot = cv2.imread(str(tmp_path / sidecar["snapshot"]))
    assert snapshot.shape == (180, 320, 3)
    red = (snapshot[:, :, 2].astype(int) - snapshot[:, :, 1]) > 80
    # red along the box's left and top edges; none inside it nor away from it
    assert red[50:105, 156:165].any(axis=1).mean() > 0.9, red[50:105, 156:165]
    assert red[41:50, 170:230].any(axis=0).mean() > 0.9
    assert not red[60:100, 170:230].any() and not red[:35].any()


def test_the_page_keeps_the_box_while_the_episode_is_open(ring: FrameRing) -> None:
    from forecaster.web.live import LiveCamera

    camera = LiveCamera("cam0", FrameRing.attach(ring.name))
    camera.add_score(Score("cam0", 1, 1.0, 0.01, 20.0, 2.5, False, 3.0, box=(0, 0, 8, 8)))
    assert camera.state()["box"] == [0, 0, 8, 8]  # the page draws it once the episode opens
    camera.add_score(Score("cam0", 2, 1.1, 0.01, 20.0, 6.0, True, 3.0, box=(8, 8, 24, 20)))
    camera.add_score(Score("cam0", 3, 1.2, 0.01, 20.0, 1.0, True, 3.0))  # a quiet frame
    state = camera.state()
    assert state["box"] == [8, 8, 24, 20] and state["anomaly"]
    assert state["frame_size"] == [64, 64] and state["last_frame_ts"] is None  # no frame yet
    camera.add_score(Score("cam0", 4, 1.3, 0.01, 20.0, 0.5, False, 3.0))  # the episode ended
    assert camera.state()["box"] is None
    camera.picture.close()
