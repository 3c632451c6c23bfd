"""``forecaster bench --recording``: what event recording costs the capture process.

The real :class:`~forecaster.daemon.capture.Capture` loop reads a 1280x720 H.264 video file
(written here from the synthetic scene, a keyframe every 2 s, as cameras send) into a real
ring, these ways, interleaved and repeated:

- ``off``: ``[recording] enabled = false``;
- ``copy-preroll``: recording on (the default, ``copy_video = true``), no event: the
  file's packets are kept as the pre-roll;
- ``copy-event``: an event open the whole time: every packet also goes to the clip writer
  thread, which copies it into the MP4;
- ``preroll``: ``copy_video = false``, no event: every frame is decoded in colour, scaled to
  ``max_width`` and JPEG-encoded into the pre-roll buffer;
- ``event``: the same with an event open the whole time: every frame also goes to the clip
  writer thread, which writes the MP4 (H.264, encoded by libx264);
- ``event-mp4v``: the same with OpenCV's MPEG-4 Part 2 encoder (the fallback without
  PyAV), to weigh H.264's cost in the same run.

Per frame: the loop's wall time (read and decode the file, convert, write the ring, the
recorder's work) and the process's CPU time (all threads: the writer's included), with
the ratios to ``off`` measured in the same run.
"""

from __future__ import annotations

import multiprocessing as mp
import tempfile
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from forecaster.config import RecordingConfig
from forecaster.daemon.capture import Capture, CaptureSpec
from forecaster.ipc.channels import Flag, Outbox, channel_address
from forecaster.ipc.health import CameraField
from forecaster.ipc.ring import FrameRing
from forecaster.recording.event_board import BoardField, EventBoard
from forecaster.recording.h264 import CODEC, FALLBACK_CODEC, Mp4vWriter, encoder_problem
from forecaster.recording.recorder import RecordingSpec
from forecaster.sources.synthetic import SyntheticScene

MODES = ("off", "copy-preroll", "copy-event", "preroll", "event", "event-mp4v")


def write_video(path: Path, frames: int, width: int, height: int, fps: float = 25.0) -> None:
    """The synthetic scene as H.264 in MP4 (libx264, a keyframe every 2 s)."""
    import av

    scene = SyntheticScene(seed=5, width=width, height=height, anomaly_rate=0.0)
    with av.open(str(path), "w", format="mp4") as out:
        stream = out.add_stream("libx264", rate=round(fps))
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"preset": "veryfast", "g": str(round(2 * fps))}
        for index in range(frames):
            image = cv2.cvtColor(scene.frame(index), cv2.COLOR_GRAY2BGR).astype(np.uint8)
            out.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="bgr24")))
        out.mux(stream.encode())


def _run_once(video: Path, mode: str, folder: Path, settings: RecordingConfig,
              stop: Flag) -> tuple[float, float, int]:
    """Wall and CPU seconds of one capture run over ``video``, and its frame count."""
    ring = FrameRing.create(f"forecaster_bench{mp.current_process().pid}_rec", 64, 64)
    board = EventBoard(1)
    folder.mkdir(parents=True, exist_ok=True)  # as the daemon's start makes recording.dir
    if not mode.startswith("copy"):
        settings = settings.model_copy(update={"copy_video": False})
    recording = None if mode == "off" else RecordingSpec(settings, str(folder), board, "bench")
    spec = CaptureSpec(camera="bench", index=0, source=str(video), ring=ring.name, size=(64, 64),
                       recording=recording, color=recording is not None)
    notify = Outbox(channel_address(f"bench{mp.current_process().pid}", "none"))
    try:
        capture = Capture(spec, ring, notify, stop)
        capture.health.set(0, CameraField.WORKER_SEQ, 1e15)  # no worker to wait for at the end
        capture.open()
        if mode == "event-mp4v":
            recorder = getattr(capture.recorder, "recorder", None)
            if recorder is not None:
                recorder.writer.open_video = Mp4vWriter
        if mode.endswith("event") or mode == "event-mp4v":  # open from the first frame on
            board.write(0, {BoardField.START_SEQ: 0, BoardField.START_TS: time.time(),
                            BoardField.PEAK_SEQ: 0, BoardField.PEAK_SCORE: 5.0,
                            BoardField.END_SEQ: 1e9, BoardField.END_TS: time.time() + 1e6,
                            BoardField.END_PEAK: 5.0, BoardField.EVENT_ID: 1})
        wall, cpu = time.perf_counter(), time.process_time()
        capture.run()  # the writer thread finishes its queue before run() returns
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        return wall, cpu, capture.frames
    finally:
        notify.close()
        ring.close()
        ring.unlink()


def bench_recording(frames: int = 200, width: int = 1280, height: int = 720,
                    repeats: int = 3) -> dict[str, Any]:
    settings = RecordingConfig(pre_s=5.0, post_s=2.0)
    stop = Flag(mp.get_context("spawn"))
    best: dict[str, tuple[float, float]] = {}
    with tempfile.TemporaryDirectory(prefix="forecaster-bench-rec-") as tmp:
        video = Path(tmp) / "source.mp4"
        write_video(video, frames, width, height)
        for _ in range(repeats):
            for mode in MODES:
                wall, cpu, count = _run_once(video, mode, Path(tmp) / "events", settings, stop)
                per_frame = (wall / count * 1000.0, cpu / count * 1000.0)
                if mode not in best or per_frame[0] < best[mode][0]:
                    best[mode] = per_frame
        clips = sorted((Path(tmp) / "events").glob("*/*.mp4"))
        clip_frames = int(cv2.VideoCapture(str(clips[-1])).get(cv2.CAP_PROP_FRAME_COUNT)) \
            if clips else 0
    off_wall, off_cpu = best["off"]
    rows = {
        mode: {"wall_ms_per_frame": wall, "cpu_ms_per_frame": cpu,
               "wall_ratio": wall / off_wall, "cpu_ratio": cpu / off_cpu}
        for mode, (wall, cpu) in best.items()
    }
    return {"source": f"{width}x{height} H.264 file, {frames} frames", "repeats": repeats,
            "max_width": settings.max_width, "jpeg_quality": settings.jpeg_quality,
            "clip_codec": FALLBACK_CODEC if encoder_problem() else CODEC,
            "clip_frames": clip_frames, "modes": rows}


def format_recording(report: dict[str, Any]) -> list[str]:
    lines = [f"capture per frame with recording ({report['source']}; copied clips, or "
             f"{report['clip_codec']} clips encoded at most {report['max_width']} px with a JPEG "
             f"pre-roll of quality {report['jpeg_quality']}; best of {report['repeats']}):"]
    for mode, row in report["modes"].items():
        lines.append(f"  {mode:<13}{row['wall_ms_per_frame']:>7.2f} ms wall ({row['wall_ratio']:.2f}x)"
                     f"{row['cpu_ms_per_frame']:>8.2f} ms CPU ({row['cpu_ratio']:.2f}x)")
    return lines
