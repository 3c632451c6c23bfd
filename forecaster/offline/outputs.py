"""Output folders of ``replay``, ``eval`` and ``train``.

Default outputs go under the user's cache folder, never into the current directory:
``$XDG_CACHE_HOME/forecaster`` (``~/.cache/forecaster`` when XDG_CACHE_HOME is unset):

- ``replay/<date>-<time>/`` and ``eval/<model file stem>-<date>-<time>/``: a new folder per run;
- ``train/<absolute path of the model file without .keras>.checkpoints`` and ``.logs``.

A folder given with ``--out`` that holds an earlier run's results is refused, unless
``force``: then those result files are removed first, so old and new never mix.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from datetime import datetime
from pathlib import Path

from forecaster.errors import UsageError


def cache_dir() -> Path:
    """``$XDG_CACHE_HOME/forecaster``, else ``~/.cache/forecaster`` (a relative
    XDG_CACHE_HOME is ignored, as the XDG base directory specification asks)."""
    base = os.environ.get("XDG_CACHE_HOME", "")
    # expanduser, unlike Path.home(), does not raise where no home folder is known
    root = base if os.path.isabs(base) else os.path.expanduser("~/.cache")
    return Path(root) / "forecaster"


def training_dir(model: Path, suffix: str) -> Path:
    """``<cache>/train/<absolute path of model, without .keras><suffix>``: one folder per
    model file, so two models of the same name never share checkpoints."""
    absolute = Path(os.path.abspath(model))  # .. resolved, so the folder stays in the cache
    return cache_dir() / "train" / absolute.parent.relative_to(absolute.anchor) / (
        absolute.stem + suffix)


def fresh_dir(kind: str, name: str = "") -> Path:
    """Create and return a new folder ``<cache>/<kind>/[<name>-]<date>-<time>`` (with a
    ``-2``, ``-3``... suffix when a run in the same second took that name)."""
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    base = cache_dir() / kind / (f"{name}-{stamp}" if name else stamp)
    _make_dir(base.parent)
    candidate, number = base, 1
    while True:
        try:
            candidate.mkdir()
            return candidate
        except FileExistsError:
            number += 1
            candidate = base.with_name(f"{base.name}-{number}")
        except OSError as error:
            raise UsageError(f"cannot create output folder {candidate}: {error.strerror}") from None


def prepare_out_dir(folder: Path, results: Iterable[Path], *, force: bool) -> None:
    """Make ``folder`` ready for a run's results: create it, check that it is a writable
    folder, and refuse it when any of ``results`` (the earlier run's result files in it)
    exists, unless ``force``, which removes them. UsageError naming the folder otherwise."""
    if folder.exists() and not folder.is_dir():
        raise UsageError(f"--out must be a folder, got a file: {folder}")
    _make_dir(folder)
    if not os.access(folder, os.W_OK | os.X_OK):
        raise UsageError(f"output folder is not writable: {folder}")
    earlier = sorted(path for path in results if path.is_file() or path.is_symlink())
    if earlier and not force:
        names = ", ".join(path.name for path in earlier)
        raise UsageError(f"output folder {folder} holds an earlier run's results ({names}): "
                         f"give another --out, or --force to replace them")
    for path in earlier:
        try:
            path.unlink()
        except OSError as error:
            raise UsageError(f"cannot remove earlier result {path}: {error.strerror}") from None


def check_writable_file(path: Path, what: str) -> None:
    """Before a long run: UsageError unless ``path`` can be written when the run ends (a
    file, or nothing yet, in an existing writable folder)."""
    if path.is_dir():
        raise UsageError(f"{what} must be a file, got a folder: {path}")
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise UsageError(f"folder of the {what} does not exist: {folder}")
    if not os.access(folder, os.W_OK | os.X_OK) or (path.exists() and
                                                    not os.access(path, os.W_OK)):
        raise UsageError(f"{what} cannot be written: {path}")


def _make_dir(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UsageError(f"cannot create output folder {folder}: {error.strerror}") from None
