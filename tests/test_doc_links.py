"""The documentation's relative links resolve, and README.md stays short (issue 28).

Every markdown file, README.md and docs/**/*.md, is read for inline links ``[text](target)`` and images
``![alt](target)``; each relative target (a #fragment stripped; web, mail and pure-anchor links left
alone) must exist relative to the file that links it. No Ray: this module overrides conftest's autouse
session head, as tests/test_fetch.py does.
"""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import unquote

import pytest

REPO = Path(__file__).resolve().parents[1]
README_MAX_LINES = 300

# [text](target) and ![alt](target): the text may hold one level of brackets (`[a [b] c](x)`); the
# target runs to the first space or ')' (an optional "title" after a space is ignored), or sits in <...>.
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*(?:<([^>]*)>|([^)\s]*))(?:\s+\"[^\"]*\")?\s*\)")
FENCE = re.compile(r"^\s*(```|~~~)")
CODE_SPAN = re.compile(r"(`+)(?:(?!\1).)+?\1")
EXTERNAL = re.compile(r"^(?:[a-zA-Z][a-zA-Z0-9+.-]*:|//)")  # http:, https:, mailto:, ftp:, //host ...


@pytest.fixture(scope="module")
def ray_head():
    """Overrides conftest's autouse session head: nothing here uses Ray."""
    yield None


def markdown_files(root: Path = REPO) -> list[Path]:
    return [root / "README.md", *sorted((root / "docs").rglob("*.md"))]


def relative_links(text: str) -> list[tuple[int, str]]:
    """(line number, target) of every relative link outside code blocks and code spans, fragment stripped."""
    found, in_fence = [], False
    for number, line in enumerate(text.splitlines(), 1):
        if FENCE.match(line):
            in_fence = not in_fence
            continue
        if in_fence:
            continue
        for match in LINK.finditer(CODE_SPAN.sub("", line)):
            target = (match.group(1) if match.group(1) is not None else match.group(2)).strip()
            if not target or target.startswith("#") or EXTERNAL.match(target):
                continue
            path = unquote(target.split("#", 1)[0].split("?", 1)[0])
            if path:
                found.append((number, path))
    return found


def broken_links(files: list[Path], root: Path = REPO) -> list[str]:
    """``file:line: target`` for each relative link whose target does not exist (a leading '/' is the repo root)."""
    broken = []
    for md in files:
        for number, path in relative_links(md.read_text(encoding="utf-8")):
            target = (root / path.lstrip("/")) if path.startswith("/") else (md.parent / path)
            if not target.exists():
                broken.append(f"{md.relative_to(root)}:{number}: {path}")
    return broken


def test_link_parser_finds_what_it_should():
    text = "\n".join(
        [
            '[a](docs/x.md) ![img](../figures/p.png) [with anchor](y.md#part) [t](<z z.md> "title")',
            "[web](https://example.org) [mail](mailto:a@b.c) [anchor](#tests) `[code](not/a/link.md)`",
            "[nested [brackets]](n.md)",
            "```bash",
            "[in a fence](fenced.md)",
            "```",
        ]
    )
    assert [p for _, p in relative_links(text)] == ["docs/x.md", "../figures/p.png", "y.md", "z z.md", "n.md"]


def test_every_relative_link_in_the_docs_resolves():
    files = markdown_files()
    assert (REPO / "README.md").is_file() and len(files) > 1, files
    assert sum(len(relative_links(f.read_text(encoding="utf-8"))) for f in files) > 0
    broken = broken_links(files)
    assert not broken, "links whose target does not exist:\n" + "\n".join(broken)


def test_a_broken_link_is_reported(tmp_path):
    """The check can fail: a link to a missing file is reported with its file and line."""
    (tmp_path / "docs" / "figures").mkdir(parents=True)
    (tmp_path / "docs" / "figures" / "here.png").write_bytes(b"")
    (tmp_path / "README.md").write_text("[docs](docs/page.md) [gone](docs/nothing.md#x)\n")
    (tmp_path / "docs" / "page.md").write_text(
        "[up](../README.md#tests) ![ok](figures/here.png)\n\n![gone too](../figures/here.png)\n"
    )
    assert broken_links(markdown_files(tmp_path), tmp_path) == [
        "README.md:1: docs/nothing.md",
        "docs/page.md:3: ../figures/here.png",
    ]


def test_readme_is_at_most_300_lines():
    lines = (REPO / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= README_MAX_LINES, (
        f"README.md has {len(lines)} lines (at most {README_MAX_LINES}): move detail to docs/"
    )
