"""Clips copied from a camera's own H.264 (``[recording] copy_video``): the real capture loop
reads a real H.264 file (written here by libx264, with B-frames), a real event board tells it
of events, and the clips it writes are checked frame for frame against the file."""

from __future__ import annotations

import functools
import gc
import http.server
import json
import multiprocessing as mp
import os
import threading
import time
from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from forecaster.config import RecordingConfig
from forecaster.daemon.capture import Capture, CaptureSpec
from forecaster.ipc.channels import Flag, Outbox, channel_address
from forecaster.ipc.health import CameraField
from forecaster.ipc.ring import FrameRing
from forecaster.recording.clip_writer import ClipWriter
from forecaster.recording.event_board import BoardField, EventBoard
from forecaster.recording.h264 import faststart
from forecaster.recording.packets import ORPHAN, CopyRecorder, PacketTap
from forecaster.recording.recorder import CaptureRecorder, RecordingSpec
from forecaster.sources.luma import open_decoder
from tests.browser import start_browser, wait_until

GOP = 12
SIZE = (320, 240)


def scene(count: int, width: int = SIZE[0], height: int = SIZE[1]) -> list[np.ndarray]:
    """Frames that differ from each other: a coloured square moving over a gradient, with
    the frame's number written on it."""
    base = np.zeros((height, width, 3), np.uint8)
    base[:] = np.linspace(30, 120, width, dtype=np.uint8)[None, :, None]
    frames = []
    for index in range(count):
        image = base.copy()
        x = 10 + (index * 7) % (width - 60)
        image[60:110, x:x + 50] = (30, 60 + (index * 11) % 150, 220)
        cv2.putText(image, str(index), (20, height - 30), cv2.FONT_HERSHEY_SIMPLEX, 1.5,
                    (255, 255, 255), 3)
        frames.append(image)
    return frames


def write_h264(path: Path, count: int, container: str) -> None:
    """``count`` frames of :func:`scene` as H.264 (a keyframe every :data:`GOP` frames, two
    B-frames) in ``container`` (mp4; avi, whose packets carry no true showing times)."""
    with av.open(str(path), "w", format=container) as out:
        stream = out.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = *SIZE, "yuv420p"
        stream.options = {"preset": "veryfast",
                          "x264-params": f"keyint={GOP}:min-keyint={GOP}:scenecut=0:bframes=2"}
        for image in scene(count):
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="bgr24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)


def decoded(path: Path, format: str = "gray") -> list[np.ndarray]:
    with av.open(str(path)) as container:
        return [frame.to_ndarray(format=format) for frame in container.decode(video=0)]


def record(tmp_path: Path, video: Path | str, settings: RecordingConfig, frames: int,
           events: list[tuple[int, ...]], fps: float = 100.0) -> list[dict]:
    """Run the capture loop over ``video`` (looped, ``frames`` frames at ``fps``) with
    recording on; ``events``: (start, peak, end) seqs, each written on the board once the
    ring holds that frame (as the worker would, a little late), or the peak once it holds a
    fourth seq. The sidecars, by start."""
    folder = tmp_path / "events"
    folder.mkdir(exist_ok=True)
    name = f"fc_copy{os.getpid()}_{len(list(tmp_path.iterdir()))}"
    ring = FrameRing.create(name, 64, 64)
    live = str(video).startswith("rtsp://")
    board = EventBoard(1)
    spec = CaptureSpec(camera="cam", index=0, source=str(video), ring=ring.name, size=(64, 64),
                       fps=0.0 if live else fps, loop=not live, max_frames=frames, color=True,
                       recording=RecordingSpec(settings, str(folder), board, "m.keras"))
    stop = Flag(mp.get_context("spawn"))
    notify = Outbox(channel_address(name, "none"))
    fields = {BoardField.PEAK_SCORE: 5.0, BoardField.END_PEAK: 0.0}

    def worker() -> None:
        for event_id, (start, peak, end, *told) in enumerate(events, 1):
            for seq, row in ((start, {BoardField.PEAK_SEQ: start, BoardField.END_SEQ: -1}),
                             (told[0] if told else peak,
                              {BoardField.PEAK_SEQ: peak, BoardField.END_SEQ: -1}),
                             (end, {BoardField.PEAK_SEQ: peak, BoardField.END_SEQ: end,
                                    BoardField.END_PEAK: 5.0})):
                while ring.latest_seq < seq and not stop.is_set():
                    time.sleep(0.002)
                if seq == start:
                    started = time.time() - 0.01
                board.write(0, {**fields, BoardField.START_SEQ: start,
                                BoardField.START_TS: started, BoardField.END_TS: time.time(),
                                BoardField.EVENT_ID: event_id, **row})

    try:
        capture = Capture(spec, ring, notify, stop)
        capture.health.set(0, CameraField.WORKER_SEQ, 1e15)  # no worker to wait for
        capture.open()
        thread = threading.Thread(target=worker, daemon=True)
        thread.start()
        capture.run()
        stop.set()
        thread.join(5)
    finally:
        notify.close()
        ring.close()
        ring.unlink()
    sidecars = [json.loads(path.read_text()) for path in folder.glob("cam/*.json")]
    return sorted(sidecars, key=lambda sidecar: sidecar["start_seq"])


