"""Event recordings, retention and the recording folder attacked as a hostile or careless
user would: files the daemon did not write, links out of the folder, camera ids that name
folders, a disk that fills, a stop under load, paths that cannot be folders."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from forecaster.client import Subscriber
from forecaster.config import RecordingConfig, load_config, parse_config
from forecaster.errors import ConfigError
from forecaster.protocol import (
    Event,
    ProtocolError,
    camera_safe,
    parse_topic,
    validate_camera,
)
from forecaster.recording.recorder import Recorder
from forecaster.recording.recording_dir import prepare_events_dir
from forecaster.recording.retention import Retention, list_events
from tests.conftest import free_port
from tests.daemon_harness import Daemon, collect_events, config_text, daemon_env, wait_for
from tests.test_recording import decoded_frames

DAY = 86_400.0


def aged(path: Path, data: bytes, age_s: float) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    when = time.time() - age_s
    os.utime(path, (when, when))
    return path


def own_event(folder: Path, camera: str, stem: str, age_s: float, size: int = 1000) -> None:
    """An event's three files, named as the recorder names them."""
    for suffix, part in ((".mp4", size), (".jpg", 100), (".json", 50)):
        aged(folder / camera / f"{stem}{suffix}", b"x" * part, age_s)


def test_retention_deletes_only_the_daemons_own_files_and_follows_no_link(
    tmp_path: Path,
) -> None:
    folder = tmp_path / "events"
    outside = tmp_path / "outside"
    # the user's files in the recording folder, old and large
    thesis = aged(folder / "docs" / "thesis.txt", b"t" * 50_000, 60 * DAY)
    notes = aged(folder / "cam0" / "notes.mp4", b"n" * 50_000, 60 * DAY)
    loose = aged(folder / "20260101-000000-1.mp4", b"l" * 50_000, 60 * DAY)
    # a folder outside, linked in as if it were a camera, holding files named as events
    target = aged(outside / "20260101-000000-2.mp4", b"o" * 50_000, 60 * DAY)
    (folder / "linked").symlink_to(outside, target_is_directory=True)
    # a link named as an event's clip, to a file outside
    kept = aged(outside / "keep.bin", b"k" * 50_000, 60 * DAY)
    (folder / "cam0").mkdir(parents=True, exist_ok=True)
    os.symlink(kept, folder / "cam0" / "20260101-000000-3.mp4")
    # the daemon's own events: one old, one of today
    own_event(folder, "cam0", "20260101-000000-4", 60 * DAY)
    own_event(folder, "cam1", "20261206-000000-5", 60.0)

    assert [event.key for event in list_events(folder)] == ["cam0/20260101-000000-4",
                                                            "cam1/20261206-000000-5"]
    swept = Retention(folder, max_age_s=30 * DAY).sweep()
    assert swept.deleted == ["cam0/20260101-000000-4"]
    # a total size the user's files alone exceed: today's event stays
    swept = Retention(folder, max_total_bytes=2_000).sweep()
    assert swept.deleted == []
    swept = Retention(folder, min_free_bytes=shutil.disk_usage(tmp_path).free + 2**40).sweep()
    assert swept.deleted == ["cam1/20261206-000000-5"]
    for path in (thesis, notes, loose, target, kept):
        assert path.read_bytes()[:1] in (b"t", b"n", b"l", b"o", b"k"), path
    assert (folder / "cam0" / "20260101-000000-3.mp4").is_symlink()


@pytest.mark.parametrize("camera", [".", ".."])
def test_dot_camera_ids_are_refused_in_config_and_on_the_wire(camera: str) -> None:
    with pytest.raises(ConfigError, match=r"cameras\.0\.id") as error:
        parse_config({"cameras": [{"id": camera, "source": "synthetic:"}]})
    assert repr(camera) in str(error.value)
    with pytest.raises(ProtocolError, match="invalid camera id"):
        validate_camera(camera)
    with pytest.raises(ProtocolError, match="invalid camera id"):
        parse_topic(f"score/{camera}".encode())
    assert camera_safe(camera) == ""
    # a dot inside an id is still fine
    assert validate_camera("cam.1") == "cam.1" and validate_camera("...") == "..."


