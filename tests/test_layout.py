"""The package's layout holds: the import contracts in pyproject.toml, and short modules.

``lint-imports`` checks that each role imports only the roles below it, that sibling
roles do not import each other and that no package has an import circle.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "forecaster"
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")
#: the most lines a module of the package may have
MAX_LINES = 600


@pytest.mark.timeout(120)
@pytest.mark.skipif(not LINT_IMPORTS.exists(),
                    reason="import-linter is not installed (pip install -e '.[test]')")
def test_import_contracts_are_kept() -> None:
    env = dict(os.environ)
    # this tree's package, not an installed copy
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    result = subprocess.run(
        [str(LINT_IMPORTS), "--no-cache"], cwd=ROOT, env=env,
        capture_output=True, text=True, timeout=110, check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def test_no_module_is_too_long() -> None:
    modules = sorted(PACKAGE.rglob("*.py"))
    assert len(modules) > 50
    long = {str(p.relative_to(ROOT)): n for p in modules
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines: {long}"
