"""The event index: one row per anomaly event, in SQLite beside the recordings.

``<recording folder>/events.db`` (stdlib :mod:`sqlite3`, WAL, a busy timeout): many writers
(each camera's clip writer thread, in the capture processes) and one more (the live page,
which acknowledges and dismisses). A row is inserted when an event's clip begins
(``clip_state = 'recording'``) and updated once its files are finished (``'ready'``),
finished short (``'interrupted'``: the daemon stopped during the event) or not written
(``'none'``). Retention deletes rows and files together
(:mod:`forecaster.recording.retention`).

:func:`reconcile` runs at the daemon's start, and for its camera at each capture start: a
row whose files are gone is removed (or, when the event was never finished, kept as
``'interrupted'`` with no files); complete files without a row get one from their sidecar;
files of an event that was never finished (no sidecar) are removed. After a crash, the
index and the folder agree again from the next start on.

An index that cannot be written (a locked or broken file) never stops a recording: the
problem is logged once and the files are still written; the next start reconciles. A
damaged index file is set aside at the daemon's start (``events.db.damaged-<time>``) and
made again from the sidecars; its acknowledgements are lost. A sidecar that cannot be read
(damaged by a power cut) keeps its clip and snapshot: the event is indexed from their
names, as interrupted.
"""

from __future__ import annotations

import calendar
import contextlib
import json
import logging
import math
import os
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from forecaster.recording.retention import RecordedEvent, event_file, list_events, unlink_in

log = logging.getLogger("forecaster.recording")

INDEX_NAME = "events.db"
#: milliseconds a writer waits for another one's lock
BUSY_TIMEOUT_MS = 5000
STATES = ("recording", "ready", "interrupted", "none")

SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    camera TEXT NOT NULL,
    stem TEXT NOT NULL UNIQUE,
    start_ts REAL,
    end_ts REAL,
    start_seq INTEGER,
    end_seq INTEGER,
    peak REAL,
    peak_ts REAL,
    peak_seq INTEGER,
    clip TEXT,
    snapshot TEXT,
    clip_start_ts REAL,
    clip_end_ts REAL,
    clip_state TEXT NOT NULL DEFAULT 'recording',
    acked_by TEXT,
    acked_at REAL,
    dismissed INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS events_by_camera ON events (camera, start_ts);
