"""The event index: rows written by the recorder, retention deleting rows and files
together, reconciling after a crash (a daemon killed mid-clip), on real files and SQLite."""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import time
from pathlib import Path

import numpy as np
import pytest

from forecaster.config import RecordingConfig
from forecaster.recording.event_index import (
    EventIndex,
    index_path,
    reconcile,
)
from forecaster.recording.recorder import Recorder
from forecaster.recording.retention import Retention, event_file
from tests.conftest import free_port
from tests.daemon_harness import Daemon, config_text, wait_for

SCENE = "synthetic:?seed=1&anomaly_rate=0.2"


def frames(count: int) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.integers(0, 255, (90, 120, 3), dtype=np.uint8) for _ in range(count)]


def record(folder: Path, index: EventIndex, start: int, end: int | None, *,
           base: float = 1_000_000.0, frames_n: int = 40) -> Recorder:
    """A recorder fed ``frames_n`` frames with an event from ``start`` to ``end``."""
    recorder = Recorder("cam", folder, RecordingConfig(pre_s=0.2, post_s=0.1, max_width=64),
                        model="m", index=index)
    for seq, image in enumerate(frames(frames_n)):
        recorder.on_frame(image, seq, base + seq * 0.04)
        if seq == start:
            recorder.start(start, base + start * 0.04, 4.0)
        if end is not None and seq == end:
            recorder.end(end, base + end * 0.04, 6.0)
    return recorder


def check_agree(folder: Path) -> list[dict]:
    """The index and the folder agree: every row's files exist (and its sidecar with
    them), every event's files have a row and a sidecar, no temporary file, nothing open."""
    rows = EventIndex(folder).all_rows()
    stems = {row["stem"] for row in rows}
    for row in rows:
        assert row["clip_state"] in ("ready", "interrupted", "none"), row
        for key in ("clip", "snapshot"):
            if row[key] is not None:
                assert (folder / row[key]).is_file(), row
        has_files = row["clip"] is not None or row["snapshot"] is not None
        assert (folder / f"{row['stem']}.json").is_file() == has_files, row
    for path in folder.glob("*/*"):
        named = event_file(path.name)
        assert named is not None and not named[1], f"left behind: {path}"
        stem = f"{path.parent.name}/{named[0]}"
        assert stem in stems, f"no row for {path}"
        assert (folder / f"{stem}.json").is_file(), f"no sidecar beside {path}"
    return rows


def test_recorder_writes_a_row_from_start_to_finished_files(tmp_path: Path) -> None:
    index = EventIndex(tmp_path)
    recorder = record(tmp_path, index, 10, None, frames_n=20)
    wait_for(lambda: index.all_rows(), 5, "the row of the open event")
    (row,) = index.all_rows()
    assert row["clip_state"] == "recording" and row["clip"] is None
    assert (row["camera"], row["start_seq"]) == ("cam", 10)
    for seq, image in enumerate(frames(20), start=20):
        recorder.on_frame(image, seq, 1_000_000.0 + seq * 0.04)
    recorder.end(25, 1_000_000.0 + 25 * 0.04, 7.5)
    recorder.close()
    (row,) = index.all_rows()
    sidecar = json.loads((tmp_path / f"{row['stem']}.json").read_text())
    assert row["clip_state"] == "ready"
    assert (row["clip"], row["snapshot"]) == (sidecar["clip"], sidecar["snapshot"])
    assert (row["end_seq"], row["peak"], row["peak_seq"]) == (25, 7.5, sidecar["peak_seq"])
    assert row["peak_ts"] == pytest.approx(1_000_000.0 + sidecar["peak_seq"] * 0.04)
    assert row["clip_start_ts"] == sidecar["first_ts"] and row["clip_end_ts"] == sidecar["last_ts"]
    assert sqlite3.connect(index_path(tmp_path)).execute(
        "PRAGMA journal_mode").fetchone()[0] == "wal"
    check_agree(tmp_path)


def test_an_event_not_recorded_keeps_a_row_without_files(tmp_path: Path) -> None:
    free = Retention(tmp_path).free_bytes()
    index = EventIndex(tmp_path)
    recorder = Recorder("cam", tmp_path, RecordingConfig(pre_s=0.1, post_s=0.1), model="m",
                        retention=Retention(tmp_path, min_free_bytes=free + 2**40, index=index),
                        index=index)
    for seq, image in enumerate(frames(20)):
        recorder.on_frame(image, seq, 1_000_000.0 + seq * 0.04)
        if seq == 5:
            recorder.start(5, 1_000_000.0 + 5 * 0.04)
        if seq == 10:
            recorder.end(8, 1_000_000.0 + 8 * 0.04, 3.0)
    recorder.close()
    (row,) = check_agree(tmp_path)
    assert (row["clip_state"], row["clip"], row["end_seq"]) == ("none", None, 8)


