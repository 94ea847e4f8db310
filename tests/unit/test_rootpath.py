from __future__ import annotations

import os
from pathlib import Path

import pytest

from archiso_hook.boot.rootpath import resolve_in_root
from archiso_hook.errors import HookError


@pytest.fixture
def root(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    (root / "usr/lib").mkdir(parents=True)
    (tmp_path / "outside").mkdir()
    os.symlink("usr/lib", root / "lib")  # Arch's /lib
    os.symlink("/usr/lib", root / "abs")  # absolute: must mean the new root's /usr/lib
    os.symlink("../../../../../../outside", root / "escape")
    os.symlink("a", root / "b")
    os.symlink("b", root / "a")
    return root


@pytest.mark.parametrize(
    ("path", "inside"),
    [
        ("/", ""),
        ("/usr/share", "usr/share"),
        ("/lib/modules", "usr/lib/modules"),
        ("/abs/firmware", "usr/lib/firmware"),
        ("/escape/x", "outside/x"),
        ("/../../etc", "etc"),
        ("/usr/./lib/../share", "usr/share"),
    ],
)
def test_symlinks_are_followed_without_leaving_the_root(root: Path, path: str, inside: str) -> None:
    assert resolve_in_root(str(root), path) == os.path.join(str(root), inside).rstrip("/")


def test_a_symlink_loop_is_an_error(root: Path) -> None:
    with pytest.raises(HookError, match="more than 40 symbolic links"):
        resolve_in_root(str(root), "/a/x")