# -------------------------------------------------------------------------- stop under load

#: two cameras of large frames recorded at full size, an event every few frames: the clip
#: writer is behind when the daemon stops
LOADED = "synthetic:?seed={seed}&anomaly_rate=0.5&width=1280&height=720"


def loaded_config(endpoint: str, folder: Path) -> str:
    return config_text(endpoint, [("cam0", LOADED.format(seed=1)),
                                  ("cam1", LOADED.format(seed=2))],
                       {"recording": {"dir": str(folder), "max_width": 1280, "pre_s": 10.0,
                                      "min_free_mb": 0}})


def check_no_clip_lost(folder: Path, opened: list[Event], events: list[Event],
                       log: str) -> None:
    """Every event of ``opened`` (whose clip was being written at the stop, or before) has
    its three files, the clip whole (or its sidecar says that all its frames were cut at
    the stop); one whose end was not published says so (interrupted); nothing temporary
    is left."""
    assert "terminate called" not in log and "Traceback" not in log, log[-3000:]
    assert not [p.name for p in folder.glob("*/.*")], (sorted(folder.rglob("*")), log[-3000:])
    ended = {event.clip for event in events if event.state == "end"}
    started = [event for event in opened if event.state == "start"]
    assert started, log[-3000:]
    for event in started:
        assert event.clip is not None
        sidecar_path = (folder / event.clip).with_suffix(".json")
        assert sidecar_path.exists(), (event, sorted(folder.rglob("*")), log[-3000:])
        sidecar = json.loads(sidecar_path.read_text())
        if sidecar["clip"] is None:  # every frame was still queued at the stop
            assert sidecar["frames"] == 0 < sidecar["frames_cut"] and sidecar["interrupted"]
            assert not (folder / event.clip).exists()
        else:
            assert decoded_frames(folder / sidecar["clip"]) == sidecar["frames"] > 0, sidecar
        if event.clip not in ended:
            assert sidecar["interrupted"], sidecar


@pytest.mark.timeout(240)
def test_sigterm_under_load_finishes_every_open_clip(tmp_path: Path) -> None:
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    folder = tmp_path / "events"
    events: list[Event] = []
    with Subscriber(endpoint, kinds=["event"]) as sub, \
            Daemon(tmp_path, loaded_config(endpoint, folder)) as daemon:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            msg = sub.recv(timeout=0.5)
            if isinstance(msg, Event):
                events.append(msg)
            # an event with a full pre-roll (10 s, ~200 frames): the writer gets them at once
            if isinstance(msg, Event) and msg.state == "start" and msg.seq >= 250:
                break
            assert daemon.proc.poll() is None, daemon.log()[-3000:]
        assert msg is not None and msg.clip is not None, daemon.log()[-3000:]
        final = folder / msg.clip
        temp = final.with_name(f".{final.stem}.tmp.mp4")
        wait_for(lambda: temp.exists() or final.with_suffix(".json").exists(), 30,
                 f"clip {temp} being written")
        # the capture process opens the events in order: every one so far has been opened
        opened = list(events)
        code = daemon.stop(timeout=30)
        while (msg := sub.recv(timeout=0.2)) is not None:
            if isinstance(msg, Event):
                events.append(msg)
    assert code == 0, daemon.log()[-3000:]
    check_no_clip_lost(folder, opened, events, daemon.log())


@pytest.mark.timeout(240)
def test_max_frames_under_load_finishes_the_last_clip(tmp_path: Path) -> None:
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    folder = tmp_path / "events"
    with Subscriber(endpoint, kinds=["event"]) as sub, \
            Daemon(tmp_path, loaded_config(endpoint, folder), args=["--max-frames", "400"]) \
            as daemon:
        events = collect_events(sub, daemon, 200)
    assert daemon.proc.returncode == 0, daemon.log()[-3000:]
    check_no_clip_lost(folder, events, events, daemon.log())


# ------------------------------------------------------------------------ a disk that fills

