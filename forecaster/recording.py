"""Event recordings: a clip, a snapshot and a sidecar per anomaly event.

Layout, under the recording folder (:func:`events_dir`)::

    <camera>/<YYYYmmdd-HHMMSS>-<start seq>.mp4    the clip (pre-roll, event, post-roll)
    <camera>/<YYYYmmdd-HHMMSS>-<start seq>.jpg    the frame of the event's highest score
    <camera>/<YYYYmmdd-HHMMSS>-<start seq>.json   the sidecar, written last: the event is
                                                  complete once it exists

The time in the name is the UTC capture time of the event's first frame, so the worker
names the files in its ``event`` messages without waiting for the capture process that
writes them (:func:`forecaster.event_board.event_stem`).

Who does what in the daemon:

- the worker (it knows the scores) writes each camera's current event on the event board
  (:mod:`forecaster.event_board`: shared memory, one writer, no lock) and names the
  event's files in its ``event`` messages;
- each capture process keeps its camera's recent frames as JPEGs in a bounded pre-roll
  buffer (:class:`PrerollBuffer`) and reads the board once per frame
  (:class:`CaptureRecorder`); on a new event it hands the pre-roll and every following
  frame to a writer thread (:class:`ClipWriter`: a bounded queue, full = the frame is
  dropped and counted), which writes the clip under a temporary name and renames it, then
  the snapshot and the sidecar;
- the writer thread also applies retention (:mod:`forecaster.retention`: maximum age,
  maximum total size, free-space floor; the oldest events first) at each new event and
  once a minute.

``forecaster replay --clips`` drives the same :class:`Recorder` from the scores it computes,
with the pre- and post-roll counted in frames at the source's frame rate.
"""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import math
import os
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import cv2
import numpy as np

from forecaster.config import Config, RecordingConfig
from forecaster.errors import UsageError
from forecaster.event_board import EventBoard, event_stem
from forecaster.protocol import Event, Message, Score
from forecaster.retention import MB, Retention

log = logging.getLogger("forecaster.recording")

#: extra seconds of frames the pre-roll buffer keeps beyond ``pre_s``: the worker learns of
#: an event a little after the capture process wrote its first frame
LAG_S = 2.0
#: frames waiting for the writer thread before new ones are dropped
QUEUE_FRAMES = 256
#: seconds between retention sweeps when no event starts
SWEEP_EVERY_S = 60.0
#: seconds between free-space checks while a clip is written
FREE_CHECK_S = 1.0
#: seconds the capture process waits at the end of its stream for the worker to end an
#: event still open
END_WAIT_S = 10.0
#: frame rate of a clip whose source rate cannot be measured
FALLBACK_FPS = 25.0
FOURCC = "mp4v"


# ------------------------------------------------------------------------------ naming


def events_dir(config: Config | RecordingConfig) -> Path:
    """The recording folder: ``[recording] dir`` when set, else ``$STATE_DIRECTORY/events``
    under systemd (``StateDirectory=``), else ``./events``; absolute."""
    recording = config.recording if isinstance(config, Config) else config
    if recording.dir:
        folder = Path(recording.dir).expanduser()
    else:
        state = os.environ.get("STATE_DIRECTORY", "").split(":")[0]
        folder = Path(state) / "events" if state else Path("events")
    return Path(os.path.abspath(folder))


def prepare_events_dir(config: Config) -> Path:
    """The recording folder, created; UsageError naming it when it cannot be written."""
    folder = events_dir(config)
    fix = "set [recording] dir to a writable folder, or [recording] enabled = false"
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UsageError(f"cannot create the recording folder {folder}: {error.strerror}; "
                         f"{fix}") from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise UsageError(f"the recording folder {folder} is not writable; {fix}")
    return folder


# ---------------------------------------------------------------------------- frames


@dataclass(frozen=True, slots=True)
class Entry:
    """One frame kept for recording: its seq, capture time, position on the recorder's
    time line (seconds) and JPEG bytes at most ``max_width`` wide."""

    seq: int
    ts: float
    pos: float
    jpeg: bytes


def scaled(image: np.ndarray, max_width: int) -> np.ndarray:
    """``image`` scaled down (aspect kept) to at most ``max_width`` pixels wide."""
    height, width = image.shape[:2]
    if width <= max_width:
        return image
    new_height = max(1, round(height * max_width / width))
    return cv2.resize(image, (max_width, new_height), interpolation=cv2.INTER_AREA)


