"""Default output folders: the user's cache folder, one folder per run or per model file."""

from __future__ import annotations

from pathlib import Path

import pytest

from forecaster.errors import UsageError
from forecaster.offline.outputs import cache_dir, fresh_dir, prepare_out_dir, training_dir


def test_cache_dir_follows_xdg_cache_home_else_the_home_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "forecaster"
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    for ignored in ("", "relative/cache"):  # the XDG specification: absolute paths only
        monkeypatch.setenv("XDG_CACHE_HOME", ignored)
        assert cache_dir() == tmp_path / "home" / ".cache" / "forecaster"


def test_training_dir_is_one_folder_per_model_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, user_cache: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    inside = tmp_path.relative_to(tmp_path.anchor)
    assert training_dir(Path("m.keras"), ".checkpoints") == (
        user_cache / "forecaster" / "train" / inside / "m.checkpoints")
    assert training_dir(tmp_path / "a" / "m.keras", ".logs") == (
        user_cache / "forecaster" / "train" / inside / "a" / "m.logs")
    assert training_dir(Path("../../../../../../../../m.keras"), ".logs") == (
        user_cache / "forecaster" / "train" / "m.logs")


def test_fresh_dir_never_reuses_a_folder(user_cache: Path) -> None:
    made = [fresh_dir("eval", "m") for _ in range(3)]
    assert len(set(made)) == 3 and all(folder.is_dir() for folder in made)
    assert all(folder.parent == user_cache / "forecaster" / "eval" for folder in made)


def test_prepare_out_dir_refuses_earlier_results_and_force_removes_only_them(
    tmp_path: Path,
) -> None:
    out = tmp_path / "out"
    prepare_out_dir(out, [out / "a.csv"], force=False)  # made when missing
    (out / "a.csv").write_text("earlier")
    (out / "mine.txt").write_text("the user's")
    with pytest.raises(UsageError, match=r"holds an earlier run's results \(a.csv\)"):
        prepare_out_dir(out, [out / "a.csv", out / "b.png"], force=False)
    prepare_out_dir(out, [out / "a.csv", out / "b.png"], force=True)
    assert [p.name for p in out.iterdir()] == ["mine.txt"]
    with pytest.raises(UsageError, match="got a file"):
        prepare_out_dir(out / "mine.txt", [], force=True)
