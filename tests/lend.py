"""A copy of this checkout that another user can run: for the tests that build as an
unprivileged user (the builder and the lab's disks as uid 65534, makepkg as its own user).

Root's first clone is often in its home directory, which no other user may enter (/root
is 0700), so that user can neither run the tree's `.venv/bin/python` nor import the tree.
`lend(dest)` puts, under `dest` (a directory the test made and opened, in /tmp), the
files of the tree as `make dist` takes them (git's tracked and not ignored files, as they
are now) and a copy of the venv whose scripts name the copy's interpreter. Nothing of the
tree changes mode; the copy's modes are the tree's (readable by all, as git and pip
leave them). Files are hard links where the venv and `dest` share a filesystem.
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
from pathlib import Path

import attrs

TREE = Path(__file__).resolve().parents[1]


@attrs.frozen
class Lent:
    root: Path
    sources: Path  # the tree's files
    venv: Path  # its .venv

    @property
    def python(self) -> Path:
        return self.venv / "bin" / "python"


def tree_files(tree: Path = TREE) -> list[str]:
    """What `make dist` packs: the files git tracks or would track, as they are now."""
    out = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=tree,
        capture_output=True,
        check=True,
    ).stdout
    return [name for name in out.decode().split("\0") if name and (tree / name).is_file()]


def copy_sources(dest: Path, tree: Path = TREE) -> Path:
    for name in tree_files(tree):
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(tree / name, target, follow_symlinks=False)
    return dest


def lend_venv(venv: Path, dest: Path) -> Path:
    """A copy of `venv` at `dest`: its scripts' `#!` lines and its own paths point at the
    copy; the rest is linked (or copied, across filesystems)."""
    old, new = str(venv).encode(), str(dest).encode()
    for directory, dirs, files in os.walk(venv):
        here = Path(directory)
        there = dest / here.relative_to(venv)
        there.mkdir(mode=0o755, exist_ok=True)
        for name in (*files, *(d for d in dirs if (here / d).is_symlink())):
            src, dst = here / name, there / name
            if src.is_symlink():
                os.symlink(os.readlink(src), dst)
            elif _names_the_venv(src, venv):
                dst.write_bytes(src.read_bytes().replace(old, new))
                shutil.copymode(src, dst)
            else:
                _link_or_copy(src, dst)
    return dest


def _names_the_venv(path: Path, venv: Path) -> bool:
    """pyvenv.cfg, and the scripts in bin/ (whose #! line names the venv's python)."""
    if path == venv / "pyvenv.cfg":
        return True
    if path.parent != venv / "bin":
        return False
    with path.open("rb") as f:
        return f.read(2) == b"#!"


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError as e:
        if e.errno not in (errno.EXDEV, errno.EPERM):
            raise
        shutil.copy2(src, dst)


def lend(dest: Path, tree: Path = TREE) -> Lent:
    """The tree's sources at `dest`/src and its venv at `dest`/venv, `dest` opened to all."""
    dest.mkdir(parents=True, exist_ok=True)
    dest.chmod(0o755)
    venv = tree / ".venv"
    if not (venv / "bin" / "python").exists():
        raise FileNotFoundError(f"{venv} is missing: run `make setup` first")
    return Lent(dest, copy_sources(dest / "src", tree), lend_venv(venv, dest / "venv"))
