"""The package type-checks: ``python -m mypy`` with the settings in pyproject.toml."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = [
    pytest.mark.timeout(240),
    pytest.mark.skipif(
        importlib.util.find_spec("mypy") is None,
        reason="mypy is not installed (pip install -e '.[test]')",
    ),
]


def _mypy(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mypy", *args],
        cwd=ROOT, capture_output=True, text=True, timeout=220, check=False,
    )


def test_package_type_checks() -> None:
    result = _mypy()  # packages = ["forecaster"], from [tool.mypy]
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues found" in result.stdout


def test_checker_reports_a_wrong_call(tmp_path: Path) -> None:
    """The same settings do catch an error (the check above is not vacuous)."""
    wrong = tmp_path / "wrong.py"
    wrong.write_text(
        "from forecaster.detection.engine import padded_batch\n"
        "padded_batch('four')\n"
    )
    result = _mypy(str(wrong))
    assert result.returncode == 1, result.stdout + result.stderr
    assert "padded_batch" in result.stdout and "arg-type" in result.stdout