@pytest.mark.parametrize("container", ["mp4", "avi"])
def test_an_h264_source_is_copied_into_its_clips_frame_for_frame(tmp_path: Path,
                                                                  container: str) -> None:
    """Each clip holds the source's own frames, unchanged, at its size, from the keyframe at
    or before the pre-roll's start to the post-roll's end; the second event spans the file's
    loop back to its start; the snapshot is the peak frame (the second's, named 20 frames
    late, is no longer among the frames kept, and is decoded from the finished clip)."""
    video = tmp_path / f"source.{container}"
    count = 90
    write_h264(video, count, container)
    source = decoded(video)
    colour = decoded(video, "bgr24")
    assert len(source) == count
    settings = RecordingConfig(pre_s=0.2, post_s=0.1)
    sidecars = record(tmp_path, video, settings, 200, [(40, 50, 60), (80, 95, 110, 115)])
    assert len(sidecars) == 2, sidecars
    folder = tmp_path / "events"
    for sidecar, (start, peak, end) in zip(sidecars, [(40, 50, 60), (80, 95, 110)],
                                           strict=True):
        assert sidecar["copied"] is True and sidecar["codec"] == "avc1"
        assert (sidecar["width"], sidecar["height"]) == SIZE
        assert (sidecar["start_seq"], sidecar["peak_seq"], sidecar["end_seq"]) == (
            start, peak, end)
        first, last = sidecar["first_seq"], sidecar["last_seq"]
        # the pre-roll: from the last keyframe at least pre_s before the event's start
        assert first % count % GOP == 0, sidecar
        assert sidecar["first_ts"] <= sidecar["start_ts"] - settings.pre_s + 1e-3, sidecar
        assert first > start - 40 - GOP, sidecar  # 0.2 s at 100 frames/s, then a keyframe
        assert last >= end, json.dumps(sidecar)
        assert sidecar["last_ts"] >= sidecar["end_ts"] + settings.post_s - 0.05, sidecar
        assert sidecar["frames"] == last - first + 1 and not sidecar["frames_dropped"]
        clip = folder / sidecar["clip"]
        assert faststart(clip)
        frames = decoded(clip)
        assert len(frames) == sidecar["frames"]
        for offset, frame in enumerate(frames):
            assert np.array_equal(frame, source[(first + offset) % count]), offset
        with av.open(str(clip)) as opened:
            stream = opened.streams.video[0]
            duration = float(stream.duration * stream.time_base)
        assert duration == pytest.approx(sidecar["frames"] / sidecar["fps"], rel=0.05)
        # the file's own rate (its timestamps), not the 100 frames/s it was read at
        assert sidecar["fps"] == pytest.approx(25.0, rel=0.01)
        snapshot = cv2.imread(str(folder / sidecar["snapshot"]))
        assert snapshot is not None and snapshot.shape[:2] == (SIZE[1], SIZE[0])
        errors = [np.abs(snapshot.astype(int) - image).mean() for image in colour]
        assert int(np.argmin(errors)) == peak % count and min(errors) < 4, min(errors)
    assert sidecars[1]["first_seq"] < count < sidecars[1]["last_seq"]  # across the loop
    assert not list(folder.glob("cam/.*")), "temporary files left behind"



