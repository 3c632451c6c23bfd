"""The clip writer: a thread that writes each event's clip, snapshot and sidecar, and
applies retention (:mod:`forecaster.recording.retention`).

A clip is H.264 in MP4 with its index first (:mod:`forecaster.recording.h264`), so a browser
plays it. It is written under a temporary name and checked complete before it takes its final
name; the snapshot and sidecar follow, the sidecar last. A write that fails (a full disk)
discards the event's files. At a stop, frames still queued after a short bound are cut.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import json
import logging
import math
import os
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from forecaster.config import RecordingConfig
from forecaster.recording.event_index import EventIndex, read_sidecar, sidecar_state
from forecaster.recording.h264 import VideoWriter, mp4_complete, open_video
from forecaster.recording.remux import CopyWriter, copied_snapshot, copy_packet
from forecaster.recording.retention import MB, Retention

log = logging.getLogger("forecaster.recording")

#: frames waiting for the writer thread before new ones are dropped
QUEUE_FRAMES = 256
#: frames a clip's writer may have waiting with their decoded images (a 640x360 frame is
#: 0.7 MB, its JPEG about 30 kB): past that the frames wait as JPEGs only, decoded when
#: written, so a writer that falls behind holds little memory
IMAGE_FRAMES = 8
#: seconds between retention sweeps when no event starts
SWEEP_EVERY_S = 60.0
#: seconds between free-space checks while a clip is written
FREE_CHECK_S = 1.0
#: a file system with less free space than this is full: the clip being written is
#: abandoned, whatever ``min_free_mb`` says
FULL_DISK_BYTES = 256 * 1024
#: seconds the writer goes on writing queued frames once a stop is asked; the frames still
#: queued then are cut (counted in the sidecar's ``frames_cut``), and each open clip is
#: closed and finished, within the capture process's time to stop
STOP_DRAIN_S = 1.0


@dataclass(frozen=True, slots=True)
class Entry:
    """One frame kept for recording: its seq, capture time, position on the recorder's
    time line (seconds) and JPEG bytes at most ``max_width`` wide."""

    seq: int
    ts: float
    pos: float
    jpeg: bytes


@dataclass(slots=True)
class Clip:
    """One event being recorded."""

    camera: str
    stem: str  # <camera>/<name>
    start_seq: int
    start_ts: float
    start_pos: float
    fps: float
    peak_seq: int
    peak_score: float
    snapshot: Entry | None = None
    #: the anomalous region of the peak frame, fractions of its width and height
    peak_box: tuple[float, float, float, float] | None = None
    end_seq: int | None = None
    end_ts: float | None = None
    end_pos: float | None = None
    end_peak: float | None = None
    frames: int = 0
    first_seq: int | None = None
    last_seq: int | None = None
    first_ts: float | None = None
    last_ts: float | None = None
    dropped: int = 0
    #: frames queued but not written because the daemon stopped
    cut: int = 0
    truncated: bool = False
    interrupted: bool = False
    #: set by the writer thread
    skipped: str = ""
    size: tuple[int, int] | None = None
    codec: str | None = None
    #: the box drawn on the snapshot, in its pixels (x0, y0, x1, y1)
    snapshot_box: tuple[int, int, int, int] | None = None
    #: copied from the source's packets: the segment whose stream parameters it has
    #: (:mod:`forecaster.recording.packets`; None: encoded from frames)
    copied: Any = None
    #: the stream parameters every packet of a copied clip must share
    signature: tuple[Any, ...] = ()
    #: frame indexes (showing order) of a copied clip's peak frame and first frame
    peak_frame: int = -1
    first_frame: int | None = None
    #: capture time of the peak frame (a copied clip's snapshot is made when it closes)
    peak_ts: float | None = None
    #: a copied clip lost a packet (the writer was behind): no later packet can be decoded
    gap: bool = False


@dataclass(slots=True)
class _Command:
    kind: str  # "open", "frame", "packet", "close"
    clip: Clip
    entry: Entry | None = None
    #: the frame the entry's JPEG holds, decoded (saves decoding the JPEG); None: decode it
    image: np.ndarray | None = None
    #: a copied clip's packet (:class:`forecaster.recording.packets.Kept`)
    packet: Any = None


class ClipWriter:
    """A thread that writes clips, snapshots and sidecars, and applies retention.

    The capture loop only appends to a queue: frames beyond ``max_frames`` waiting are
    dropped and counted (in the clip's sidecar; logged once), never waited for.
    """

    def __init__(self, folder: Path, retention: Retention | None, model: str,
                 settings: RecordingConfig, max_frames: int = QUEUE_FRAMES,
                 block: bool = False, index: EventIndex | None = None) -> None:
        self.folder = folder
        #: the event index: a row per event, from its start to its files
        self.index = index
        #: opens each clip's video file (H.264, or mp4v without PyAV)
        self.open_video: Callable[[Path, float, tuple[int, int]], VideoWriter] = (
            functools.partial(open_video, preset=settings.preset))
        #: wait for room instead of dropping (replay: nothing is real-time)
        self.block = block
        self.retention = retention
        self.model = model
        self.settings = settings
        self.max_frames = max_frames
        #: copied packets waiting, in bytes, at most: a whole pre-roll (``preroll_max_mb``,
        #: handed over at once when an event starts) and as much again
        self.max_packet_bytes = int(2 * settings.preroll_max_mb * MB)
        self._queue: collections.deque[_Command] = collections.deque()
        self._frames_queued = 0
        self._packet_bytes = 0
        self._cond = threading.Condition()
        self._closing = False
        self._thread: threading.Thread | None = None
        self._drop_logged = False
        self.dropped = 0
        self.written: list[Path] = []  # sidecars written, newest last
        self._active: set[str] = set()
        self._last_sweep = 0.0
        self._last_free_check = 0.0
        #: monotonic time after which queued frames are cut (set by a stop)
        self._cut_at: float | None = None

    def start(self) -> None:
        """Start the thread now (it starts with the first clip otherwise): retention then
        runs from the start, once a minute, events or not."""
        with self._cond:
            self._start()

    def _start(self) -> None:
        if self._thread is None and not self._closing:
            self._thread = threading.Thread(target=self._run, name=f"recorder:{self.folder.name}",
                                            daemon=True)
            self._thread.start()

    def put(self, kind: str, clip: Clip, entry: Entry | None = None,
            image: np.ndarray | None = None, packet: Any = None) -> None:
        with self._cond:
            if kind == "packet" and (
                    clip.gap or self._packet_bytes + packet.size > self.max_packet_bytes):
                # a copied clip cannot skip a packet (the frames after it depend on it): it
                # ends with the last packet queued, and the rest are counted as dropped
                clip.gap = True
                clip.dropped += 1
                self.dropped += 1
                self._log_drop(clip)
                return
            if kind == "packet":
                self._packet_bytes += packet.size
            elif kind == "frame":
                if self.block:
                    self._start()
                    while self._frames_queued >= self.max_frames:
                        self._cond.wait(1.0)
                if self._frames_queued >= self.max_frames:
                    clip.dropped += 1
                    self.dropped += 1
                    self._log_drop(clip)
                    return
                if self._frames_queued >= IMAGE_FRAMES:
                    image = None
                self._frames_queued += 1
            self._queue.append(_Command(kind, clip, entry, image, packet))
            self._cond.notify_all()
            self._start()

    def _log_drop(self, clip: Clip) -> None:
        if not self._drop_logged:
            self._drop_logged = True
            log.warning("camera %s: the clip writer is behind; frames of clips are dropped "
                        "(counted in each sidecar's frames_dropped)", clip.camera)

    def close(self, timeout: float | None = None, stop: Any = None) -> bool:
        """Finish what is queued and stop the thread; True once it has stopped.

        Frames still queued :data:`STOP_DRAIN_S` after ``stop`` (an event-like flag) is set,
        or after ``timeout`` seconds less that, are cut; every clip is still finished. None
        and no stop: everything queued is written.
        """
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        thread = self._thread
        if thread is None:
            return True
        if timeout is not None:
            self.cut_after(time.monotonic() + max(0.0, timeout - STOP_DRAIN_S))
        while thread.is_alive():
            now = time.monotonic()
            if stop is not None and stop.is_set():
                self.cut_after(now + STOP_DRAIN_S)
            if self._cut_at is not None and now > self._cut_at + STOP_DRAIN_S:
                break  # stuck in a call that does not return: left behind
            thread.join(0.05)
        return not thread.is_alive()

    def cut_after(self, when: float) -> None:
        """Frames the thread takes from the queue after ``when`` (monotonic) are cut."""
        with self._cond:
            if self._cut_at is None or when < self._cut_at:
                self._cut_at = when
            self._cond.notify_all()

    # -- thread ---------------------------------------------------------------------------

    def _run(self) -> None:
        writer: VideoWriter | None = None
        try:
            self._sweep()
        except Exception:
            log.exception("recording retention failed in %s", self.folder)
        while True:
            with self._cond:
                while not self._queue and not self._closing:
                    if not self._cond.wait(SWEEP_EVERY_S):
                        break
                command = self._queue.popleft() if self._queue else None
                if command is not None and command.kind in ("frame", "packet"):
                    if command.kind == "packet":
                        self._packet_bytes -= command.packet.size
                    else:
                        self._frames_queued -= 1
                    self._cond.notify_all()
                    if self._cut_at is not None and time.monotonic() > self._cut_at:
                        command.clip.cut += 1
                        command.clip.interrupted = True
                        continue
                if command is None and self._closing:
                    return
            try:
                if command is None or time.monotonic() - self._last_sweep >= SWEEP_EVERY_S:
                    self._sweep()
                if command is None:
                    continue
                writer = self._handle(command, writer)
            except Exception as error:  # a recording problem must not end the capture process
                if command is None:
                    log.exception("recording retention failed in %s", self.folder)
                    continue
                if isinstance(error, OSError):  # a full disk, a folder removed: one line
                    log.warning("camera %s: event %s not recorded: %s", command.clip.camera,
                                command.clip.stem, error)
                else:
                    log.exception("camera %s: recording of %s failed", command.clip.camera,
                                  command.clip.stem)
                command.clip.skipped = "error"
                self._discard(command.clip, writer)
                writer = None
                if command.kind == "close":
                    self._indexed(command.clip)

    def _sweep(self) -> bool:
        self._last_sweep = time.monotonic()
        if self.retention is None:
            return True
        return self.retention.sweep(keep=self._active).free_ok

    def _temp(self, clip: Clip) -> Path:
        camera, name = clip.stem.split("/", 1)
        return self.folder / camera / f".{name}.tmp.mp4"

    def _handle(self, command: _Command, writer: VideoWriter | None
                ) -> VideoWriter | None:
        clip = command.clip
        if command.kind == "open":
            self._active.add(clip.stem)
            if self.index is not None:
                self.index.quietly("add an event", self.index.opened, clip.camera, clip.stem,
                                   clip.start_seq, clip.start_ts, clip.peak_score)
            if not self._sweep():
                clip.skipped = "free space"
                log.warning("camera %s: event %s not recorded: less than min_free_mb = %g MB "
                            "free in %s even after deleting older events", clip.camera,
                            clip.stem, self.settings.min_free_mb, self.folder)
            return writer
        if clip.skipped:
            if command.kind == "close":
                self._active.discard(clip.stem)
                self._indexed(clip)
            return writer
        if command.kind == "frame":
            assert command.entry is not None
            return self._write_frame(clip, command.entry, writer, command.image)
        if command.kind == "packet":
            return self._write_packet(clip, command.packet, writer)
        self._finish(clip, writer)
        self._indexed(clip)
        return None

    def _indexed(self, clip: Clip) -> None:
        """The event's row as its files are now: from its sidecar, or 'none' without one."""
        index = self.index
        if index is None:
            return
        sidecar = self.folder / f"{clip.stem}.json"
        record = read_sidecar(sidecar) if sidecar.is_file() else None
        if record is not None:
            index.quietly("update an event", index.finished, clip.stem, record,
                          sidecar_state(record))
            return
        known = {"camera": clip.camera, "start_seq": clip.start_seq, "start_ts": clip.start_ts,
                 "end_seq": clip.end_seq, "end_ts": clip.end_ts, "peak_score": clip.peak_score}
        index.quietly("update an event", index.finished, clip.stem, known, "none")

    def _write_frame(self, clip: Clip, entry: Entry, writer: VideoWriter | None,
                     image: np.ndarray | None = None) -> VideoWriter | None:
        if image is None:
            image = cv2.imdecode(np.frombuffer(entry.jpeg, np.uint8), cv2.IMREAD_COLOR)
        elif image.ndim == 2:  # a gray frame: the JPEG's decoding gives three channels
            image = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
        if image is None:
            return writer
        if writer is None:
            height, width = image.shape[:2]
            temp = self._temp(clip)
            temp.parent.mkdir(parents=True, exist_ok=True)
            try:
                writer = self.open_video(temp, clip.fps, (width, height))
            except OSError as error:
                clip.skipped = "writer"
                log.warning("camera %s: cannot write clip %s: %s", clip.camera, temp, error)
                self._discard(clip, None)
                return None
            clip.size, clip.codec = writer.size, writer.codec
        if clip.size is not None and (image.shape[1], image.shape[0]) != clip.size:
            image = cv2.resize(image, clip.size, interpolation=cv2.INTER_AREA)
        writer.write(image)
        clip.frames += 1
        if clip.first_seq is None:
            clip.first_seq, clip.first_ts = entry.seq, entry.ts
        clip.last_seq, clip.last_ts = entry.seq, entry.ts
        return self._check_space(clip, writer)

    def _write_packet(self, clip: Clip, kept: Any, writer: VideoWriter | None
                      ) -> VideoWriter | None:
        """A copied clip's packet into its MP4 (opened at its first packet, a keyframe)."""
        assert writer is None or isinstance(writer, CopyWriter)
        return self._check_space(clip, copy_packet(writer, clip, kept, self._temp(clip)))

    def _check_space(self, clip: Clip, writer: VideoWriter) -> VideoWriter | None:
        """The writer back, or None where the clip is abandoned for want of free space."""
        now = time.monotonic()
        if now - self._last_free_check >= FREE_CHECK_S:
            self._last_free_check = now
            problem = self._space_problem()
            if problem:
                log.warning("camera %s: clip %s abandoned: %s", clip.camera, clip.stem, problem)
                clip.skipped = "free space"
                self._discard(clip, writer)
                return None
        return writer

    def _space_problem(self) -> str:
        """Why the clip being written cannot go on ("" when it can): a full disk, or less
        free space than ``min_free_mb`` even after retention."""
        free = shutil.disk_usage(self.folder).free
        if free < FULL_DISK_BYTES:
            return f"the disk is full ({free // 1024} kB free in {self.folder})"
        if (self.retention is not None and free < self.retention.min_free_bytes
                and not self._sweep()):
            return (f"less than min_free_mb = {self.settings.min_free_mb:g} MB free in "
                    f"{self.folder}")
        return ""

    def _discard(self, clip: Clip, writer: VideoWriter | None) -> None:
        if writer is not None:
            writer.abort()
        with contextlib.suppress(OSError):
            self._temp(clip).unlink()

    def _finish(self, clip: Clip, writer: VideoWriter | None) -> None:
        """Close the clip; once it is complete, give it, the snapshot and the sidecar their
        names (the sidecar last). A write that fails leaves none of the event's files. An
        event whose every frame was cut at a stop keeps its snapshot and sidecar."""
        self._active.discard(clip.stem)
        temp: Path | None = self._temp(clip)
        if writer is None or clip.frames == 0:
            self._discard(clip, writer)
            if not clip.cut:
                return
            temp = None
        else:
            writer.close()
            if not mp4_complete(self._temp(clip)):  # the encoder could not write it all
                self._discard(clip, None)
                log.warning("camera %s: event %s not recorded: its clip could not be written "
                            "completely (%.0f MB free in %s)", clip.camera, clip.stem,
                            shutil.disk_usage(self.folder).free / MB, self.folder)
                return
        final = self.folder / clip.stem
        parts = []
        if clip.copied is not None and temp is not None and clip.snapshot is None:
            clip.snapshot = self._copied_snapshot(clip, temp)
        if clip.snapshot is not None:
            jpeg, clip.snapshot_box = boxed_snapshot(clip.snapshot.jpeg, clip.peak_box,
                                                     self.settings.jpeg_quality)
            parts.append((final.with_name(f"{final.name}.jpg"), jpeg))
        sidecar = final.with_name(f"{final.name}.json")
        parts.append((sidecar, (json.dumps(self._sidecar(clip), indent=2, allow_nan=False)
                                + "\n").encode("utf-8")))
        temps = [(_temp_of(path), path) for path, _ in parts]
        placed: list[Path] = []  # final names given so far: taken back if a later one fails
        try:
            for (part_temp, _), (_, data) in zip(temps, parts, strict=True):
                _write_durably(part_temp, data)
            if temp is not None:
                clip_path = final.with_name(f"{final.name}.mp4")
                _sync(temp)  # on disk before its final name: a power cut leaves no torn clip
                os.replace(temp, clip_path)
                placed.append(clip_path)
            for index, (part_temp, path) in enumerate(temps):
                if index == len(temps) - 1:  # the sidecar's name only after the others'
                    _sync_folder(final.parent)
                os.replace(part_temp, path)
                placed.append(path)
        except OSError:
            for path in (self._temp(clip), *(part_temp for part_temp, _ in temps), *placed):
                with contextlib.suppress(OSError):
                    path.unlink()
            raise
        _sync_folder(final.parent)
        self.written.append(sidecar)
        # one line per clip at debug level only: at info, the progress line counts events
        log.debug("camera %s: recorded event %s (%d frames%s)", clip.camera, clip.stem,
                 clip.frames, f", {clip.cut} cut at the stop" if clip.cut else "")

    def _copied_snapshot(self, clip: Clip, path: Path) -> Entry | None:
        """A copied clip's snapshot: its peak frame (its first where the peak's is not known),
        decoded from the finished clip."""
        if clip.first_frame is None:
            return None
        peak = clip.peak_frame if clip.peak_frame >= clip.first_frame else clip.first_frame
        try:
            jpeg = copied_snapshot(path, peak - clip.first_frame, clip.fps,
                                   self.settings.max_width, self.settings.jpeg_quality)
        except Exception as error:  # the clip stands without its snapshot
            log.warning("camera %s: no snapshot of event %s: %s", clip.camera, clip.stem, error)
            return None
        if jpeg is None:
            return None
        ts = clip.peak_ts if clip.peak_ts is not None else clip.start_ts
        return Entry(clip.peak_seq, ts, ts, jpeg)

    def _sidecar(self, clip: Clip) -> dict[str, Any]:
        def number(value: float | None) -> float | None:
            return None if value is None or not math.isfinite(value) else float(value)

        def utc(ts: float | None) -> str | None:
            if ts is None or not math.isfinite(ts):
                return None
            return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + f".{int(ts % 1 * 1000):03d}Z"

        peak = clip.end_peak if clip.end_peak is not None and math.isfinite(clip.end_peak) \
            else clip.peak_score
        return {
            "camera": clip.camera,
            "start_seq": clip.start_seq,
            "start_ts": number(clip.start_ts),
            "start_time": utc(clip.start_ts),
            "end_seq": clip.end_seq,
            "end_ts": number(clip.end_ts),
            "end_time": utc(clip.end_ts),
            "peak_score": number(peak),
            "peak_seq": clip.snapshot.seq if clip.snapshot is not None else None,
            "peak_ts": number(clip.snapshot.ts) if clip.snapshot is not None else None,
            "model": self.model,
            "clip": f"{clip.stem}.mp4" if clip.frames else None,
            "snapshot": f"{clip.stem}.jpg" if clip.snapshot is not None else None,
            "frames": clip.frames,
            "first_seq": clip.first_seq,
            "first_ts": number(clip.first_ts),
            "last_seq": clip.last_seq,
            "last_ts": number(clip.last_ts),
            "fps": round(clip.fps, 3),
            "codec": clip.codec if clip.frames else None,
            "copied": clip.copied is not None,
            "width": clip.size[0] if clip.size else None,
            "height": clip.size[1] if clip.size else None,
            "pre_s": self.settings.pre_s,
            "post_s": self.settings.post_s,
            "frames_dropped": clip.dropped,
            "frames_cut": clip.cut,
            "truncated": clip.truncated,
            "interrupted": clip.interrupted,
            "box": list(clip.snapshot_box) if clip.snapshot_box else None,
        }


def boxed_snapshot(jpeg: bytes, box: tuple[float, float, float, float] | None, quality: int
                   ) -> tuple[bytes, tuple[int, int, int, int] | None]:
    """The snapshot with the anomalous region boxed in red (``box``: fractions of the
    frame), and the box in its pixels; unchanged without a box."""
    if box is None:
        return jpeg, None
    image = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        return jpeg, None
    height, width = image.shape[:2]
    x0, y0 = round(box[0] * width), round(box[1] * height)
    x1, y1 = round(box[2] * width) - 1, round(box[3] * height) - 1
    thickness = max(2, round(width / 240))
    cv2.rectangle(image, (x0, y0), (x1, y1), (0, 0, 0), thickness + 2)
    cv2.rectangle(image, (x0, y0), (x1, y1), (40, 40, 255), thickness)
    ok, data = cv2.imencode(".jpg", image, [int(cv2.IMWRITE_JPEG_QUALITY), quality])
    return (data.tobytes(), (x0, y0, x1 + 1, y1 + 1)) if ok else (jpeg, None)


def _temp_of(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp")


def _sync(path: Path) -> None:
    """Flush the file ``path`` to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _sync_folder(path: Path) -> None:
    """Flush the entries of the folder ``path`` (its files' names) to the disk, where the
    file system can: some (network and FUSE mounts) refuse it, and a finished event is not
    thrown away for that."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _write_durably(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` and flush it to the disk before returning."""
    with path.open("wb") as file:
        file.write(data)
        file.flush()
        os.fsync(file.fileno())
