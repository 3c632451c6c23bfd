"""The event board: each camera's current anomaly event, from the worker to its capture.

The worker knows the scores, the capture process has the camera's frames: the worker writes
each camera's current event (start, end, peak frame) on an :class:`EventBoard`, a few
float64 values per camera in shared memory created by the supervisor, which the camera's
capture process reads once per frame to record the event (:mod:`forecaster.recording.recorder`).
One writer, a sequence counter around each update, readers retry a torn read: no lock, so
a killed worker leaves nothing blocked. :class:`EventNotes` is the worker's side; it also
names the event's files in the ``event`` messages (:func:`event_stem`), which the capture
process derives the same way.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable
from dataclasses import dataclass, replace
from multiprocessing.context import BaseContext

import numpy as np

from forecaster.ipc.health import SharedDoubles
from forecaster.protocol import Event, Message, Score


def event_stem(camera: str, start_seq: int, start_ts: float) -> str:
    """``<camera>/<YYYYmmdd-HHMMSS>-<start seq>``: the event's files without their suffix,
    relative to the recording folder (time: UTC capture time of the first frame)."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime(start_ts if math.isfinite(start_ts)
                                                       else 0.0))
    return f"{camera}/{stamp}-{int(start_seq)}"


class BoardField:
    """The fields of a camera's row."""

    GEN = 0  # even: stable; odd: being written
    EVENT_ID = 1  # events started on this camera (0: none yet)
    START_SEQ = 2
    START_TS = 3
    END_SEQ = 4  # -1 while the event is open
    END_TS = 5
    PEAK_SEQ = 6  # the frame of the highest score since the start
    PEAK_SCORE = 7
    END_PEAK = 8  # peak_score of the "end" event message
    #: the box of the peak frame's anomalous region, as fractions of the frame's width and
    #: height (x0, y0, x1, y1); NaN: none
    BOX_X0 = 9
    BOX_Y0 = 10
    BOX_X1 = 11
    BOX_Y1 = 12


BOARD_FIELDS = 13
NO_BOX = {BoardField.BOX_X0: math.nan, BoardField.BOX_Y0: math.nan,
          BoardField.BOX_X1: math.nan, BoardField.BOX_Y1: math.nan}


@dataclass(frozen=True, slots=True)
class BoardEntry:
    """One camera's row of the board, read consistently."""

    event_id: int
    start_seq: int
    start_ts: float
    end_seq: int
    end_ts: float
    peak_seq: int
    peak_score: float
    end_peak: float
    #: the peak frame's box, fractions of the frame (x0, y0, x1, y1); None: none
    peak_box: tuple[float, float, float, float] | None = None


class EventBoard(SharedDoubles):
    """Each camera's current event, in shared memory: written by the worker only, read by
    the camera's capture process once per frame.

    Every update is ``gen += 1`` (odd), the fields, ``gen += 1`` (even); a reader copies the
    row and retries while ``gen`` is odd or changed. No lock: a worker killed mid-update
    leaves ``gen`` odd, which the next worker repairs (:meth:`repair`).
    """

    def __init__(self, cameras: int, ctx: BaseContext | None = None) -> None:
        super().__init__(cameras, cameras * BOARD_FIELDS, ctx)
        for index in range(cameras):
            self.rows[index, BoardField.END_SEQ] = -1.0

    @property
    def rows(self) -> np.ndarray:
        """One row of :class:`BoardField` values per camera (a view of the shared block)."""
        return self.values.reshape(self.cameras, BOARD_FIELDS)

    def read(self, camera: int, tries: int = 3) -> BoardEntry | None:
        """The camera's row, or None when it was being written (``tries`` times)."""
        row = self.rows[camera]
        for _ in range(tries):
            gen = row[BoardField.GEN]
            if gen % 2:
                continue
            copy = row.copy()
            if row[BoardField.GEN] == gen:
                return BoardEntry(
                    event_id=int(copy[BoardField.EVENT_ID]),
                    start_seq=int(copy[BoardField.START_SEQ]),
                    start_ts=float(copy[BoardField.START_TS]),
                    end_seq=int(copy[BoardField.END_SEQ]),
                    end_ts=float(copy[BoardField.END_TS]),
                    peak_seq=int(copy[BoardField.PEAK_SEQ]),
                    peak_score=float(copy[BoardField.PEAK_SCORE]),
                    end_peak=float(copy[BoardField.END_PEAK]),
                    peak_box=_box(copy),
                )
        return None

    def write(self, camera: int, values: dict[int, float]) -> None:
        """Update fields of the camera's row (worker only)."""
        row = self.rows[camera]
        row[BoardField.GEN] += 1
        for key, value in values.items():
            row[key] = value
        row[BoardField.GEN] += 1

    def repair(self, camera: int) -> None:
        """Make ``gen`` even again after a writer died mid-update."""
        row = self.rows[camera]
        if row[BoardField.GEN] % 2:
            row[BoardField.GEN] += 1