CREATE INDEX IF NOT EXISTS events_by_start ON events (start_ts);
CREATE INDEX IF NOT EXISTS events_by_order ON events (COALESCE(start_ts, 0), id);
"""

#: the columns a reader gets, in order
COLUMNS = ("id", "camera", "stem", "start_ts", "end_ts", "start_seq", "end_seq", "peak",
           "peak_ts", "peak_seq", "clip", "snapshot", "clip_start_ts", "clip_end_ts",
           "clip_state", "acked_by", "acked_at", "dismissed")
_SELECT = f"SELECT {', '.join(COLUMNS)} FROM events"


def index_path(folder: Path) -> Path:
    return folder / INDEX_NAME


def _finite(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


@dataclass(frozen=True, slots=True)
class Page:
    """A page of events, newest first; ``next_before``: the ``before`` of the next page."""

    events: list[dict[str, Any]]
    next_before: int | None


class EventIndex:
    """The index file of one recording folder. Thread-safe (one connection, a lock); the
    connection opens at the first use, in the process that uses it."""

    def __init__(self, folder: Path, *, create: bool = True) -> None:
        self.folder = folder
        self.path = index_path(folder)
        self.create = create
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None
        self._failed_logged = False

    # -- connection -----------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        if self._db is None:
            if not self.create and not self.path.is_file():
                raise sqlite3.OperationalError(f"no event index {self.path}")
            db = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_MS / 1000,
                                 isolation_level=None, check_same_thread=False)
            try:
                db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
                if db.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                    db.execute("PRAGMA journal_mode = WAL")
                db.execute("PRAGMA synchronous = NORMAL")
                db.executescript(SCHEMA)
            except sqlite3.Error:
                db.close()
                raise
            self._db = db
        return self._db

    @contextlib.contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """One write transaction (taken at once: no lock upgrade to wait on)."""
        with self._lock:
            db = self._connect()
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
                db.execute("COMMIT")
            except BaseException:
                # a failed COMMIT (a full disk) may leave the transaction open, and with it
                # the write lock: every process's next write would wait and fail
                try:
                    if db.in_transaction:
                        db.execute("ROLLBACK")
                except sqlite3.Error:
                    db.close()  # the next use connects again
                    self._db = None
                raise

    def _read(self, sql: str, args: Iterable[Any] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            return self._connect().execute(sql, tuple(args)).fetchall()

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None

    def quietly(self, what: str, call: Any, *args: Any, **kwargs: Any) -> Any:
        """``call(*args)``; a database error is logged (once per index) and gives None."""
        try:
            return call(*args, **kwargs)
        except sqlite3.Error as error:
            if not self._failed_logged:
                self._failed_logged = True
                log.warning("event index %s: cannot %s: %s (the recordings go on; the next "
                            "start reconciles the index)", self.path, what, error)
            return None

    # -- the recorder's side --------------------------------------------------------------

    def opened(self, camera: str, stem: str, start_seq: int, start_ts: float,
               peak: float | None = None) -> None:
        """An event's clip begins (``stem``: ``<camera>/<name>``, as the files)."""
        with self._tx() as db:
            db.execute(
                "INSERT INTO events (camera, stem, start_ts, start_seq, peak, peak_seq, "
                "clip_state) VALUES (?, ?, ?, ?, ?, ?, 'recording') ON CONFLICT(stem) DO "
                "UPDATE SET clip_state = 'recording', clip = NULL, snapshot = NULL",
                (camera, stem, _finite(start_ts), int(start_seq), _finite(peak),
                 int(start_seq)))

    def finished(self, stem: str, record: dict[str, Any], state: str) -> None:
        """The event's files are finished: ``record`` is its sidecar (or what is known of
        it when nothing was written; ``state`` 'none')."""
        if state not in STATES:
            raise ValueError(f"clip_state {state!r}")
        values = _from_sidecar(record)
        if state == "none":
            values["clip"] = values["snapshot"] = None
        with self._tx() as db:
            camera = record.get("camera") if isinstance(record.get("camera"), str) else \
                stem.split("/", 1)[0]
            db.execute("INSERT OR IGNORE INTO events (camera, stem) VALUES (?, ?)",
                       (camera, stem))
            names = sorted(values)
            db.execute(f"UPDATE events SET {', '.join(f'{n} = ?' for n in names)}, "
                       "clip_state = ? WHERE stem = ?",
                       (*(values[n] for n in names), state, stem))

    def forget(self, stems: Iterable[str]) -> int:
        """Delete the rows of these events (their files were deleted)."""
        stems = list(stems)
        if not stems:
            return 0
        with self._tx() as db:
            return db.executemany("DELETE FROM events WHERE stem = ?",
                                  [(s,) for s in stems]).rowcount

    def prune(self, before_ts: float) -> int:
        """Delete rows without files whose event started before ``before_ts``."""
        with self._tx() as db:
            return db.execute("DELETE FROM events WHERE clip IS NULL AND snapshot IS NULL "
                              "AND clip_state != 'recording' AND start_ts < ?",
                              (before_ts,)).rowcount

    # -- the page's side ------------------------------------------------------------------

    def get(self, event_id: int) -> dict[str, Any] | None:
        rows = self._read(f"{_SELECT} WHERE id = ?", (event_id,))
        return _row(rows[0]) if rows else None

    def states(self, stems: Iterable[str]) -> dict[str, str]:
        """``stem -> clip_state`` of these events (those in the index)."""
        stems = list(stems)
        if not stems:
            return {}
        marks = ", ".join("?" * len(stems))
        rows = self._read(f"SELECT stem, clip_state FROM events WHERE stem IN ({marks})",
                          stems)
        return {stem: state for stem, state in rows}

    def page(self, *, camera: str | None = None, since: float | None = None,
             until: float | None = None, before: int | None = None, limit: int = 50,
             include_dismissed: bool = False) -> Page:
        """Events newest first (by start time, then id), at most ``limit``; ``before``: only
        those after the event ``before`` in that order (the next page)."""
        where, args = self._filters(camera, since, until, include_dismissed)
        if before is not None:
            anchor = self._read("SELECT start_ts FROM events WHERE id = ?", (before,))
            if anchor:
                where.append("(COALESCE(start_ts, 0) < ? OR "
                             "(COALESCE(start_ts, 0) = ? AND id < ?))")
                start = anchor[0][0] or 0.0
                args += [start, start, before]
            else:
                where.append("id < ?")
                args.append(before)
        sql = (f"{_SELECT}{' WHERE ' + ' AND '.join(where) if where else ''} "
               "ORDER BY COALESCE(start_ts, 0) DESC, id DESC LIMIT ?")
        rows = [_row(r) for r in self._read(sql, [*args, limit + 1])]
        more = len(rows) > limit
        rows = rows[:limit]
        return Page(rows, rows[-1]["id"] if more and rows else None)

    @staticmethod
    def _filters(camera: str | None, since: float | None, until: float | None,
                 include_dismissed: bool) -> tuple[list[str], list[Any]]:
        where: list[str] = []
        args: list[Any] = []
        if camera is not None:
            where.append("camera = ?")
            args.append(camera)
        if since is not None:
            where.append("start_ts >= ?")
            args.append(since)
        if until is not None:
            where.append("start_ts < ?")
            args.append(until)
        if not include_dismissed:
            where.append("dismissed = 0")
        return where, args

    def summary(self) -> dict[str, tuple[int, float | None]]:
        """``camera -> (unacknowledged events, start time of its newest event)``."""
        rows = self._read("SELECT camera, SUM(acked_at IS NULL AND dismissed = 0), "
                          "MAX(start_ts) FROM events GROUP BY camera")
        return {camera: (int(unacked or 0), last) for camera, unacked, last in rows}

    def ack(self, *, by: str, event_id: int | None = None, camera: str | None = None,
            dismiss: bool = False, now: float | None = None) -> int:
        """Acknowledge (and with ``dismiss``, dismiss) one event or every event of a
        camera; the rows changed. An event acknowledged before keeps its first ``acked_by``
        and ``acked_at``."""
        now = time.time() if now is None else now
        if (event_id is None) == (camera is None):
            raise ValueError("one event or one camera")
        key, value = ("id", event_id) if event_id is not None else ("camera", camera)
        sets = "acked_by = COALESCE(acked_by, ?), acked_at = COALESCE(acked_at, ?)"
        pending = "acked_at IS NULL"
        if dismiss:
            sets += ", dismissed = 1"
            pending = "(acked_at IS NULL OR dismissed = 0)"
        with self._tx() as db:
            return db.execute(f"UPDATE events SET {sets} WHERE {key} = ? AND {pending}",
                              (by, now, value)).rowcount

    def all_rows(self) -> list[dict[str, Any]]:
        return [_row(r) for r in self._read(f"{_SELECT} ORDER BY id")]


