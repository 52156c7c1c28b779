"""The project's Markdown pages link to files and headings that exist: README.md, docs/*.md,
benchmarks/*.md and CHANGELOG.md, each relative link resolved from its page, each ``#anchor``
matched against the target page's headings as GitHub writes their anchors."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = sorted(
    [ROOT / "README.md", ROOT / "CHANGELOG.md", *ROOT.glob("docs/*.md"), *ROOT.glob("benchmarks/*.md")]
)
_LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
_FENCE = re.compile(r"^```.*?^```", re.S | re.M)


def _anchor(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation but ``-`` and ``_`` dropped, spaces as ``-``."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    text = _FENCE.sub("", page.read_text())
    return {_anchor(m.group(1)) for m in re.finditer(r"^#+\s+(.*)$", text, re.M)}


def _links(page: Path) -> list[str]:
    return _LINK.findall(_FENCE.sub("", page.read_text()))


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(page: Path) -> None:
    broken = []
    for link in _links(page):
        if re.match(r"^[a-z]+:", link):  # https:, mailto:
            continue
        path, _, anchor = link.partition("#")
        target = (page.parent / path).resolve() if path else page
        if not target.exists():
            broken.append(
                f"{link} (no file {target.relative_to(ROOT) if ROOT in target.parents else target})"
            )
        elif anchor and target.suffix == ".md" and anchor not in _anchors(target):
            broken.append(f"{link} (no heading with anchor #{anchor} in {target.name})")
    assert not broken, f"{page.relative_to(ROOT)} has broken links: {broken}"


def test_readme_fits_on_a_screen() -> None:
    """The README is the front page: what it fixes, set-up, short usage, compatibility, benchmarks;
    the manual lives in docs/."""
    lines = (ROOT / "README.md").read_text().count("\n")
    assert lines <= 200, f"README.md has {lines} lines; move detail to docs/ (at most 200)"


def test_every_doc_page_is_linked_from_the_readme_or_another_page() -> None:
    linked = set()
    for page in PAGES:
        for link in _links(page):
            path = link.partition("#")[0]
            if path and not re.match(r"^[a-z]+:", path):
                linked.add((page.parent / path).resolve())
    orphans = [p.relative_to(ROOT) for p in ROOT.glob("docs/*.md") if p.resolve() not in linked]
    assert not orphans, f"doc pages no page links to: {orphans}"
