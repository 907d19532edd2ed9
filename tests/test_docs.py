"""The project's documentation stands on its own: no pointers into files users do not have, and
every relative link in README.md and docs/*.md leads to a file of the repository."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
LINKED = [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]

_FENCE = re.compile(r"^(```|~~~).*?^\1", re.MULTILINE | re.DOTALL)
_CODE_SPAN = re.compile(r"(`+)(?:(?!\1).)+?\1", re.DOTALL)
_INLINE = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+(?:\"[^\"]*\"|'[^']*'))?\s*\)")
_REFERENCE = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+.*)?$", re.MULTILINE)
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")


def relative_links(markdown: str) -> list[str]:
    """The targets of the inline and reference links of `markdown` that name a file of the
    repository: not in code, not URLs with a scheme, not bare `#anchors`; anchors cut off."""
    text = _CODE_SPAN.sub("", _FENCE.sub("", markdown))
    targets = _INLINE.findall(text) + _REFERENCE.findall(text)
    paths = []
    for target in targets:
        if _SCHEME.match(target) or target.startswith("#"):
            continue
        paths.append(target.split("#", 1)[0])
    return paths


def test_relative_links_finds_file_links_only():
    """The link finder keeps relative file targets and skips URLs, anchors and code."""
    sample = (
        "See [the guide](docs/guide.md#setup), ![a figure](img/a.png 'x') and\n"
        '[choices](<docs/choices.md> "title"), [site](https://example.com/a.md),\n'
        "[mail](mailto:someone@example.com), [here](#layout), `[not](in-code.md)`.\n"
        "```\n[nor](in-a-block.md)\n```\n"
        "[ref]: ../README.md#top\n"
    )
    assert relative_links(sample) == [
        "docs/guide.md",
        "img/a.png",
        "docs/choices.md",
        "../README.md",
    ]


def test_documentation_files_exist():
    """README.md and the page of our choices are where the README's readers expect them."""
    assert (ROOT / "README.md").is_file()
    assert (DOCS / "choices.md").is_file()


DOC_FILES = [ROOT / "README.md", *sorted(p for p in DOCS.rglob("*") if p.is_file())]


@pytest.mark.parametrize("path", DOC_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_pointer_to_shared(path: Path):
    """No documentation file points at ../shared, which users of the project do not have."""
    assert "../shared" not in path.read_text(errors="replace")


@pytest.mark.parametrize("path", LINKED, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_lead_to_files(path: Path):
    """Every relative link of README.md and docs/*.md names a file or folder that exists."""
    missing = [
        target
        for target in relative_links(path.read_text())
        if target and not (path.parent / target).exists()
    ]
    assert missing == []


def test_readme_links_to_choices():
    """The README sends readers to docs/choices.md for the choices Google's docs leave open."""
    assert "docs/choices.md" in relative_links((ROOT / "README.md").read_text())