def _row(values: tuple[Any, ...]) -> dict[str, Any]:
    row = dict(zip(COLUMNS, values, strict=True))
    row["dismissed"] = bool(row["dismissed"])
    return row


def _from_sidecar(record: dict[str, Any]) -> dict[str, Any]:
    """The index's columns from a sidecar (:meth:`ClipWriter._sidecar`)."""
    def path(key: str) -> str | None:
        value = record.get(key)
        return value if isinstance(value, str) and value and ".." not in value else None

    return {
        "start_ts": _finite(record.get("start_ts")),
        "end_ts": _finite(record.get("end_ts")),
        "start_seq": _int(record.get("start_seq")),
        "end_seq": _int(record.get("end_seq")),
        "peak": _finite(record.get("peak_score")),
        "peak_ts": _finite(record.get("peak_ts")),
        "peak_seq": _int(record.get("peak_seq")),
        "clip": path("clip"),
        "snapshot": path("snapshot"),
        "clip_start_ts": _finite(record.get("first_ts")),
        "clip_end_ts": _finite(record.get("last_ts")),
    }


def sidecar_state(record: dict[str, Any]) -> str:
    """The clip state a finished event's sidecar tells."""
    if record.get("interrupted") or not record.get("clip"):
        return "interrupted"
    return "ready"


# ------------------------------------------------------------------------------ reconcile


@dataclass(frozen=True, slots=True)
class Reconciled:
    """What :func:`reconcile` changed."""

    added: int = 0  # rows made from sidecars
    updated: int = 0  # rows brought in line with their files
    removed_rows: int = 0  # rows whose files were gone
    interrupted: int = 0  # rows of events never finished, kept without files
    removed_files: int = 0  # files of events never finished (no sidecar)

    @property
    def changed(self) -> bool:
        return any((self.added, self.updated, self.removed_rows, self.interrupted,
                    self.removed_files))


