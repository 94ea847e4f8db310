"""The superblock probe against filesystems made by the real tools."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from archiso_hook.boot.fsprobe import probe


def _run(*cmd: str) -> None:
    subprocess.run(cmd, check=True, capture_output=True)


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    work = tmp_path_factory.mktemp("fs")
    tree = work / "tree"
    tree.mkdir()
    (tree / "hello").write_text("hello\n")
    out = {
        name: work / name
        for name in ("ext2", "ext3", "ext4", "vfat", "squashfs", "iso9660", "zeros")
    }
    for name in ("ext2", "ext3", "ext4"):
        _run("mke2fs", "-q", "-t", name, "-d", str(tree), str(out[name]), "4M")
    _run("truncate", "-s", "4M", str(out["vfat"]))
    _run("mkfs.vfat", str(out["vfat"]))
    _run("mksquashfs", str(tree), str(out["squashfs"]), "-quiet", "-noappend")
    _run(
        "xorriso",
        "-as",
        "mkisofs",
        "-quiet",
        "-R",
        "-V",
        "PROBE",
        "-o",
        str(out["iso9660"]),
        str(tree),
    )
    _run("truncate", "-s", "1M", str(out["zeros"]))
    return out


@pytest.mark.parametrize(
    ("image", "expected"),
    [
        ("ext2", "ext4"),
        ("ext3", "ext4"),
        ("ext4", "ext4"),
        ("vfat", "vfat"),
        ("squashfs", "squashfs"),
        ("iso9660", "iso9660"),
        ("zeros", None),
    ],
)
def test_probe_names_the_filesystem_as_mount_wants_it(
    images: dict[str, Path], image: str, expected: str | None
) -> None:
    assert probe(str(images[image])) == expected


def test_a_truncated_image_is_not_recognised(images: dict[str, Path], tmp_path: Path) -> None:
    head = images["ext4"].read_bytes()[:512]
    (tmp_path / "cut").write_bytes(head)
    assert probe(str(tmp_path / "cut")) is None
    assert probe(str(tmp_path / "missing")) is None
