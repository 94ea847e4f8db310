"""README.md and docs/*.md: every relative link names a file of the tree, and every
#anchor a heading (or an <a id>) of the file it points into, as GitHub makes them."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^)\s]+)\)")


def anchors(path: Path) -> set[str]:
    """GitHub's heading ids: lower case, punctuation dropped, spaces to hyphens."""
    text = path.read_text(encoding="utf-8")
    text = re.sub(r"^```.*?^```", "", text, flags=re.M | re.S)  # no headings in code
    found = set(re.findall(r'<a id="([^"]+)"', text))
    for heading in re.findall(r"^#+ (.+)$", text, re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        found.add(slug)
    return found


def links(path: Path) -> list[str]:
    text = path.read_text(encoding="utf-8")
    text = re.sub(r"^```.*?^```", "", text, flags=re.M | re.S)
    return [m for m in LINK.findall(text) if not re.match(r"[a-z]+:", m)]


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.relative_to(REPO).as_posix())
def test_every_link_and_anchor_resolves(doc: Path) -> None:
    broken = []
    for link in links(doc):
        target, _, anchor = link.partition("#")
        path = (doc.parent / target).resolve() if target else doc
        found = path.exists() and REPO in (path, *path.parents)
        if not found or (anchor and (path.suffix != ".md" or anchor not in anchors(path))):
            broken.append(link)
    assert broken == []


def test_the_probe_finds_links_and_anchors() -> None:
    assert "docs/architecture.md" in links(REPO / "README.md")
    assert {"kernel-parameters", "install-on-arch"} <= anchors(REPO / "README.md")
