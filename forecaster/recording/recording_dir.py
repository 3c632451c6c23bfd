"""The recording folder: where it is, and whether the daemon can write there.

One rule for ``run`` and ``check-config`` (:func:`check_events_dir`): ``run`` creates the
folder, ``check-config`` creates it the same way and removes what it created.
"""

from __future__ import annotations

import os
from pathlib import Path

from forecaster.config import Config, RecordingConfig
from forecaster.errors import UsageError

FIX = "set [recording] dir to a writable folder, or [recording] enabled = false"


def events_dir(config: Config | RecordingConfig) -> Path:
    """The recording folder: ``[recording] dir`` when set, else ``$STATE_DIRECTORY/events``
    under systemd (``StateDirectory=``), else ``./events``; absolute."""
    recording = config.recording if isinstance(config, Config) else config
    if recording.dir:
        folder = Path(recording.dir).expanduser()  # checked at load: no NUL, a known ~user
    else:
        state = os.environ.get("STATE_DIRECTORY", "").split(":")[0]
        folder = Path(state) / "events" if state else Path("events")
    return Path(os.path.abspath(folder))


def _not_a_folder(path: Path) -> str:
    """What ``path``, which exists but is not a folder, is."""
    if path.is_symlink():
        target = os.readlink(path)
        if not path.exists():
            return f"a symbolic link to {target}, which does not exist"
        return f"a symbolic link to {target}, which is not a folder"
    return "a file, not a folder"


def _make(folder: Path) -> list[Path]:
    """Create ``folder`` and its missing parents; the folders created, outermost first.
    UsageError naming the folder and why when it cannot be a writable folder."""
    missing: list[Path] = []
    path = folder
    while not os.path.lexists(path):
        missing.append(path)
        if path.parent == path:
            break
        path = path.parent
    if not path.is_dir():  # it exists (the root at least does)
        what = _not_a_folder(path)
        if path == folder:
            raise UsageError(f"the recording folder {folder} is {what}; {FIX}")
        raise UsageError(f"cannot create the recording folder {folder}: {path} is {what}; "
                         f"{FIX}")
    created: list[Path] = []
    for path in reversed(missing):
        try:
            path.mkdir()
        except OSError as error:
            _remove(created)
            raise UsageError(f"cannot create the recording folder {folder}: "
                             f"{error.strerror}; {FIX}") from None
        created.append(path)
    if not os.access(folder, os.W_OK | os.X_OK):
        _remove(created)
        raise UsageError(f"the recording folder {folder} is not writable; {FIX}")
    return created


def _remove(created: list[Path]) -> None:
    for path in reversed(created):
        try:
            path.rmdir()
        except OSError:
            return


def prepare_events_dir(config: Config) -> Path:
    """The recording folder, created; UsageError naming it when it cannot be written."""
    folder = events_dir(config)
    _make(folder)
    return folder


def check_events_dir(config: Config) -> Path:
    """What :func:`prepare_events_dir` would say, with nothing left behind: the folders it
    had to create are removed again."""
    folder = events_dir(config)
    _remove(_make(folder))
    return folder