def read_sidecar(path: Path) -> dict[str, Any] | None:
    try:
        record = json.loads(path.read_text("utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError):
        return None
    return record if isinstance(record, dict) else None


def reconcile(folder: Path, index: EventIndex, cameras: Iterable[str] | None = None) -> Reconciled:
    """Make the index and the folder agree (at a start, no writer running for ``cameras``;
    None: every camera). See the module's docstring for the rules."""
    wanted = set(cameras) if cameras is not None else None
    on_disk: dict[str, RecordedEvent] = {
        event.key: event for event in list_events(folder, wanted)}
    rows = {row["stem"]: row for row in index.all_rows()
            if wanted is None or row["camera"] in wanted}
    added = updated = removed_rows = interrupted = removed_files = 0
    forget: list[str] = []
    for stem, event in on_disk.items():
        camera = stem.split("/", 1)[0]
        names = {f"{camera}/{path.name}" for path in event.files}  # relative to the folder
        has_sidecar = f"{stem}.json" in names
        row = rows.get(stem)
        if row is not None and row["clip_state"] != "recording" and has_sidecar \
                and all(row[k] is None or row[k] in names for k in ("clip", "snapshot")):
            continue  # settled, and its files are there
        record = read_sidecar(folder / f"{stem}.json") if has_sidecar else None
        if record is None and has_sidecar:  # finished, but its sidecar was damaged (a
            # power cut after its rename): the clip and snapshot stay, the event is indexed
            # from their names as interrupted, only its temporary files go
            record = _damaged_sidecar(stem, names, event.files)
            removed_files += _remove_temporary(event.files)
        if record is None:  # never finished: its files go, its row stays as interrupted
            for path in event.files:
                unlink_in(path)
                removed_files += 1
            if row is not None:
                _mark_interrupted(index, stem)
                interrupted += 1
            continue
        for key in ("clip", "snapshot"):  # only files that are there
            value = record.get(key)
            if isinstance(value, str) and value not in names:
                record[key] = None
        state = sidecar_state(record)
        values = _from_sidecar(record)
        if row is None:
            index.finished(stem, record, state)
            added += 1
        elif row["clip_state"] != state or any(row[k] != values[k] for k in ("clip",
                                                                              "snapshot")):
            index.finished(stem, record, state)
            updated += 1
    for stem, row in rows.items():
        if stem in on_disk:
            continue
        if row["clip"] is not None or row["snapshot"] is not None:
            forget.append(stem)  # its files are gone
        elif row["clip_state"] == "recording":
            _mark_interrupted(index, stem)
            interrupted += 1
    removed_rows = index.forget(forget)
    result = Reconciled(added, updated, removed_rows, interrupted, removed_files)
    if result.changed:
        log.info("event index: reconciled with %s: %d row(s) added from sidecars, %d updated, "
                 "%d removed (files gone), %d event(s) never finished kept without files "
                 "(%d of their files removed)", folder, added, updated, removed_rows,
                 interrupted, removed_files)
    return result


def _damaged_sidecar(stem: str, names: set[str], files: Iterable[Path]) -> dict[str, Any]:
    """What the file names of an event whose sidecar cannot be read tell of it."""
    camera, name = stem.split("/", 1)
    record: dict[str, Any] = {"camera": camera, "interrupted": True}
    try:  # <YYYYmmdd-HHMMSS>-<seq>, in UTC
        record["start_ts"] = float(calendar.timegm(
            time.strptime(name.rsplit("-", 1)[0], "%Y%m%d-%H%M%S")))
        record["start_seq"] = int(name.rsplit("-", 1)[1])
    except (ValueError, OverflowError):
        pass
    for key, suffix in (("clip", ".mp4"), ("snapshot", ".jpg")):
        if f"{stem}{suffix}" in names:
            record[key] = f"{stem}{suffix}"
    log.warning("event index: the sidecar of %s cannot be read (damaged); its clip and "
                "snapshot are kept and indexed as interrupted", stem)
    return record


def _remove_temporary(files: Iterable[Path]) -> int:
    removed = 0
    for path in files:
        named = event_file(path.name)
        if named is not None and named[1]:
            unlink_in(path)
            removed += 1
    return removed


def _mark_interrupted(index: EventIndex, stem: str) -> None:
    with index._tx() as db:
        db.execute("UPDATE events SET clip_state = 'interrupted', clip = NULL, snapshot = NULL "
                   "WHERE stem = ?", (stem,))


def reconcile_at_start(folder: Path) -> Reconciled | None:
    """The daemon's start (no writer runs yet): the index created if missing, and
    reconciled with the whole folder; None when the index cannot be used (logged)."""
    index = EventIndex(folder)
    try:
        try:
            return reconcile(folder, index)
        except sqlite3.DatabaseError as error:
            if isinstance(error, sqlite3.OperationalError):  # locked, unwritable: not damaged
                raise
            index.close()
            aside = set_aside(index.path)
            log.warning("event index %s is damaged (%s): moved to %s and made again from the "
                        "recordings' sidecars (acknowledgements in it are lost)", index.path,
                        error, aside.name)
        result: Reconciled | None = index.quietly("reconcile", reconcile, folder, index)
        return result
    except sqlite3.Error as error:
        log.warning("event index %s: cannot reconcile: %s (the recordings go on; the next "
                    "start tries again)", index.path, error)
        return None
    finally:
        index.close()


def set_aside(path: Path) -> Path:
    """Rename a damaged index (and its WAL files) to ``<name>.damaged-<time>``."""
    aside = path.with_name(f"{path.name}.damaged-{time.strftime('%Y%m%d-%H%M%S')}")
    for suffix in ("", "-wal", "-shm"):
        with contextlib.suppress(FileNotFoundError):
            os.replace(f"{path}{suffix}", f"{aside}{suffix}")
    return aside


def index_exists(folder: Path) -> bool:
    return os.path.isfile(index_path(folder))
