"""Retention of the event recordings: a maximum age, a maximum total size and a free-space
floor, the oldest events deleted first (all their files together).

Only the daemon's own files count: in a camera's folder (a real folder named as a camera
id), files named as the recorder names them (:data:`EVENT_FILE`). Other files, symbolic
links and what they point to are never counted nor deleted."""

from __future__ import annotations

import collections
import logging
import os
import re
import shutil
import stat
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from forecaster.config import RecordingConfig
from forecaster.protocol import is_camera_id

log = logging.getLogger("forecaster.recording")

MB = 1024 * 1024
#: a temporary file untouched this long belongs to a writer that died: retention removes it
STALE_TEMP_S = 3600.0


class IndexRows(Protocol):
    """What retention needs of the event index (:mod:`forecaster.recording.event_index`)."""

    def quietly(self, what: str, call: Any, *args: Any) -> Any: ...

    def forget(self, stems: Iterable[str]) -> int: ...

    def prune(self, before_ts: float) -> int: ...


@dataclass(slots=True)
class RecordedEvent:
    """The files of one event (or of one being written, when ``temporary``)."""

    key: str  # <camera>/<stem>
    files: list[Path]
    #: modification time of its oldest file (the event's age) and of its newest one
    mtime: float
    newest: float
    size: int
    temporary: bool


#: the names of an event's files, as the recorder writes them (:mod:`forecaster.recording.recorder`):
#: ``<YYYYmmdd-HHMMSS>-<seq>.mp4|.jpg|.json``, and while being written
#: ``.<stem>.tmp.mp4``, ``.<stem>.jpg.tmp``, ``.<stem>.json.tmp``
EVENT_FILE = re.compile(r"(?:(?P<stem>\d{8}-\d{6}-\d+)\.(?:mp4|jpg|json)"
                        r"|\.(?P<temp>\d{8}-\d{6}-\d+)\.(?:tmp\.mp4|jpg\.tmp|json\.tmp))")


def event_file(name: str) -> tuple[str, bool] | None:
    """``(stem, temporary)`` of a file the recorder writes; None for any other name."""
    match = EVENT_FILE.fullmatch(name)
    if match is None:
        return None
    if match["stem"] is not None:
        return match["stem"], False
    return match["temp"], True


def _scan(path: Path) -> list[os.DirEntry[str]]:
    try:
        with os.scandir(path) as entries:
            return list(entries)
    except OSError:
        return []


def list_events(folder: Path, cameras: Iterable[str] | None = None) -> list[RecordedEvent]:
    """The events under ``folder`` (``<camera>/<stem>.*``, the recorder's names only; no
    symbolic link followed), oldest first; only those of ``cameras`` when given."""
    groups: dict[str, RecordedEvent] = {}
    wanted = None if cameras is None else set(cameras)
    for camera in _scan(folder):
        if wanted is not None and camera.name not in wanted:
            continue
        if not is_camera_id(camera.name) or not camera.is_dir(follow_symlinks=False):
            continue
        for entry in _scan(Path(camera.path)):
            named = event_file(entry.name)
            if named is None:
                continue
            try:
                info = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            if not stat.S_ISREG(info.st_mode):
                continue
            stem, temporary = named
            key = f"{camera.name}/{stem}"
            group = groups.get(key)
            if group is None:
                group = groups[key] = RecordedEvent(key, [], info.st_mtime, info.st_mtime, 0,
                                                    False)
            group.files.append(Path(entry.path))
            group.mtime = min(group.mtime, info.st_mtime)
            group.newest = max(group.newest, info.st_mtime)
            group.size += info.st_size
            group.temporary = group.temporary or temporary
    return sorted(groups.values(), key=lambda event: (event.mtime, event.key))


@dataclass(frozen=True, slots=True)
class SweepResult:
    deleted: list[str]
    #: free bytes on the file system after the sweep, and whether the floor is met
    free_bytes: int
    free_ok: bool


class Retention:
    """Keeps the recording folder within a maximum age, a maximum total size and a
    free-space floor, deleting whole events (all their files), the oldest first. Events in
    ``keep`` (being written) are never deleted; temporary files untouched for an hour
    (a writer that died) are."""

    def __init__(self, folder: Path, *, max_age_s: float | None = None,
                 max_total_bytes: float | None = None, min_free_bytes: float = 0.0,
                 index: IndexRows | None = None) -> None:
        self.folder = folder
        #: the event index: its rows go with their files
        self.index = index
        self.max_age_s = max_age_s
        self.max_total_bytes = max_total_bytes
        self.min_free_bytes = min_free_bytes
        #: why the events of the sweep under way were deleted, and how many for each
        self._reasons: collections.Counter[str] = collections.Counter()

    @classmethod
    def from_config(cls, folder: Path, config: RecordingConfig,
                    index: IndexRows | None = None) -> Retention:
        return cls(folder, max_age_s=config.max_age_days * 86_400.0,
                   max_total_bytes=config.max_total_mb * MB,
                   min_free_bytes=config.min_free_mb * MB, index=index)

    def free_bytes(self) -> int:
        path = self.folder
        while not path.exists() and path != path.parent:
            path = path.parent
        return shutil.disk_usage(path).free

    def sweep(self, keep: Iterable[str] = (), now: float | None = None) -> SweepResult:
        now = time.time() if now is None else now
        keep = set(keep)
        deleted: list[str] = []
        self._reasons = collections.Counter()
        events = []
        for event in list_events(self.folder):
            if event.key in keep:
                continue
            if event.temporary:
                if now - event.newest > STALE_TEMP_S:
                    self._delete(event, deleted, "left behind by an interrupted writer")
                continue
            events.append(event)
        if self.max_age_s is not None:
            while events and now - events[0].mtime > self.max_age_s:
                self._delete(events.pop(0), deleted, "older than max_age_days")
        if self.max_total_bytes is not None:
            total = sum(event.size for event in events)
            while events and total > self.max_total_bytes:
                event = events.pop(0)
                total -= event.size
                self._delete(event, deleted, "over max_total_mb")
        free = self.free_bytes()
        while events and free < self.min_free_bytes:
            self._delete(events.pop(0), deleted, "under min_free_mb free")
            free = self.free_bytes()
        if deleted:  # one line a sweep (each event at debug level)
            log.info("recording retention: deleted %d event(s) in %s (%s)", len(deleted),
                     self.folder, ", ".join(f"{count} {why}"
                                            for why, count in self._reasons.items()))
        if self.index is not None:
            index = self.index
            if deleted:
                index.quietly("delete the rows of deleted events", index.forget, deleted)
            if self.max_age_s is not None:
                index.quietly("delete old rows", index.prune, now - self.max_age_s)
        return SweepResult(deleted, free, free >= self.min_free_bytes)

    def _delete(self, event: RecordedEvent, deleted: list[str], why: str) -> None:
        for path in event.files:
            unlink_in(path)
        deleted.append(event.key)
        self._reasons[why] += 1
        log.debug("recording retention: deleted event %s (%s)", event.key, why)


def unlink_in(path: Path) -> None:
    """Delete the file ``path`` by its name in its folder, opened without following a
    symbolic link: a camera folder swapped for a link since the listing is not entered."""
    try:
        folder = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError as error:
        log.warning("recording retention: cannot delete %s: %s", path, error.strerror)
        return
    try:
        if stat.S_ISREG(os.stat(path.name, dir_fd=folder, follow_symlinks=False).st_mode):
            os.unlink(path.name, dir_fd=folder)
    except FileNotFoundError:
        pass
    except OSError as error:
        log.warning("recording retention: cannot delete %s: %s", path, error.strerror)
    finally:
        os.close(folder)
