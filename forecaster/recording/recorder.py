"""Event recordings: a clip, a snapshot and a sidecar per anomaly event.

Layout, under the recording folder (:func:`forecaster.recording.recording_dir.events_dir`)::

    <camera>/<YYYYmmdd-HHMMSS>-<start seq>.mp4    the clip (pre-roll, event, post-roll)
    <camera>/<YYYYmmdd-HHMMSS>-<start seq>.jpg    the frame of the event's highest score
    <camera>/<YYYYmmdd-HHMMSS>-<start seq>.json   the sidecar, written last: the event is
                                                  complete once it exists

The time in the name is the UTC capture time of the event's first frame, so the worker
names the files in its ``event`` messages without waiting for the capture process that
writes them (:func:`forecaster.recording.event_board.event_stem`).

Who does what in the daemon:

- the worker (it knows the scores) writes each camera's current event on the event board
  (:mod:`forecaster.recording.event_board`: shared memory, one writer, no lock) and names the
  event's files in its ``event`` messages;
- each capture process keeps its camera's recent frames as JPEGs in a bounded pre-roll
  buffer (:class:`PrerollBuffer`) and reads the board once per frame
  (:class:`CaptureRecorder`); on a new event it hands the pre-roll and every following
  frame to a writer thread (:class:`ClipWriter`: a bounded queue, full = the frame is
  dropped and counted; :mod:`forecaster.recording.clip_writer`), which writes the clip under a
  temporary name and renames it once complete, then the snapshot and the sidecar;
- the writer thread also applies retention (:mod:`forecaster.recording.retention`: maximum age,
  maximum total size, free-space floor; the oldest events first) at each new event and
  once a minute.

``forecaster replay --clips`` drives the same :class:`Recorder` from the scores it computes,
with the pre- and post-roll counted in frames at the source's frame rate.
"""

from __future__ import annotations

import collections
import logging
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import cv2
import numpy as np

from forecaster.config import RecordingConfig
from forecaster.protocol import Event, Message, Score
from forecaster.recording.clip_writer import Clip, ClipWriter, Entry
from forecaster.recording.event_board import EventBoard, event_stem
from forecaster.recording.event_index import EventIndex, reconcile
from forecaster.recording.packets import CopyRecorder, PacketTap
from forecaster.recording.retention import MB, Retention
from forecaster.sources.preprocess import scaled

log = logging.getLogger("forecaster.recording")

#: extra seconds of frames the pre-roll buffer keeps beyond ``pre_s``: the worker learns of
#: an event a little after the capture process wrote its first frame
LAG_S = 2.0
#: seconds the capture process waits at the end of its stream for the worker to end an
#: event still open
END_WAIT_S = 10.0
#: frame rate of a clip whose source rate cannot be measured
FALLBACK_FPS = 25.0