class PrerollBuffer:
    """The latest frames as JPEGs, bounded by a time span and by bytes (oldest dropped)."""

    def __init__(self, span_s: float, max_bytes: int) -> None:
        self.span_s = span_s
        self.max_bytes = max_bytes
        self.entries: collections.deque[Entry] = collections.deque()
        self.bytes = 0

    def append(self, entry: Entry) -> None:
        self.entries.append(entry)
        self.bytes += len(entry.jpeg)
        entries = self.entries
        while len(entries) > 1 and (self.bytes > self.max_bytes
                                    or entries[0].pos < entry.pos - self.span_s):
            self.bytes -= len(entries.popleft().jpeg)

    def since(self, pos: float) -> list[Entry]:
        return [entry for entry in self.entries if entry.pos >= pos]

    def find(self, seq: int) -> Entry | None:
        for entry in reversed(self.entries):
            if entry.seq == seq:
                return entry
            if entry.seq < seq:
                break
        return None

    def frame_rate(self) -> float | None:
        """Frames per second over the buffer (None with fewer than 2 frames)."""
        if len(self.entries) < 2:
            return None
        span = self.entries[-1].ts - self.entries[0].ts
        return (len(self.entries) - 1) / span if span > 0 else None


# ------------------------------------------------------------------------------ clips


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
    truncated: bool = False
    interrupted: bool = False
    #: set by the writer thread
    skipped: str = ""
    size: tuple[int, int] | None = None


@dataclass(slots=True)
class _Command:
    kind: str  # "open", "frame", "close"
    clip: Clip
    entry: Entry | None = None


