"""`make install DESTDIR=... PREFIX=/usr` and `make uninstall`, into a directory."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

TREE = Path(__file__).resolve().parents[2]
# README.md and docs/*.md, at their paths in the tree (their links to each other work).
DOCS = ["README.md", *sorted(p.relative_to(TREE).as_posix() for p in TREE.glob("docs/*.md"))]


def make(*args: str) -> None:
    result = subprocess.run(
        ["make", "-s", "--no-print-directory", *args],
        cwd=TREE,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def files(root: Path) -> set[str]:
    """Every file and symlink under root, relative to it."""
    out = set()
    for directory, dirs, names in os.walk(root):
        for name in names + [d for d in dirs if os.path.islink(os.path.join(directory, d))]:
            out.add(os.path.relpath(os.path.join(directory, name), root))
    return out


def test_install_then_uninstall(tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    # Another package's hook beside ours: uninstall must leave it.
    (dest / "usr/lib/initcpio/install").mkdir(parents=True)
    (dest / "usr/lib/initcpio/install/base").write_text("build() { :; }\n")

    make("install", f"DESTDIR={dest}", "PREFIX=/usr")
    installed = files(dest)
    hooks = {
        f"usr/lib/initcpio/{p.parent.name}/{p.name}"
        for p in (*TREE.glob("initcpio/install/*"), *TREE.glob("initcpio/hooks/*"))
    }
    assert {p for p in installed if not p.startswith("usr/lib/archiso-hook/")} == {
        "usr/bin/archiso-hook",
        "usr/lib/initcpio/install/base",
        *hooks,
        *(f"usr/share/doc/archiso-hook/{doc}" for doc in DOCS),
        "usr/share/licenses/archiso-hook/LICENSE",
    }
    assert "docs/architecture.md" in DOCS
    for doc in DOCS:
        assert (dest / "usr/share/doc/archiso-hook" / doc).read_bytes() == (TREE / doc).read_bytes()
    frozen = TREE / "build/frozen/archiso-hook"
    tree = "usr/lib/archiso-hook/"
    assert {p.removeprefix(tree) for p in installed if p.startswith(tree)} == files(frozen)
    assert (dest / "usr/bin/archiso-hook").resolve() == dest / "usr/lib/archiso-hook/archiso-hook"
    for hook in hooks:
        assert (dest / hook).read_bytes() == (TREE / hook.split("/", 2)[2]).read_bytes()

    make("uninstall", f"DESTDIR={dest}", "PREFIX=/usr")
    assert files(dest) == {"usr/lib/initcpio/install/base"}
    assert not (dest / "usr/share/doc/archiso-hook").exists()
    assert not (dest / "usr/share/licenses/archiso-hook").exists()