def test_a_pre_roll_longer_than_the_writers_queue_is_copied_whole(tmp_path: Path) -> None:
    """A pre-roll of about 360 packets (3.5 s at 100 frames/s), handed to the writer at once
    when the event starts, is copied whole with the event after it (the writer's queue holds
    packets up to twice ``preroll_max_mb``, not 256 frames)."""
    video = tmp_path / "source.mp4"
    count = 460
    write_h264(video, count, "mp4")
    source = decoded(video)
    [sidecar] = record(tmp_path, video, RecordingConfig(pre_s=3.5, post_s=0.1), 430,
                       [(380, 385, 390)])
    first, last = sidecar["first_seq"], sidecar["last_seq"]
    assert first <= 380 - 340 and last >= 390, sidecar
    assert sidecar["frames"] == last - first + 1 and not sidecar["frames_dropped"], sidecar
    assert not sidecar.get("interrupted"), sidecar
    frames = decoded(tmp_path / "events" / sidecar["clip"])
    assert len(frames) == sidecar["frames"]
    for offset, frame in enumerate(frames):
        assert np.array_equal(frame, source[(first + offset) % count]), offset


def test_a_packet_the_decoder_cannot_decode_does_not_stall_the_clip(tmp_path: Path) -> None:
    """A packet whose frame never comes (here: one the decoder is never given, as when it
    refuses a damaged packet) is given up on once ``REORDER_LIMIT`` later packets are in;
    the clip goes on past it to its end, with the packets after it."""
    video = tmp_path / "source.mp4"
    write_h264(video, 120, "mp4")
    settings = RecordingConfig(pre_s=0.05, post_s=0.05)
    writer = ClipWriter(tmp_path / "events", None, "m.keras", settings)
    tap = PacketTap(settings.pre_s + 1.0, 10**9)
    copier = CopyRecorder("cam", writer, settings, tap)
    lost = 30
    with av.open(str(video)) as container:
        stream = container.streams.video[0]
        tap.opened(stream)
        seq = 0
        for index, packet in enumerate(container.demux(stream)):
            if packet.size:
                tap.packet(packet)
            if index == lost:
                assert tap.kept[-1].key is False
                continue  # never decoded
            for frame in packet.decode():
                tap.frame(frame)
                now = time.time()
                copier.on_frame(seq, now)
                if seq == 20:
                    copier.start(seq, now, 5.0)
                elif seq == 60:
                    copier.end(seq, now, 5.0)
                seq += 1
                time.sleep(0.004)
    lost_packet = next(kept for kept in tap.kept if kept.index == lost)
    assert lost_packet.frame == ORPHAN
    assert all(kept.frame >= 0 for kept in tap.kept if kept.index != lost)
    assert copier.clip is None  # finished at its post-roll, not left waiting
    copier.finish()
    assert writer.close(timeout=30)
    [sidecar] = [json.loads(path.read_text()) for path in (tmp_path / "events").glob("cam/*.json")]
    assert sidecar["last_seq"] >= 60 and not sidecar.get("interrupted"), sidecar
    # the frames from the clip's first to its last (the lost packet gave none)
    assert sidecar["frames"] == sidecar["last_seq"] - sidecar["first_seq"] + 1, sidecar
    assert len(decoded(tmp_path / "events" / sidecar["clip"])) == sidecar["frames"]


def test_a_decoder_closed_stops_the_copying(tmp_path: Path) -> None:
    """The tap copies nothing between a decoder's close and the next one's open (a file
    that PyAV opens but cannot decode is read by OpenCV, whose frames are encoded)."""
    video = tmp_path / "source.mp4"
    write_h264(video, 20, "mp4")
    tap = PacketTap(5.0, 10**9)
    decoder = open_decoder(str(video), tap=tap)
    assert tap.copying and decoder.read() is not None
    decoder.close()
    assert not tap.copying
    again = open_decoder(str(video), tap=tap)
    assert tap.copying
    again.close()