class ClipWriter:
    """A thread that writes clips, snapshots and sidecars, and applies retention.

    The capture loop only appends to a queue: frames beyond ``max_frames`` waiting are
    dropped and counted (in the clip's sidecar; logged once), never waited for.
    """

    def __init__(self, folder: Path, retention: Retention | None, model: str,
                 settings: RecordingConfig, max_frames: int = QUEUE_FRAMES,
                 block: bool = False) -> None:
        self.folder = folder
        #: wait for room instead of dropping (replay: nothing is real-time)
        self.block = block
        self.retention = retention
        self.model = model
        self.settings = settings
        self.max_frames = max_frames
        self._queue: collections.deque[_Command] = collections.deque()
        self._frames_queued = 0
        self._cond = threading.Condition()
        self._closing = False
        self._thread: threading.Thread | None = None
        self._drop_logged = False
        self.dropped = 0
        self.written: list[Path] = []  # sidecars written, newest last
        self._active: set[str] = set()
        self._last_sweep = 0.0
        self._last_free_check = 0.0

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

    def put(self, kind: str, clip: Clip, entry: Entry | None = None) -> None:
        with self._cond:
            if kind == "frame":
                if self.block:
                    self._start()
                    while self._frames_queued >= self.max_frames:
                        self._cond.wait(1.0)
                if self._frames_queued >= self.max_frames:
                    clip.dropped += 1
                    self.dropped += 1
                    if not self._drop_logged:
                        self._drop_logged = True
                        log.warning("camera %s: the clip writer is behind; frames of clips are "
                                    "dropped (counted in each sidecar's frames_dropped)",
                                    clip.camera)
                    return
                self._frames_queued += 1
            self._queue.append(_Command(kind, clip, entry))
            self._cond.notify_all()
            self._start()

    def close(self, timeout: float = 10.0) -> None:
        """Finish what is queued and stop the thread."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)

    # -- thread ---------------------------------------------------------------------------

    def _run(self) -> None:
        writer: cv2.VideoWriter | None = None
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
                if command is not None and command.kind == "frame":
                    self._frames_queued -= 1
                    self._cond.notify_all()
                if command is None and self._closing:
                    return
            try:
                if command is None or time.monotonic() - self._last_sweep >= SWEEP_EVERY_S:
                    self._sweep()
                if command is None:
                    continue
                writer = self._handle(command, writer)
            except Exception:  # a recording problem must not end the capture process
                log.exception("camera %s: recording of %s failed", command.clip.camera
                              if command else "?", command.clip.stem if command else "?")
                if command is not None:
                    command.clip.skipped = "error"
                    self._discard(command.clip, writer)
                    writer = None

    def _sweep(self) -> bool:
        self._last_sweep = time.monotonic()
        if self.retention is None:
            return True
        return self.retention.sweep(keep=self._active).free_ok

    def _temp(self, clip: Clip) -> Path:
        camera, name = clip.stem.split("/", 1)
        return self.folder / camera / f".{name}.tmp.mp4"

    def _handle(self, command: _Command, writer: cv2.VideoWriter | None
                ) -> cv2.VideoWriter | None:
        clip = command.clip
        if command.kind == "open":
            self._active.add(clip.stem)
            if not self._sweep():
                clip.skipped = "free space"
                log.warning("camera %s: event %s not recorded: less than min_free_mb = %g MB "
                            "free in %s even after deleting older events", clip.camera,
                            clip.stem, self.settings.min_free_mb, self.folder)
            return writer
        if clip.skipped:
            if command.kind == "close":
                self._active.discard(clip.stem)
            return writer
        if command.kind == "frame":
            assert command.entry is not None
            return self._write_frame(clip, command.entry, writer)
        self._finish(clip, writer)
        return None

    def _write_frame(self, clip: Clip, entry: Entry, writer: cv2.VideoWriter | None
                     ) -> cv2.VideoWriter | None:
        image = cv2.imdecode(np.frombuffer(entry.jpeg, np.uint8), cv2.IMREAD_COLOR)
        if image is None:
            return writer
        if writer is None:
            height, width = image.shape[:2]
            clip.size = (width, height)
            temp = self._temp(clip)
            temp.parent.mkdir(parents=True, exist_ok=True)
            writer = cv2.VideoWriter(str(temp), cv2.VideoWriter.fourcc(*FOURCC), clip.fps,
                                     (width, height))
            if not writer.isOpened():
                clip.skipped = "writer"
                log.warning("camera %s: cannot write clip %s", clip.camera, temp)
                return None
        if clip.size is not None and (image.shape[1], image.shape[0]) != clip.size:
            image = cv2.resize(image, clip.size, interpolation=cv2.INTER_AREA)
        writer.write(image)
        clip.frames += 1
        if clip.first_seq is None:
            clip.first_seq, clip.first_ts = entry.seq, entry.ts
        clip.last_seq, clip.last_ts = entry.seq, entry.ts
        now = time.monotonic()
        if now - self._last_free_check >= FREE_CHECK_S and self.retention is not None:
            self._last_free_check = now
            if (self.retention.free_bytes() < self.retention.min_free_bytes
                    and not self._sweep()):
                log.warning("camera %s: clip %s abandoned: less than min_free_mb = %g MB free "
                            "in %s", clip.camera, clip.stem, self.settings.min_free_mb,
                            self.folder)
                clip.skipped = "free space"
                self._discard(clip, writer)
                return None
        return writer

    def _discard(self, clip: Clip, writer: cv2.VideoWriter | None) -> None:
        if writer is not None:
            writer.release()
        with contextlib.suppress(OSError):
            self._temp(clip).unlink()

    def _finish(self, clip: Clip, writer: cv2.VideoWriter | None) -> None:
        self._active.discard(clip.stem)
        if writer is None or clip.frames == 0:
            self._discard(clip, writer)
            return
        writer.release()
        final = self.folder / f"{clip.stem}.mp4"
        os.replace(self._temp(clip), final)
        if clip.snapshot is not None:
            _write_atomic(self.folder / f"{clip.stem}.jpg", clip.snapshot.jpeg)
        sidecar = self.folder / f"{clip.stem}.json"
        _write_atomic(sidecar, (json.dumps(self._sidecar(clip), indent=2, allow_nan=False)
                                + "\n").encode("utf-8"))
        self.written.append(sidecar)
        log.info("camera %s: recorded event %s (%d frames)", clip.camera, clip.stem, clip.frames)

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
            "model": self.model,
            "clip": f"{clip.stem}.mp4",
            "snapshot": f"{clip.stem}.jpg" if clip.snapshot is not None else None,
            "frames": clip.frames,
            "first_seq": clip.first_seq,
            "first_ts": number(clip.first_ts),
            "last_seq": clip.last_seq,
            "last_ts": number(clip.last_ts),
            "fps": round(clip.fps, 3),
            "width": clip.size[0] if clip.size else None,
            "height": clip.size[1] if clip.size else None,
            "pre_s": self.settings.pre_s,
            "post_s": self.settings.post_s,
            "frames_dropped": clip.dropped,
            "truncated": clip.truncated,
            "interrupted": clip.interrupted,
        }


def _write_atomic(path: Path, data: bytes) -> None:
    temp = path.with_name(f".{path.name}.tmp")
    temp.write_bytes(data)
    os.replace(temp, path)


# --------------------------------------------------------------------------- recorder


class Recorder:
    """Turns frames and event notices into clips (one camera).

    Per frame: :meth:`encode` (JPEG at most ``max_width`` wide) and :meth:`add` (into the
    pre-roll buffer, and into the open clip). :meth:`start`, :meth:`peak` and :meth:`end`
    tell it about the event; they may come a few frames late (the frames in between are in
    the buffer). ``fps`` given: pre- and post-roll are counted in frames at that rate
    (replay), else in seconds of capture time (the daemon).
    """

    def __init__(self, camera: str, folder: Path, settings: RecordingConfig, *, model: str,
                 fps: float | None = None, retention: Retention | None = None,
                 lag_s: float = LAG_S) -> None:
        self.camera = camera
        self.folder = folder
        self.settings = settings
        self.fps = fps
        if fps:
            self.pre_span = round(settings.pre_s * fps) / fps
            self.post_span = round(settings.post_s * fps) / fps
        else:
            self.pre_span, self.post_span = settings.pre_s, settings.post_s
        self.buffer = PrerollBuffer(self.pre_span + lag_s, int(settings.preroll_max_mb * MB))
        self.writer = ClipWriter(folder, retention, model, settings, block=bool(fps))
        self.clip: Clip | None = None
        self._params = [int(cv2.IMWRITE_JPEG_QUALITY), settings.jpeg_quality]
        self._eps = 1e-6

    def _pos(self, seq: int, ts: float) -> float:
        return seq / self.fps if self.fps else ts

    def encode(self, image: np.ndarray, seq: int, ts: float) -> Entry:
        ok, data = cv2.imencode(".jpg", scaled(image, self.settings.max_width), self._params)
        return Entry(seq, ts, self._pos(seq, ts), data.tobytes() if ok else b"")

    def on_frame(self, image: np.ndarray, seq: int, ts: float) -> None:
        self.add(self.encode(image, seq, ts))

    def add_scored(self, entry: Entry, messages: Iterable[Message]) -> None:
        """A frame and the messages about it, in order (replay: nothing is late)."""
        self.add(entry)
        score = math.nan
        for message in messages:
            if isinstance(message, Score):
                score = message.score
                clip = self.clip
                if (clip is not None and clip.end_seq is None and math.isfinite(score)
                        and not score <= clip.peak_score):
                    self.peak(message.seq, score)
            elif isinstance(message, Event):
                if message.state == "start":
                    self.start(message.seq, message.ts, score)
                else:
                    self.end(message.seq, message.ts, message.peak_score)

    def add(self, entry: Entry) -> None:
        self.buffer.append(entry)
        clip = self.clip
        if clip is None:
            return
        if clip.end_pos is not None and entry.pos > clip.end_pos + self.post_span + self._eps:
            self._finish()
            return
        if entry.pos - clip.start_pos > self.settings.max_clip_s:
            clip.truncated = True
            self._finish()
            return
        self._push(clip, entry)

    def _push(self, clip: Clip, entry: Entry) -> None:
        if entry.seq == clip.peak_seq:
            clip.snapshot = entry
        self.writer.put("frame", clip, entry)

    def start(self, seq: int, ts: float, score: float = math.nan) -> None:
        """An event started at frame ``seq`` (captured at ``ts``) with score ``score``."""
        if self.clip is not None:
            self._finish()
        pos = self._pos(seq, ts)
        fps = self.fps or self.buffer.frame_rate() or FALLBACK_FPS
        clip = Clip(camera=self.camera, stem=event_stem(self.camera, seq, ts), start_seq=seq,
                    start_ts=ts, start_pos=pos, fps=min(max(fps, 1.0), 240.0),
                    peak_seq=seq, peak_score=score)
        self.clip = clip
        self.writer.put("open", clip)
        for entry in self.buffer.since(pos - self.pre_span - self._eps):
            self._push(clip, entry)

    def peak(self, seq: int, score: float) -> None:
        """The event's highest score so far is ``score``, at frame ``seq``."""
        clip = self.clip
        if clip is None or clip.end_seq is not None:
            return
        clip.peak_seq, clip.peak_score = seq, score
        entry = self.buffer.find(seq)
        if entry is not None:
            clip.snapshot = entry

    def end(self, seq: int, ts: float, peak_score: float) -> None:
        """The event ended at frame ``seq``."""
        clip = self.clip
        if clip is None:
            return
        clip.end_seq, clip.end_ts, clip.end_peak = seq, ts, peak_score
        clip.end_pos = self._pos(seq, ts)
        newest = self.buffer.entries[-1].pos if self.buffer.entries else -math.inf
        if newest >= clip.end_pos + self.post_span - self._eps:
            self._finish()

    def _finish(self) -> None:
        clip = self.clip
        if clip is None:
            return
        self.clip = None
        if clip.end_seq is None:
            clip.interrupted = not clip.truncated
            last = self.buffer.entries[-1] if self.buffer.entries else None
            if last is not None:
                clip.end_seq, clip.end_ts = last.seq, last.ts
        if clip.snapshot is None:
            clip.snapshot = self.buffer.find(clip.start_seq)
        self.writer.put("close", clip)

    def close(self, timeout: float = 10.0) -> None:
        """Finish the open clip (as it is) and wait for the writer."""
        self._finish()
        self.writer.close(timeout)