def test_retention_deletes_rows_with_their_files(tmp_path: Path) -> None:
    index = EventIndex(tmp_path)
    for n, base in enumerate((1_000_000.0, 1_000_100.0)):
        record(tmp_path, index, 10, 20, base=base).close()
        assert len(index.all_rows()) == n + 1
    old, new = index.all_rows()
    for path in tmp_path.glob(f"{old['stem']}.*"):
        os.utime(path, (time.time() - 10 * 86_400,) * 2)
    swept = Retention(tmp_path, max_age_s=5 * 86_400, index=index).sweep()
    assert swept.deleted == [old["stem"]]
    assert [row["stem"] for row in check_agree(tmp_path)] == [new["stem"]]
    # rows without files go when older than the maximum age
    index.finished("cam/19700101-000000-1", {"camera": "cam", "start_ts": 1.0}, "none")
    Retention(tmp_path, max_age_s=5 * 86_400, index=index).sweep()
    assert [row["stem"] for row in index.all_rows()] == [new["stem"]]


def test_reconcile_settles_rows_and_files_left_by_a_crash(tmp_path: Path) -> None:
    index = EventIndex(tmp_path)
    record(tmp_path, index, 10, 20).close()
    record(tmp_path, index, 10, 20, base=1_000_100.0).close()
    record(tmp_path, index, 10, 20, base=1_000_200.0).close()
    kept, gone, orphan = index.all_rows()
    # files deleted by hand: the row goes
    for path in tmp_path.glob(f"{gone['stem']}.*"):
        path.unlink()
    # a row lost (the index written before a crash): it comes back from the sidecar
    index.forget([orphan["stem"]])
    # an event open at a crash: a row 'recording', a temporary clip, a clip without sidecar
    index.opened("cam", "cam/19700112-134640-7", 7, 1_000_300.0)
    (tmp_path / "cam" / ".19700112-134640-7.tmp.mp4").write_bytes(b"partial")
    index.opened("cam", "cam/19700112-134700-9", 9, 1_000_320.0)
    (tmp_path / "cam" / "19700112-134700-9.mp4").write_bytes(b"no sidecar")
    # an event open at a crash before it wrote anything
    index.opened("other", "other/19700112-134800-3", 3, 1_000_380.0)
    # a finished event whose sidecar was damaged (a power cut after its rename): its
    # snapshot stays and is indexed from its name; its leftover temporary file goes
    (tmp_path / "cam" / "19700112-135000-1.json").write_text("{not json")
    (tmp_path / "cam" / "19700112-135000-1.jpg").write_bytes(b"x")
    (tmp_path / "cam" / ".19700112-135000-1.jpg.tmp").write_bytes(b"x")
    result = reconcile(tmp_path, index)
    assert (result.added, result.removed_rows, result.interrupted) == (2, 1, 3)
    assert result.removed_files == 3
    rows = {row["stem"]: row for row in check_agree(tmp_path)}
    assert set(rows) == {kept["stem"], orphan["stem"], "cam/19700112-134640-7",
                         "cam/19700112-134700-9", "other/19700112-134800-3",
                         "cam/19700112-135000-1"}
    damaged = rows["cam/19700112-135000-1"]
    assert (tmp_path / "cam" / "19700112-135000-1.jpg").is_file()
    assert (damaged["clip_state"], damaged["clip"], damaged["snapshot"]) == (
        "interrupted", None, "cam/19700112-135000-1.jpg")
    assert damaged["start_ts"] == 1_000_200.0 and damaged["start_seq"] == 1
    assert rows[orphan["stem"]]["clip_state"] == "ready"
    assert rows[orphan["stem"]]["clip"] == orphan["clip"]
    for stem in ("cam/19700112-134640-7", "cam/19700112-134700-9", "other/19700112-134800-3"):
        assert (rows[stem]["clip_state"], rows[stem]["clip"]) == ("interrupted", None)
    assert not reconcile(tmp_path, index).changed  # a second run has nothing to do


def test_ack_and_dismiss_and_paging(tmp_path: Path) -> None:
    index = EventIndex(tmp_path)
    for n in range(7):
        camera = "a" if n % 2 else "b"
        index.finished(f"{camera}/e{n}", {"camera": camera, "start_ts": 1000.0 + n}, "none")
    page = index.page(limit=3)
    assert [e["stem"] for e in page.events] == ["b/e6", "a/e5", "b/e4"]
    page = index.page(limit=3, before=page.next_before)
    assert [e["stem"] for e in page.events] == ["a/e3", "b/e2", "a/e1"]
    page = index.page(limit=3, before=page.next_before)
    assert [e["stem"] for e in page.events] == ["b/e0"] and page.next_before is None
    assert [e["stem"] for e in index.page(camera="a", since=1002.0, until=1005.0).events] == [
        "a/e3"]
    first = index.page().events[0]
    assert index.ack(by="ann", event_id=first["id"], now=5.0) == 1
    assert index.ack(by="bob", event_id=first["id"], now=6.0) == 0  # the first ack stays
    assert (index.get(first["id"]) or {})["acked_by"] == "ann"
    assert index.summary() == {"a": (3, 1005.0), "b": (3, 1006.0)}
    assert index.ack(by="bob", camera="a", dismiss=True, now=7.0) == 3
    assert [e["camera"] for e in index.page().events] == ["b"] * 4
    assert len(index.page(include_dismissed=True).events) == 7
    assert index.summary()["a"] == (0, 1005.0)


