"""The README stays short and its links resolve; the docs site builds with no warning."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import unicodedata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
MAX_README_LINES = 400

# mkdocs is a console script next to this Python (the venv's bin/, or Scripts\ on Windows).
MKDOCS = shutil.which("mkdocs", path=str(Path(sys.executable).parent))
needs_mkdocs = pytest.mark.skipif(
    MKDOCS is None,
    reason=f"mkdocs is not installed next to {sys.executable} (pip install -e '.[test]')",
)

LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
CODE_SPAN = re.compile(r"`[^`]*`")


def _prose(text: str) -> list[str]:
    """The lines of a Markdown text outside code fences, code spans removed."""
    lines, fenced = [], False
    for line in text.splitlines():
        if line.startswith("```"):
            fenced = not fenced
            continue
        if not fenced:
            lines.append(CODE_SPAN.sub("", line))
    return lines


def _slug(heading: str) -> str:
    """A heading's anchor, as MkDocs (Python-Markdown's toc) and GitHub make it here."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link in a heading: its text
    text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    text = re.sub(r"[^\w\s-]", "", text).strip().lower()
    return re.sub(r"[-\s]+", "-", text)


def _anchors(path: Path) -> set[str]:
    return {
        _slug(line.lstrip("#"))
        for line in _prose(path.read_text(encoding="utf-8"))
        if re.match(r"#{1,6} ", line)
    }


def _relative_links(path: Path) -> list[str]:
    links = []
    for line in _prose(path.read_text(encoding="utf-8")):
        for target in LINK.findall(line):
            if not re.match(r"[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
                links.append(target)
    return links


def _mkdocs_build(config_dir: Path, site_dir: Path) -> subprocess.CompletedProcess[str]:
    assert MKDOCS is not None
    return subprocess.run(
        [MKDOCS, "build", "--strict", "--site-dir", str(site_dir)],
        cwd=config_dir, capture_output=True, text=True, timeout=120, check=False,
    )


def test_readme_is_short() -> None:
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= MAX_README_LINES, (
        f"README.md has {len(lines)} lines, at most {MAX_README_LINES}: "
        f"move the details to a page in docs/")


def test_readme_relative_links_resolve() -> None:
    links = _relative_links(README)
    assert any(link.startswith("docs/") for link in links)  # the check is not vacuous
    broken = []
    for link in links:
        file, _, anchor = link.partition("#")
        target = ROOT / file if file else README
        if not target.exists():
            broken.append(f"{link}: no file {file}")
        elif anchor and target.suffix == ".md" and anchor not in _anchors(target):
            broken.append(f"{link}: {file or 'README.md'} has no heading #{anchor}")
    assert not broken, "README.md links that do not resolve:\n" + "\n".join(broken)


def test_slugs_match_the_headings_of_the_docs() -> None:
    assert _slug("The model's step against its window") == "the-models-step-against-its-window"
    assert _slug("GPU without TensorFlow (JAX)") == "gpu-without-tensorflow-jax"
    assert "training-on-several-gpus-or-machines" in _anchors(ROOT / "docs" / "training.md")


@pytest.mark.timeout(180)
@needs_mkdocs
def test_docs_build_strictly(tmp_path: Path) -> None:
    result = _mkdocs_build(ROOT, tmp_path / "site")
    assert result.returncode == 0, result.stdout + result.stderr
    assert (tmp_path / "site" / "performance" / "index.html").is_file()


@pytest.mark.timeout(180)
@needs_mkdocs
def test_strict_build_fails_on_a_broken_anchor(tmp_path: Path) -> None:
    """The build above would catch a link to a heading that does not exist."""
    shutil.copy(ROOT / "mkdocs.yml", tmp_path / "mkdocs.yml")
    shutil.copytree(ROOT / "docs", tmp_path / "docs")
    with (tmp_path / "docs" / "index.md").open("a", encoding="utf-8") as page:
        page.write("\n[gone](performance.md#no-such-heading)\n")
    result = _mkdocs_build(tmp_path, tmp_path / "site")
    assert result.returncode != 0
    assert "no-such-heading" in result.stdout + result.stderr
