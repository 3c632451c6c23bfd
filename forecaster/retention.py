"""Retention of the event recordings: a maximum age, a maximum total size and a free-space
floor, the oldest events deleted first (all their files together)."""

from __future__ import annotations

import contextlib
import logging
import shutil
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from forecaster.config import RecordingConfig

log = logging.getLogger("forecaster.recording")

MB = 1024 * 1024
#: a temporary file untouched this long belongs to a writer that died: retention removes it
STALE_TEMP_S = 3600.0


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


def _stem_of(name: str) -> tuple[str, bool]:
    temporary = name.startswith(".")
    return name.lstrip(".").split(".", 1)[0], temporary


def list_events(folder: Path) -> list[RecordedEvent]:
    """The events under ``folder`` (``<camera>/<stem>.*``), oldest first."""
    groups: dict[str, RecordedEvent] = {}
    try:
        cameras = [path for path in folder.iterdir() if path.is_dir()]
    except OSError:
        return []
    for camera in cameras:
        try:
            files = list(camera.iterdir())
        except OSError:
            continue
        for path in files:
            try:
                stat = path.stat()
            except OSError:
                continue
            if not path.is_file():
                continue
            stem, temporary = _stem_of(path.name)
            key = f"{camera.name}/{stem}"
            group = groups.get(key)
            if group is None:
                group = groups[key] = RecordedEvent(key, [], stat.st_mtime, stat.st_mtime, 0,
                                                    False)
            group.files.append(path)
            group.mtime = min(group.mtime, stat.st_mtime)
            group.newest = max(group.newest, stat.st_mtime)
            group.size += stat.st_size
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
                 max_total_bytes: float | None = None, min_free_bytes: float = 0.0) -> None:
        self.folder = folder
        self.max_age_s = max_age_s
        self.max_total_bytes = max_total_bytes
        self.min_free_bytes = min_free_bytes

    @classmethod
    def from_config(cls, folder: Path, config: RecordingConfig) -> Retention:
        return cls(folder, max_age_s=config.max_age_days * 86_400.0,
                   max_total_bytes=config.max_total_mb * MB,
                   min_free_bytes=config.min_free_mb * MB)

    def free_bytes(self) -> int:
        path = self.folder
        while not path.exists() and path != path.parent:
            path = path.parent
        return shutil.disk_usage(path).free

    def sweep(self, keep: Iterable[str] = (), now: float | None = None) -> SweepResult:
        now = time.time() if now is None else now
        keep = set(keep)
        deleted: list[str] = []
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
        return SweepResult(deleted, free, free >= self.min_free_bytes)

    def _delete(self, event: RecordedEvent, deleted: list[str], why: str) -> None:
        for path in event.files:
            with contextlib.suppress(FileNotFoundError):
                try:
                    path.unlink()
                except OSError as error:
                    log.warning("recording retention: cannot delete %s: %s", path, error)
        deleted.append(event.key)
        log.info("recording retention: deleted event %s (%s)", event.key, why)