# ---------------------------------------------------------------------------- frames


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
                 lag_s: float = LAG_S, index: EventIndex | None = None,
                 box_size: tuple[int, int] | None = None) -> None:
        self.camera = camera
        #: the model frame's (height, width), in whose pixels the scores' boxes are (replay)
        self.box_size = box_size
        self.folder = folder
        self.settings = settings
        self.fps = fps
        if fps:
            self.pre_span = round(settings.pre_s * fps) / fps
            self.post_span = round(settings.post_s * fps) / fps
        else:
            self.pre_span, self.post_span = settings.pre_s, settings.post_s
        self.buffer = PrerollBuffer(self.pre_span + lag_s, int(settings.preroll_max_mb * MB))
        self.writer = ClipWriter(folder, retention, model, settings, block=bool(fps),
                                 index=index)
        self.clip: Clip | None = None
        self._params = [int(cv2.IMWRITE_JPEG_QUALITY), settings.jpeg_quality]
        self._eps = 1e-6

    def _pos(self, seq: int, ts: float) -> float:
        return seq / self.fps if self.fps else ts

    def encode(self, image: np.ndarray, seq: int, ts: float) -> Entry:
        return self._entry(scaled(image, self.settings.max_width), seq, ts)

    def _entry(self, small: np.ndarray, seq: int, ts: float) -> Entry:
        ok, data = cv2.imencode(".jpg", small, self._params)
        return Entry(seq, ts, self._pos(seq, ts), data.tobytes() if ok else b"")

    def on_frame(self, image: np.ndarray, seq: int, ts: float) -> None:
        """A frame as captured: into the pre-roll as a JPEG, and into an open clip as the
        image too (copied only then, where it is the caller's array, which its source may
        reuse)."""
        small = scaled(image, self.settings.max_width)
        entry = self._entry(small, seq, ts)
        if self.clip is None:
            self.add(entry)
            return
        self.add(entry, small.copy() if small is image else small)

    def add_scored(self, entry: Entry, messages: Iterable[Message]) -> None:
        """A frame and the messages about it, in order (replay: nothing is late)."""
        self.add(entry)
        score = math.nan
        box = None
        for message in messages:
            if isinstance(message, Score):
                score = message.score
                box = self._fractions(message.box)
                clip = self.clip
                if (clip is not None and clip.end_seq is None and math.isfinite(score)
                        and not score <= clip.peak_score):
                    self.peak(message.seq, score, box)
            elif isinstance(message, Event):
                if message.state == "start":
                    self.start(message.seq, message.ts, score, box)
                else:
                    self.end(message.seq, message.ts, message.peak_score)

    def _fractions(self, box: tuple[int, int, int, int] | None
                   ) -> tuple[float, float, float, float] | None:
        if box is None or self.box_size is None:
            return None
        height, width = self.box_size
        return box[0] / width, box[1] / height, box[2] / width, box[3] / height

    def add(self, entry: Entry, image: np.ndarray | None = None) -> None:
        """``entry`` into the pre-roll buffer and the open clip; ``image``: its frame as
        the JPEG holds it (the writer then need not decode the JPEG)."""
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
        self._push(clip, entry, image)

    def _push(self, clip: Clip, entry: Entry, image: np.ndarray | None = None) -> None:
        if entry.seq == clip.peak_seq:
            clip.snapshot = entry
        self.writer.put("frame", clip, entry, image)

    def start(self, seq: int, ts: float, score: float = math.nan,
              box: tuple[float, float, float, float] | None = None) -> None:
        """An event started at frame ``seq`` (captured at ``ts``) with score ``score``."""
        if self.clip is not None:
            self._finish()
        pos = self._pos(seq, ts)
        fps = self.fps or self.buffer.frame_rate() or FALLBACK_FPS
        clip = Clip(camera=self.camera, stem=event_stem(self.camera, seq, ts), start_seq=seq,
                    start_ts=ts, start_pos=pos, fps=min(max(fps, 1.0), 240.0),
                    peak_seq=seq, peak_score=score, peak_box=box)
        self.clip = clip
        self.writer.put("open", clip)
        for entry in self.buffer.since(pos - self.pre_span - self._eps):
            self._push(clip, entry)

    def peak(self, seq: int, score: float,
             box: tuple[float, float, float, float] | None = None) -> None:
        """The event's highest score so far is ``score``, at frame ``seq``; ``box``: where
        in that frame (fractions of its width and height), drawn on the snapshot."""
        clip = self.clip
        if clip is None or clip.end_seq is not None:
            return
        clip.peak_seq, clip.peak_score, clip.peak_box = seq, score, box
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

    def close(self, timeout: float | None = None, stop: Any = None) -> None:
        """Finish the open clip (as it is) and wait for the writer, which cuts the frames
        still queued shortly after ``stop`` is set (:meth:`ClipWriter.close`)."""
        self._finish()
        self.writer.close(timeout, stop)


# ---------------------------------------------------------------------- capture side


class FrameRecorder(Protocol):
    def on_frame(self, image: np.ndarray, seq: int, ts: float) -> None: ...

    def on_copied(self, seq: int, ts: float) -> None: ...

    def close(self, stop: Any = None, caught_up: Callable[[], bool] | None = None) -> None: ...