def test_a_copied_clip_ends_when_the_source_is_no_longer_copied(tmp_path: Path) -> None:
    """A copied clip under way when the camera's frames stop being copied (a reconnect to a
    stream that cannot be) is finished with what it has, not left open; the next event is
    encoded from the frames."""
    video = tmp_path / "source.mp4"
    write_h264(video, 60, "mp4")
    settings = RecordingConfig(pre_s=0.05, post_s=0.05)
    board = EventBoard(1)
    tap = PacketTap(1.0, 10**9)
    folder = tmp_path / "events"
    folder.mkdir()
    recorder = CaptureRecorder(RecordingSpec(settings, str(folder), board, "m.keras"), "cam", 0,
                               tap)
    decoder = open_decoder(str(video), tap=tap, color=False)
    fields = {BoardField.PEAK_SCORE: 5.0, BoardField.END_PEAK: 0.0, BoardField.END_SEQ: -1}
    for seq in range(40):
        assert decoder.read() is not None and tap.take()
        now = time.time()
        if seq in (10, 30):  # an event starts
            board.write(0, {**fields, BoardField.EVENT_ID: seq, BoardField.START_SEQ: seq,
                            BoardField.START_TS: now, BoardField.PEAK_SEQ: seq})
        if seq == 20:
            tap.closed()  # as the decoder of a stream that cannot be copied leaves it
        if tap.copying:
            recorder.on_copied(seq, now)
        else:  # no longer copied: the frames come as images
            recorder.on_frame(np.zeros((SIZE[1], SIZE[0], 3), np.uint8), seq, now)
        time.sleep(0.004)
    assert recorder.copier is not None and recorder.copier.clip is None  # finished at 20
    decoder.close()
    recorder.close()
    sidecars = sorted((json.loads(path.read_text()) for path in folder.glob("cam/*.json")),
                      key=lambda sidecar: sidecar["start_seq"])
    assert [(s["start_seq"], s["copied"]) for s in sidecars] == [(10, True), (30, False)]
    assert sidecars[0]["interrupted"] and 15 <= sidecars[0]["last_seq"] <= 19, sidecars[0]
    assert not list(folder.glob("cam/.*")), "temporary files left behind"

@pytest.mark.timeout(120)
def test_an_rtsp_stream_is_copied_into_its_clips_frame_for_frame(tmp_path: Path) -> None:
    """An H.264 camera over RTSP (GStreamer's server, the file's H.264 as it is): the clip
    holds the stream's own frames, whose packets carry no showing times of their own."""
    from forecaster.bench.rtsp import RtspServer, rtsp_server_missing

    missing = rtsp_server_missing()
    if missing is not None:
        pytest.skip(missing)
    video = tmp_path / "source.mp4"
    count = 90
    write_h264(video, count, "mp4")
    source = decoded(video)
    with RtspServer(video, repeats=2) as server:
        (sidecar,) = record(tmp_path, server.url, RecordingConfig(pre_s=0.2, post_s=0.2), 80,
                            [(40, 45, 50)])
    assert sidecar["copied"] is True and (sidecar["width"], sidecar["height"]) == SIZE
    first = sidecar["first_seq"]
    assert first % GOP == 0 and first <= 40 - 5 and sidecar["last_seq"] >= 50, sidecar
    frames = decoded(tmp_path / "events" / sidecar["clip"])
    assert len(frames) == sidecar["frames"] == sidecar["last_seq"] - first + 1
    for offset, frame in enumerate(frames):
        assert np.array_equal(frame, source[(first + offset) % count]), offset


@pytest.mark.parametrize("case", ["copy_video off", "not H.264"])
def test_a_source_not_copied_is_encoded_at_most_max_width(tmp_path: Path, case: str) -> None:
    """``copy_video = false``, or a source that is not H.264 (MPEG-4 Part 2 here): the clip is
    encoded from the frames, at most ``max_width`` wide, in colour."""
    video = tmp_path / "source.mp4"
    if case == "not H.264":
        writer = cv2.VideoWriter(str(video), cv2.VideoWriter.fourcc(*"mp4v"), 25, SIZE)
        for image in scene(60):
            writer.write(image)
        writer.release()
    else:
        write_h264(video, 60, "mp4")
    settings = RecordingConfig(pre_s=0.1, post_s=0.1, max_width=160,
                               copy_video=case != "copy_video off")
    (sidecar,) = record(tmp_path, video, settings, 60, [(20, 25, 30)])
    assert sidecar["copied"] is False and sidecar["codec"] == "avc1"
    assert (sidecar["width"], sidecar["height"]) == (160, 120)
    frames = decoded(tmp_path / "events" / sidecar["clip"], "bgr24")
    assert len(frames) == sidecar["frames"] > 0
    square = frames[-1][30:55].reshape(-1, 3).astype(int)
    assert (square[:, 2] - square[:, 0]).max() > 100  # the red square kept its colour