def descendants(pid: int) -> list[int]:
    """``pid`` and every process below it (Linux /proc)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo += children.get(current, [])
    return found


@pytest.mark.timeout(240)
def test_a_daemon_killed_mid_clip_leaves_index_and_folder_agreeing_at_the_next_start(
        tmp_path: Path) -> None:
    folder = tmp_path / "events"
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    # a long post-roll: every clip stays open for a while after its event
    config = config_text(endpoint, [("cam0", f"{SCENE}&fps=25")],
                         {"recording": {"dir": str(folder), "pre_s": 0.5, "post_s": 30.0}})
    with Daemon(tmp_path, config) as daemon:
        def open_clip() -> bool:
            if not index_path(folder).is_file() or not list(folder.glob("cam0/.*.tmp.mp4")):
                return False
            rows = EventIndex(folder).all_rows()
            return any(row["clip_state"] == "recording" for row in rows)

        wait_for(open_clip, 150, "a clip being written")
        time.sleep(0.5)
        # the whole daemon at once, as a power cut would: stopped first, then killed
        pids = descendants(daemon.pid)
        for pid in pids:
            os.kill(pid, signal.SIGSTOP)
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
        daemon.proc.wait(10)
    open_rows = [row for row in EventIndex(folder).all_rows() if row["clip_state"] == "recording"]
    assert open_rows and list(folder.glob("cam0/.*.tmp.mp4"))
    # the next start reconciles before any capture starts; this run stops at its end
    config = config_text(endpoint, [("cam0", f"{SCENE}&fps=25&frames=10")],
                         {"recording": {"dir": str(folder)}})
    with Daemon(tmp_path, config) as daemon:
        assert daemon.proc.wait(120) == 0, daemon.log()
    assert re.search(r"event index: reconciled with .*: \d+ row\(s\) added from sidecars, "
                     r"\d+ updated, \d+ removed \(files gone\), [1-9]\d* event\(s\) never "
                     r"finished kept without files \([1-9]\d* of their files removed\)",
                     daemon.log()), daemon.log()
    rows = {row["stem"]: row for row in check_agree(folder)}
    for row in open_rows:
        assert rows[row["stem"]]["clip_state"] == "interrupted"
        assert rows[row["stem"]]["clip"] is None
    assert not reconcile(folder, EventIndex(folder)).changed  # nothing left to settle


def test_a_damaged_index_is_set_aside_and_made_again_from_the_sidecars(tmp_path: Path) -> None:
    from forecaster.recording.event_index import reconcile_at_start

    index = EventIndex(tmp_path)
    record(tmp_path, index, 10, 20).close()
    (stem,) = [row["stem"] for row in index.all_rows()]
    index.close()
    index_path(tmp_path).write_bytes(b"this is not a database" * 100)
    for suffix in ("-wal", "-shm"):
        Path(f"{index_path(tmp_path)}{suffix}").unlink(missing_ok=True)
    result = reconcile_at_start(tmp_path)
    assert result is not None and result.added == 1
    assert [row["stem"] for row in check_agree(tmp_path)] == [stem]
    aside = list(tmp_path.glob("events.db.damaged-*"))
    assert len(aside) == 1 and aside[0].read_bytes().startswith(b"this is not")


def test_a_failed_commit_does_not_keep_the_write_lock(tmp_path: Path) -> None:
    """A COMMIT that fails (here a deferred constraint; a full disk in the field) leaves
    no transaction open: the other processes' writes go on."""
    index = EventIndex(tmp_path)
    db = index._connect()
    db.execute("PRAGMA foreign_keys = ON")
    db.execute("CREATE TEMP TABLE parent (id INTEGER PRIMARY KEY)")
    db.execute("CREATE TEMP TABLE child (pid INTEGER REFERENCES parent (id) "
               "DEFERRABLE INITIALLY DEFERRED)")
    with pytest.raises(sqlite3.IntegrityError), index._tx() as tx:
        tx.execute("INSERT INTO child VALUES (5)")  # fails at the COMMIT
    other = EventIndex(tmp_path)
    other.opened("cam", "cam/19700112-134640-7", 7, 1_000_300.0)
    index.opened("cam", "cam/19700112-134641-8", 8, 1_000_301.0)
    assert len(other.all_rows()) == 2