def _box(row: np.ndarray) -> tuple[float, float, float, float] | None:
    box = tuple(float(v) for v in row[BoardField.BOX_X0:BoardField.BOX_Y1 + 1])
    if not all(math.isfinite(v) for v in box):
        return None
    return box[0], box[1], box[2], box[3]


def box_fields(box: tuple[int, int, int, int] | None, size: tuple[int, int]) -> dict[int, float]:
    """A score's box (model-frame pixels) as the board's fractions; NaN without one.
    ``size`` is the model frame's (height, width)."""
    if box is None:
        return dict(NO_BOX)
    height, width = size
    return {BoardField.BOX_X0: box[0] / width, BoardField.BOX_Y0: box[1] / height,
            BoardField.BOX_X1: box[2] / width, BoardField.BOX_Y1: box[3] / height}


class EventNotes:
    """The worker's side: writes each event on the board and names its files in the event
    messages. ``board`` None (replay): the messages are only annotated."""

    def __init__(self, cameras: Iterable[str], board: EventBoard | None = None,
                 size: tuple[int, int] = (64, 64)) -> None:
        self.board = board
        #: the model frame's (height, width): the scores' boxes are in its pixels
        self.size = size
        self.index = {camera: i for i, camera in enumerate(cameras)}
        #: camera -> (stem of the open event, highest score since its start)
        self.open: dict[str, tuple[str, float]] = {}
        self.last_score: dict[str, tuple[int, float]] = {}
        self.last_box: dict[str, tuple[int, int, int, int] | None] = {}

    def close_stale(self, camera: str, seq: int) -> None:
        """An event this worker did not start is still open on the board (the previous
        worker died during it): end it at ``seq``, the last frame fed."""
        if self.board is None:
            return
        index = self.index[camera]
        self.board.repair(index)
        entry = self.board.read(index)
        if entry is not None and entry.event_id > 0 and entry.end_seq < 0:
            self.board.write(index, {BoardField.END_SEQ: max(seq, entry.start_seq),
                                     BoardField.END_TS: time.time(),
                                     BoardField.END_PEAK: entry.peak_score})

    def note(self, message: Message) -> Message:
        """``message`` as published: an event names its files."""
        camera = message.camera
        if isinstance(message, Score):
            self.last_score[camera] = (message.seq, message.score)
            self.last_box[camera] = message.box
            current = self.open.get(camera)
            if current is not None and message.score > current[1]:
                self.open[camera] = (current[0], message.score)
                self._write(camera, {BoardField.PEAK_SEQ: message.seq,
                                     BoardField.PEAK_SCORE: message.score,
                                     **box_fields(message.box, self.size)})
            return message
        if not isinstance(message, Event):
            return message
        if message.state == "start":
            stem = event_stem(camera, message.seq, message.ts)
            seq, score = self.last_score.get(camera, (message.seq, message.peak_score))
            box = self.last_box.get(camera)
            if seq != message.seq or not math.isfinite(score):
                score, box = message.peak_score, None
            self.open[camera] = (stem, score)
            index = self.index.get(camera)
            event_id = 0 if self.board is None or index is None else (
                int(self.board.rows[index, BoardField.EVENT_ID]) + 1)
            self._write(camera, {BoardField.START_SEQ: message.seq,
                                 BoardField.START_TS: message.ts,
                                 BoardField.END_SEQ: -1.0, BoardField.END_TS: math.nan,
                                 BoardField.PEAK_SEQ: message.seq,
                                 BoardField.PEAK_SCORE: score,
                                 BoardField.END_PEAK: math.nan,
                                 BoardField.EVENT_ID: event_id,
                                 **box_fields(box, self.size)})
        else:
            current = self.open.pop(camera, None)
            if current is None:
                return message
            stem = current[0]
            self._write(camera, {BoardField.END_TS: message.ts,
                                 BoardField.END_PEAK: message.peak_score,
                                 BoardField.END_SEQ: message.seq})
        return replace(message, clip=stem + ".mp4", snapshot=stem + ".jpg")

    def _write(self, camera: str, values: dict[int, float]) -> None:
        index = self.index.get(camera)
        if self.board is not None and index is not None:
            self.board.write(index, values)