def test_the_tap_keeps_packets_from_a_keyframe_within_its_byte_bound(tmp_path: Path) -> None:
    """The packets kept start at a keyframe: the newest one older than the span (here 0 s:
    the last keyframe decoded), and under a byte bound of two keyframe intervals, whole
    intervals are dropped."""
    video = tmp_path / "source.mp4"
    write_h264(video, 100, "mp4")
    sizes = []
    with av.open(str(video)) as container:
        sizes = [packet.size for packet in container.demux(video=0) if packet.size]
    for max_bytes, check in ((10**9, "span"), (2 * sum(sizes[:GOP]), "bytes")):
        tap = PacketTap(0.0 if check == "span" else 3600.0, max_bytes)
        decoder = open_decoder(str(video), tap=tap)
        seen = 0
        while decoder.read() is not None:
            seen += 1
            assert tap.take() and tap.copying
            kept = list(tap.kept)
            assert kept[0].key and tap.bytes == sum(item.size for item in kept) <= max_bytes
            assert [item.index for item in kept] == list(range(kept[0].index,
                                                               kept[-1].index + 1))
            if check == "span":  # at most one keyframe interval before the newest
                assert len(kept) <= 2 * GOP + 4, seen
        decoder.close()
        assert seen == 100
        assert not tap.take()


def test_a_tap_on_a_stream_without_h264_copies_nothing(tmp_path: Path) -> None:
    video = tmp_path / "source.mp4"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter.fourcc(*"mp4v"), 25, SIZE)
    for image in scene(10):
        writer.write(image)
    writer.release()
    tap = PacketTap(5.0, 10**9)
    decoder = open_decoder(str(video), tap=tap)
    assert decoder.read() is not None and tap.take()
    assert not tap.copying and not tap.kept
    assert tap.colour(160).shape == (120, 160, 3)
    decoder.close()


def test_two_cameras_in_one_process_keep_their_frames_to_their_packets(tmp_path: Path) -> None:
    """Cameras share their capture process: each tap matches every frame to its own packet
    while the other decodes the same packet numbers (the decoder hands each packet's token
    on to its frame)."""
    video = tmp_path / "source.avi"
    write_h264(video, 40, "avi")
    first, second = PacketTap(3600.0, 10**9), PacketTap(3600.0, 10**9)
    decoders = [open_decoder(str(video), tap=tap) for tap in (first, second)]
    for _ in range(20):
        for decoder in decoders:
            assert decoder.read() is not None
    # the first camera lets all its packets go while the second's decoder holds some of its
    # own with the same numbers
    decoders.pop(0).close()
    first._clear()
    first.last_frame = None
    gc.collect()
    while decoders[0].read() is not None:
        pass
    decoders[0].close()
    frames = sorted(kept.frame for kept in second.kept)
    assert frames == list(range(40)), frames  # every frame found its packet


@pytest.mark.timeout(180)
def test_a_copied_clip_plays_in_a_browser(tmp_path: Path) -> None:
    """A clip copied from an mp4 source and one from an avi source (its H.264 in Annex B, the
    form of RTSP and of many recorders) each play in headless Chromium, served over HTTP:
    every frame shown, at the source's size, for the sidecar's duration."""
    driver = start_browser()  # skips, saying what to install, before any work
    clips = []
    for container in ("mp4", "avi"):
        folder = tmp_path / container
        folder.mkdir()
        video = folder / f"source.{container}"
        write_h264(video, 90, container)
        [sidecar] = record(folder, video, RecordingConfig(pre_s=0.2, post_s=0.1), 150,
                           [(40, 50, 60)])
        assert sidecar["copied"] is True
        clips.append((folder / "events", sidecar))
    try:
        for folder, sidecar in clips:
            handler = functools.partial(http.server.SimpleHTTPRequestHandler,
                                        directory=str(folder))
            server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
            threading.Thread(target=server.serve_forever, daemon=True).start()
            try:
                (folder / "play.html").write_text(
                    f'<video id="clip" muted src="/{sidecar["clip"]}"></video>')
                driver.get(f"http://127.0.0.1:{server.server_address[1]}/play.html")
                state = wait_until(driver, lambda d: d.execute_script(
                    "const v = document.getElementById('clip'); return v.readyState >= 2 "
                    "|| v.error ? [v.readyState, v.duration, v.videoWidth, v.videoHeight, "
                    "v.error && v.error.message] : null"), 30, "the clip loaded")
                assert state[4] is None, (sidecar["clip"], state)
                assert (state[2], state[3]) == SIZE
                assert state[1] == pytest.approx(sidecar["frames"] / sidecar["fps"], rel=0.05)
                driver.execute_script("document.getElementById('clip').play()")
                shown = wait_until(driver, lambda d: d.execute_script(
                    "const v = document.getElementById('clip'); return v.ended ? "
                    "v.getVideoPlaybackQuality().totalVideoFrames : null"), 30, "the clip ended")
                assert shown == sidecar["frames"], (sidecar["clip"], shown)
            finally:
                server.shutdown()
                server.server_close()
    finally:
        driver.quit()