# ---------------------------------------------------------------------- capture side


class FrameRecorder(Protocol):
    def on_frame(self, image: np.ndarray, seq: int, ts: float) -> None: ...

    def close(self, stop: Any = None, caught_up: Callable[[], bool] | None = None) -> None: ...


class NoRecorder:
    """``[recording] enabled = false``: nothing is kept, nothing is written."""

    def on_frame(self, image: np.ndarray, seq: int, ts: float) -> None:
        return

    def close(self, stop: Any = None, caught_up: Callable[[], bool] | None = None) -> None:
        return


@dataclass(frozen=True, slots=True)
class RecordingSpec:
    """What a capture process and the worker need to record; picklable (spawn)."""

    config: RecordingConfig
    folder: str
    board: EventBoard
    model: str = ""


class CaptureRecorder:
    """The capture process's recorder: reads its camera's row of the board once per frame."""

    def __init__(self, spec: RecordingSpec, camera: str, index: int) -> None:
        self.board = spec.board
        self.index = index
        folder = Path(spec.folder)
        self.recorder = Recorder(camera, folder, spec.config, model=spec.model,
                                 retention=Retention.from_config(folder, spec.config))
        self.recorder.writer.start()  # retention from the start, not only after an event
        entry = self.board.read(index)
        #: the board's event this process follows (events before it started are not its own)
        self.event_id = entry.event_id if entry is not None else 0
        self.ended = True
        self.peak_seq = -1

    def on_frame(self, image: np.ndarray, seq: int, ts: float) -> None:
        recorder = self.recorder
        recorder.add(recorder.encode(image, seq, ts))
        self.poll()

    def poll(self) -> None:
        entry = self.board.read(self.index)
        if entry is None:
            return
        recorder = self.recorder
        if entry.event_id != self.event_id:
            self.event_id = entry.event_id
            self.ended = False
            self.peak_seq = entry.peak_seq
            recorder.start(entry.start_seq, entry.start_ts, entry.peak_score)
        if self.ended:
            return
        if entry.peak_seq != self.peak_seq:
            self.peak_seq = entry.peak_seq
            recorder.peak(entry.peak_seq, entry.peak_score)
        if entry.end_seq >= 0:
            self.ended = True
            recorder.end(entry.end_seq, entry.end_ts, entry.end_peak)

    def close(self, stop: Any = None, caught_up: Callable[[], bool] | None = None) -> None:
        """At the end of the stream (not when stopping): wait, at most ``END_WAIT_S``, until
        the worker has scored every frame (``caught_up``) and ended an event still open, so
        that events of the last frames are recorded too; then finish the clip and wait for
        the writer."""
        deadline = time.monotonic() + END_WAIT_S
        while time.monotonic() < deadline and not (stop is not None and stop.is_set()):
            self.poll()
            if (caught_up is None or caught_up()) and (self.recorder.clip is None or self.ended):
                break
            time.sleep(0.02)
        self.recorder.close()


def open_recorder(spec: RecordingSpec | None, camera: str, index: int) -> FrameRecorder:
    """The capture process's recorder: :class:`NoRecorder` when recording is off."""
    if spec is None or not spec.config.enabled:
        return NoRecorder()
    return CaptureRecorder(spec, camera, index)