#: a process whose files cannot grow past 1 MB (as on a disk that is full at 1 MB): it
#: records a large event (noise, 60 frames), then a small one (flat gray, 3 frames)
FULL_DISK_SCRIPT = """
import resource, signal, sys
from pathlib import Path
import numpy as np
from forecaster.config import RecordingConfig
from forecaster.recording.recorder import Recorder
from forecaster.recording.recording_dir import prepare_events_dir
from forecaster.recording.retention import Retention

signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG
resource.setrlimit(resource.RLIMIT_FSIZE, (1_000_000, 1_000_000))
folder = Path(sys.argv[1])
settings = RecordingConfig(pre_s=0.0, post_s=0.0, min_free_mb=0)
recorder = Recorder("cam0", folder, settings, model="m", retention=Retention(folder))
rng = np.random.default_rng(0)
for seq in range(100):
    if seq < 70:
        image = rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)
    else:
        image = np.full((480, 640, 3), 128, np.uint8)
    recorder.on_frame(image, seq, 1_800_000_000.0 + seq * 0.04)
    if seq in (5, 80):
        recorder.start(seq, 1_800_000_000.0 + seq * 0.04, 5.0)
    if seq in (65, 82):
        recorder.end(seq, 1_800_000_000.0 + seq * 0.04, 5.0)
recorder.close()
print("frames taken: 100")
"""


@pytest.mark.timeout(120)
def test_a_disk_that_fills_mid_clip_leaves_no_corrupt_clip_and_recording_goes_on(
    tmp_path: Path,
) -> None:
    folder = tmp_path / "events"
    result = subprocess.run([sys.executable, "-c", FULL_DISK_SCRIPT, str(folder)],
                            capture_output=True, text=True, timeout=100,
                            env=daemon_env({"PYTHONPATH": os.pathsep.join(sys.path)}))
    log = result.stderr
    assert result.returncode == 0 and "frames taken: 100" in result.stdout, log
    assert "Traceback" not in log, log
    big = folder / "cam0" / "20270115-080000-5"
    small = folder / "cam0" / "20270115-080003-80"
    # the large event: one line, and none of its files, not even temporary ones
    assert log.count("event cam0/20270115-080000-5 not recorded") == 1, log
    assert not list(folder.glob("cam0/*20270115-080000-5*")), sorted(folder.rglob("*"))
    assert not list(folder.glob("*/.*")), sorted(folder.rglob("*"))
    # the small one after it: recorded whole
    sidecar = json.loads(small.with_suffix(".json").read_text())
    assert decoded_frames(small.with_suffix(".mp4")) == sidecar["frames"] == 3
    assert small.with_suffix(".jpg").exists() and not big.with_suffix(".json").exists()


#: the clip fits (flat gray frames) but its snapshot does not (a noise frame, quality 100)
SNAPSHOT_TOO_BIG_SCRIPT = """
import resource, signal, sys
from pathlib import Path
import numpy as np
from forecaster.config import RecordingConfig
from forecaster.recording.recorder import Recorder
from forecaster.recording.retention import Retention

signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (400_000, 400_000))
folder = Path(sys.argv[1])
settings = RecordingConfig(pre_s=0.0, post_s=0.0, min_free_mb=0, jpeg_quality=100)
recorder = Recorder("cam0", folder, settings, model="m", retention=Retention(folder))
rng = np.random.default_rng(0)
for seq in range(20):
    image = np.full((480, 640, 3), 128, np.uint8)
    if seq == 8:
        image = rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)
    recorder.on_frame(image, seq, 1_800_000_000.0 + seq * 0.04)
    if seq == 5:
        recorder.start(5, 1_800_000_000.0 + 5 * 0.04, 5.0)
    if seq == 8:
        recorder.peak(8, 9.0)
    if seq == 10:
        recorder.end(10, 1_800_000_000.0 + 10 * 0.04, 9.0)
recorder.close()
"""


