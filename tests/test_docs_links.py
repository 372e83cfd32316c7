"""Every relative link in README.md and docs/ points to a file (and heading) that exists."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]

INLINE = re.compile(r"\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE = re.compile(r"^\s*\[[^\]]+\]:\s*(\S+)", re.MULTILINE)
FENCE = re.compile(r"^(```|~~~).*?^\1", re.MULTILINE | re.DOTALL)
CODE = re.compile(r"`[^`\n]*`")


def links(text: str) -> list[str]:
    """Link targets of a markdown text, outside code blocks and code spans."""
    prose = CODE.sub("", FENCE.sub("", text))
    return INLINE.findall(prose) + REFERENCE.findall(prose)


def anchors(page: Path) -> set[str]:
    """GitHub's anchors of the headings of a markdown page."""
    found = set()
    for line in FENCE.sub("", page.read_text()).splitlines():
        match = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if match:
            title = re.sub(r"[`*_]|\[([^\]]*)\]\([^)]*\)", r"\1", match.group(1)).lower()
            found.add(re.sub(r"[^\w\- ]", "", title).replace(" ", "-"))
    return found


def broken(page: Path, root: Path = ROOT) -> list[str]:
    """The relative links of ``page`` to a missing file or heading."""
    problems = []
    for target in links(page.read_text()):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.IGNORECASE):  # http:, mailto: …
            continue
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists():
            problems.append(
                f"{target}: no file {file.relative_to(root) if file.is_relative_to(root) else file}"
            )
        elif anchor and file.suffix == ".md" and anchor.lower() not in anchors(file):
            problems.append(f"{target}: no heading #{anchor} in {file.relative_to(root)}")
    return problems


def test_the_link_check_finds_broken_links(tmp_path: Path) -> None:
    (tmp_path / "other.md").write_text("# Some Title, here\n")
    page = tmp_path / "page.md"
    page.write_text(
        "[ok](other.md) [ok](other.md#some-title-here) [web](https://example.com)\n"
        "[gone](missing.md) [bad anchor](other.md#nope) `[code](nowhere.md)`\n"
        "```\n[block](nowhere.md)\n```\n"
    )
    assert [p.split(":")[0] for p in broken(page, tmp_path)] == [
        "missing.md",
        "other.md#nope",
    ]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_point_to_existing_files(page: Path) -> None:
    assert not broken(page), f"{page.relative_to(ROOT)} has broken links: {broken(page)}"