class NoRecorder:
    """``[recording] enabled = false``: nothing is kept, nothing is written."""

    def on_frame(self, image: np.ndarray, seq: int, ts: float) -> None:
        return

    def on_copied(self, seq: int, ts: float) -> None:
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
    """The capture process's recorder: reads its camera's row of the board once per frame.

    ``tap``: the source's packets, where its video is copied into the clips
    (:class:`~forecaster.recording.packets.CopyRecorder`, fed by :meth:`on_copied`); an
    event that starts while the source is not copied is encoded from the frames given to
    :meth:`on_frame`."""

    def __init__(self, spec: RecordingSpec, camera: str, index: int,
                 tap: PacketTap | None = None) -> None:
        self.board = spec.board
        self.index = index
        folder = Path(spec.folder)
        # no writer of this camera runs yet (a capture restarted after a crash): its events
        # left unfinished are settled before new ones start
        events = EventIndex(folder)
        events.quietly("reconcile", reconcile, folder, events, [camera])
        self.recorder = Recorder(camera, folder, spec.config, model=spec.model,
                                 retention=Retention.from_config(folder, spec.config, events),
                                 index=events)
        self.recorder.writer.start()  # retention from the start, not only after an event
        self.copier = None if tap is None else CopyRecorder(camera, self.recorder.writer,
                                                            spec.config, tap)
        #: the recorder of the event under way
        self.current: Recorder | CopyRecorder = self.recorder
        entry = self.board.read(index)
        #: the board's event this process follows (events before it started are not its own)
        self.event_id = entry.event_id if entry is not None else 0
        self.ended = True
        self.peak_seq = -1

    def on_frame(self, image: np.ndarray, seq: int, ts: float) -> None:
        self._leave(self.copier)
        self.recorder.on_frame(image, seq, ts)
        self.poll()

    def on_copied(self, seq: int, ts: float) -> None:
        """Frame ``seq``, the tap's last, whose packets the clips copy."""
        self._leave(self.recorder)
        if self.copier is not None:
            self.copier.on_frame(seq, ts)
        self.poll()

    def _leave(self, other: Recorder | CopyRecorder | None) -> None:
        """The frames come the other way now (the source copied, or no longer: a reconnect,
        a file only OpenCV reads): the clip ``other`` was making ends with what it has."""
        if other is not None and other is self.current and other.clip is not None:
            self._finish_current()

    def poll(self) -> None:
        entry = self.board.read(self.index)
        if entry is None:
            return
        if entry.event_id != self.event_id:
            self.event_id = entry.event_id
            self.ended = False
            self.peak_seq = entry.peak_seq
            copier = self.copier
            target: Recorder | CopyRecorder = (
                copier if copier is not None and copier.active else self.recorder)
            if target is not self.current:
                self._finish_current()
                self.current = target
            target.start(entry.start_seq, entry.start_ts, entry.peak_score, entry.peak_box)
        if self.ended:
            return
        recorder: Recorder | CopyRecorder = self.current
        if entry.peak_seq != self.peak_seq:
            self.peak_seq = entry.peak_seq
            recorder.peak(entry.peak_seq, entry.peak_score, entry.peak_box)
        if entry.end_seq >= 0:
            self.ended = True
            recorder.end(entry.end_seq, entry.end_ts, entry.end_peak)

    def close(self, stop: Any = None, caught_up: Callable[[], bool] | None = None) -> None:
        """At the end of the stream (not when stopping): wait, at most ``END_WAIT_S``, until
        the worker has scored every frame (``caught_up``) and ended an event still open, so
        that events of the last frames are recorded too; then finish the clip and wait for
        the writer (shortly, once ``stop`` is set: the frames still queued are cut)."""
        deadline = time.monotonic() + END_WAIT_S
        while time.monotonic() < deadline and not (stop is not None and stop.is_set()):
            self.poll()
            if (caught_up is None or caught_up()) and (self.current.clip is None or self.ended):
                break
            time.sleep(0.02)
        if self.copier is not None:
            self.copier.finish()
        self.recorder.close(stop=stop)

    def _finish_current(self) -> None:
        current = self.current
        if isinstance(current, CopyRecorder):
            current.finish()
        else:
            current._finish()


def open_recorder(spec: RecordingSpec | None, camera: str, index: int,
                  tap: PacketTap | None = None) -> FrameRecorder:
    """The capture process's recorder: :class:`NoRecorder` when recording is off. ``tap``:
    the source's packets, copied into the clips where they can be."""
    if spec is None or not spec.config.enabled:
        return NoRecorder()
    return CaptureRecorder(spec, camera, index, tap)
