"""Declared filesystem sizes, the truncation check's basis, on images made by real tools."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from archiso_hook.boot.fsprobe import declared_size, probe_bytes, read_head


def _run(*cmd: str) -> None:
    subprocess.run(cmd, check=True, capture_output=True)


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tree = tmp_path_factory.mktemp("tree")
    (tree / "data").write_bytes(bytes(range(256)) * 4096)
    return tree


@pytest.mark.parametrize("fs", ["ext2", "ext4"])
def test_ext_declares_its_size(tmp_path: Path, tree: Path, fs: str) -> None:
    image = tmp_path / "fs.img"
    _run("mke2fs", "-q", "-t", fs, "-d", str(tree), str(image), "8M")
    head = read_head(str(image))
    assert declared_size(head, "ext4") == 8 << 20 == image.stat().st_size


def test_ext4_64bit(tmp_path: Path, tree: Path) -> None:
    image = tmp_path / "fs.img"
    _run("mke2fs", "-q", "-t", "ext4", "-O", "64bit", "-b", "1024", str(image), "5M")
    assert declared_size(read_head(str(image)), "ext4") == 5 << 20


def test_squashfs_declares_the_bytes_it_uses(tmp_path: Path, tree: Path) -> None:
    image = tmp_path / "fs.sfs"
    _run("mksquashfs", str(tree), str(image), "-quiet", "-noappend")
    declared = declared_size(read_head(str(image)), "squashfs")
    assert declared is not None and 0 < declared <= image.stat().st_size


def test_iso9660_declares_its_volume_size(tmp_path: Path, tree: Path) -> None:
    image = tmp_path / "fs.iso"
    _run("xorriso", "-as", "mkisofs", "-quiet", "-R", "-o", str(image), str(tree))
    head = read_head(str(image))
    assert probe_bytes(head) == "iso9660"
    assert declared_size(head, "iso9660") == image.stat().st_size


def test_a_truncated_copy_still_declares_the_whole_size(tmp_path: Path, tree: Path) -> None:
    image = tmp_path / "fs.img"
    _run("mke2fs", "-q", "-t", "ext4", "-d", str(tree), str(image), "8M")
    cut = tmp_path / "cut.img"
    cut.write_bytes(image.read_bytes()[: 3 << 20])
    assert declared_size(read_head(str(cut)), "ext4") == 8 << 20 > cut.stat().st_size


def test_unknown_types_declare_nothing() -> None:
    assert declared_size(b"\0" * 70000, "vfat") is None