def test_a_snapshot_that_cannot_be_written_leaves_none_of_the_events_files(
    tmp_path: Path,
) -> None:
    folder = tmp_path / "events"
    result = subprocess.run([sys.executable, "-c", SNAPSHOT_TOO_BIG_SCRIPT, str(folder)],
                            capture_output=True, text=True, timeout=100,
                            env=daemon_env({"PYTHONPATH": os.pathsep.join(sys.path)}))
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if "20270115-080000-5" in line]
    assert len(lines) == 1 and "not recorded" in lines[0] and "too large" in lines[0], lines
    assert not [p for p in folder.rglob("*") if p.is_file()], sorted(folder.rglob("*"))


def test_a_sidecar_that_cannot_be_placed_takes_back_the_clip_and_snapshot(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The clip and the snapshot get their final names before the sidecar; when the
    sidecar's rename fails (here: a folder holds its name), both are taken back, so no clip
    stays without its sidecar."""
    from forecaster.config import RecordingConfig
    from forecaster.recording.recorder import Recorder
    from forecaster.recording.retention import Retention

    folder = tmp_path / "events"
    blocker = folder / "cam0" / "20270115-080000-5.json"
    (blocker / "inside").mkdir(parents=True)
    recorder = Recorder("cam0", folder, RecordingConfig(pre_s=0.0, post_s=0.0, min_free_mb=0),
                        model="m", retention=Retention(folder))
    with caplog.at_level(logging.WARNING):
        for seq in range(20):
            recorder.on_frame(np.full((48, 64, 3), 100 + seq, np.uint8), seq,
                              1_800_000_000.0 + seq * 0.04)
            if seq == 5:
                recorder.start(5, 1_800_000_000.0 + 5 * 0.04, 5.0)
            if seq == 10:
                recorder.end(10, 1_800_000_000.0 + 10 * 0.04, 9.0)
        recorder.close()
    left = sorted(p.relative_to(folder) for p in folder.rglob("*") if p.is_file())
    assert left == [], left  # neither the clip nor the snapshot, nor a temporary file
    assert (blocker / "inside").is_dir()  # and what held the name is left alone
    assert any("20270115-080000-5" in r.getMessage() for r in caplog.records)


@pytest.fixture
def small_tmpfs(tmp_path: Path):  # type: ignore[no-untyped-def]
    """A 3 MB tmpfs (root only; skipped where mounting is not permitted)."""
    mount = tmp_path / "small"
    mount.mkdir()
    if not shutil.which("mount") or os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mount)],
                          capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], capture_output=True, timeout=30)


def test_a_full_tmpfs_gets_its_space_back_and_the_next_event_is_recorded(
    small_tmpfs: Path, caplog: pytest.LogCaptureFixture
) -> None:
    folder = small_tmpfs / "events"
    settings = RecordingConfig(pre_s=0.0, post_s=0.0, min_free_mb=0)
    recorder = Recorder("cam0", folder, settings, model="m", retention=Retention(folder))
    rng = np.random.default_rng(0)
    for seq in range(100):
        image = (rng.integers(0, 256, (480, 640, 3), dtype=np.uint8) if seq < 70
                 else np.full((480, 640, 3), 128, np.uint8))
        ts = 1_800_000_000.0 + seq * 0.04
        recorder.on_frame(image, seq, ts)
        if seq in (5, 80):
            recorder.start(seq, ts, 5.0)
        if seq in (65, 82):
            recorder.end(seq, ts, 5.0)
    recorder.close()
    lines = [r.getMessage() for r in caplog.records if "20270115-080000-5" in r.getMessage()]
    assert len(lines) == 1 and ("abandoned" in lines[0] or "not recorded" in lines[0]), lines
    assert not list(folder.glob("cam0/*20270115-080000-5*")), sorted(folder.rglob("*"))
    assert not list(folder.glob("*/.*")), sorted(folder.rglob("*"))
    small = folder / "cam0" / "20270115-080003-80"
    assert decoded_frames(small.with_suffix(".mp4")) == 3
    assert json.loads(small.with_suffix(".json").read_text())["frames"] == 3
    assert shutil.disk_usage(small_tmpfs).free > 2 * 1024 * 1024  # not left full


# ------------------------------------------------------------------- paths that cannot be

def forecaster_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "forecaster", *args], capture_output=True,
                          text=True, timeout=60, cwd=cwd,
                          env=daemon_env({"PYTHONPATH": os.pathsep.join(sys.path)}))


def toml_string(text: str) -> str:
    return json.dumps(text)  # a JSON string is a TOML basic string (\\u0000 included)


@pytest.mark.parametrize(("setting", "expected"), [
    ('[recording]\ndir = {nul}', "recording.dir: a path cannot hold a NUL character"),
    ('[recording]\ndir = "~nouser_x/events"', "recording.dir: ~nouser_x: no such user"),
    ('[[cameras]]\nid = "c"\nsource = "~nouser_x/a.mp4"', "source '~nouser_x/a.mp4': "
                                                        "~nouser_x: no such user"),
    ('[[cameras]]\nid = "c"\nsource = {nul}', "a path cannot hold a NUL character"),
    ('[recording]\ndir = {file}', "is a file, not a folder"),
    ('[recording]\ndir = {under_file}', "{file_path} is a file, not a folder"),
    ('[recording]\ndir = "/proc/forecaster-events"', "cannot create the recording folder "
                                                     "/proc/forecaster-events"),
    ('[recording]\ndir = {dangling}', "is a symbolic link to {nowhere}, which does not exist"),
])
def test_bad_paths_get_one_line_and_exit_2_from_check_config_and_run(
    tmp_path: Path, setting: str, expected: str
) -> None:
    afile = tmp_path / "afile"
    afile.write_text("not a folder")
    nowhere = tmp_path / "nowhere"
    (tmp_path / "dangling").symlink_to(nowhere)
    values = {"nul": toml_string(f"{tmp_path}/a\0b"), "file": toml_string(str(afile)),
              "under_file": toml_string(f"{afile}/events"),
              "dangling": toml_string(str(tmp_path / "dangling"))}
    config = tmp_path / "config.toml"
    config.write_text(setting.format(**values) + "\n")
    expected = expected.format(file_path=afile, nowhere=nowhere)
    for command in (["check-config", str(config)], ["run", "--config", str(config)]):
        result = forecaster_cli(*command, cwd=tmp_path)
        assert result.returncode == 2, (command, result.stderr)
        assert "Traceback" not in result.stderr, result.stderr
        lines = [line for line in result.stderr.splitlines() if "error:" in line]
        assert len(lines) == 1 and expected in lines[0], (command, result.stderr)
    assert nowhere.exists() is False and afile.read_text() == "not a folder"


def test_check_config_leaves_no_folder_behind_and_run_creates_it(tmp_path: Path) -> None:
    folder = tmp_path / "new" / "events"
    config = tmp_path / "config.toml"
    config.write_text(f"[recording]\ndir = {toml_string(str(folder))}\n")
    result = forecaster_cli("check-config", str(config), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert not (tmp_path / "new").exists()
    prepare_events_dir(load_config(config))
    assert folder.is_dir()


@pytest.mark.timeout(240)
def test_the_next_start_removes_the_web_runtime_folder_of_a_killed_supervisor(
    tmp_path: Path,
) -> None:
    import tempfile

    # short, as real runtime folders are (/run/user/UID): a path too long for the feed's
    # socket is passed over for the temporary folder (the test below)
    runtime = Path(tempfile.mkdtemp(prefix="fc-run-", dir="/tmp"))
    try:
        _killed_supervisor_runtime_folder(tmp_path, runtime)
    finally:
        shutil.rmtree(runtime, ignore_errors=True)


def _killed_supervisor_runtime_folder(tmp_path: Path, runtime: Path) -> None:
    env = {"XDG_RUNTIME_DIR": str(runtime)}

    def config() -> str:
        return config_text(f"tcp://127.0.0.1:{free_port()}", [("cam0", "synthetic:")],
                           {"web": {"enabled": True, "port": free_port()},
                            "recording": {"enabled": False}})

    first_dir = tmp_path / "first"
    first_dir.mkdir()
    with Daemon(first_dir, config(), env=env) as first:
        first.wait_log(r"web ready", 120)
        left = list(runtime.glob("forecaster-web-*"))
        assert len(left) == 1, left
        first.proc.kill()
        first.proc.wait(timeout=30)
    assert left[0].is_dir()  # SIGKILL: nobody removed it
    second_dir = tmp_path / "second"
    second_dir.mkdir()
    with Daemon(second_dir, config(), env=env) as second:
        second.wait_log(r"web ready", 120)
        now = list(runtime.glob("forecaster-web-*"))
        assert not left[0].exists() and len(now) == 1, (left, now, second.log()[-2000:])
        assert second.stop() == 0
    assert not list(runtime.glob("forecaster-web-*"))


def test_the_live_page_offers_no_clip_for_an_event_cut_before_any_frame(tmp_path: Path) -> None:
    from forecaster.web.live import EventLog

    stem = tmp_path / "cam0" / "20261206-000000-5"
    stem.parent.mkdir()
    stem.with_suffix(".jpg").write_bytes(b"jpeg")
    stem.with_suffix(".json").write_text('{"clip": null, "frames": 0, "frames_cut": 9}')
    log = EventLog(tmp_path)
    log.add("cam0", {"state": "start", "seq": 5, "ts": 1.0, "peak_score": 4.0,
                     "clip": "cam0/20261206-000000-5.mp4",
                     "snapshot": "cam0/20261206-000000-5.jpg"})
    [item] = log.listing()
    assert item["snapshot_ready"] and not item["clip_ready"]


def test_a_runtime_folder_too_long_for_a_socket_path_gives_way_to_the_temporary_folder(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch,
) -> None:
    import tempfile

    import zmq

    from forecaster.ipc.feed import SOCKET_NAME, SOCKET_PATH_MAX, make_runtime_dir

    # parents whose socket path is exactly the most a Unix socket holds, and one byte more
    base = Path(tempfile.mkdtemp(dir="/tmp"))
    fixed = len(f"/forecaster-web-{os.getpid()}-12345678/{SOCKET_NAME}")
    fits = base / ("f" * (SOCKET_PATH_MAX - fixed - len(str(base)) - 1))
    over = base / ("o" * (SOCKET_PATH_MAX - fixed - len(str(base))))
    for folder in (fits, over):
        folder.mkdir()
    made = []
    try:
        with caplog.at_level(logging.WARNING, logger="forecaster.feed"):
            made.append(make_runtime_dir(str(fits)))
            assert Path(made[-1]).parent == fits  # used as given
            assert len(f"{made[-1]}/{SOCKET_NAME}") == SOCKET_PATH_MAX
            assert not caplog.records
            made.append(make_runtime_dir(str(over)))
            assert Path(made[-1]).parent == Path(tempfile.gettempdir())
            # a temporary folder too long as well gives way to /tmp
            long_tmp = tmp_path / ("t" * 120)
            long_tmp.mkdir()
            monkeypatch.setattr(tempfile, "tempdir", str(long_tmp))
            made.append(make_runtime_dir(str(over)))
            assert Path(made[-1]).parent == Path("/tmp")
        warnings = [r.getMessage() for r in caplog.records]
        assert warnings[0] == (f"the folder {over} is too long a path for the live feed's "
                               f"socket ({SOCKET_PATH_MAX} bytes at most); using "
                               f"{made[1].rsplit('/', 1)[0]} instead"), warnings
        assert len(warnings) == 2 and warnings[1].endswith("using /tmp instead"), warnings
        # the feed's socket binds where the folder was made and carries a message
        context = zmq.Context()
        try:
            for folder in made:
                pub, sub = context.socket(zmq.PUB), context.socket(zmq.SUB)
                endpoint = f"ipc://{folder}/{SOCKET_NAME}"
                pub.bind(endpoint)
                sub.connect(endpoint)
                sub.setsockopt(zmq.SUBSCRIBE, b"")
                deadline = time.monotonic() + 10
                while not sub.poll(100):
                    assert time.monotonic() < deadline, f"no message over {endpoint}"
                    pub.send(b"tick")
                assert sub.recv() == b"tick"
        finally:
            context.destroy(linger=0)
    finally:
        for folder in made:
            shutil.rmtree(folder, ignore_errors=True)
        shutil.rmtree(base, ignore_errors=True)
