from __future__ import annotations

import os
import shutil
import stat
import struct
import tempfile
from pathlib import Path

import pytest

from archiso_hook.boot.cowfile import (
    SNAP_MAGIC,
    CowHeader,
    Usage,
    check_kept,
    check_reusable,
    read_header,
    room_for_new_files,
)
from archiso_hook.errors import HookError


def write(path: Path, magic: int, valid: int, chunk: int = 8) -> str:
    path.write_bytes(struct.pack("<4I", magic, valid, 1, chunk) + b"\0" * 4080)
    return str(path)


def test_a_valid_store_and_a_blank_file_can_be_reused(tmp_path: Path) -> None:
    path = write(tmp_path / "ok.cow", SNAP_MAGIC, 1, chunk=16)
    header = read_header(path)
    assert header == CowHeader(SNAP_MAGIC, 1, 1, 16)
    check_reusable(path, header)
    (tmp_path / "blank.cow").write_bytes(b"\0" * 4096)
    assert read_header(str(tmp_path / "blank.cow")).blank
    check_reusable(str(tmp_path / "blank.cow"), read_header(str(tmp_path / "blank.cow")))
    (tmp_path / "empty.cow").write_bytes(b"")
    assert read_header(str(tmp_path / "empty.cow")).blank


def test_an_invalidated_store_is_refused_with_the_way_out(tmp_path: Path) -> None:
    path = write(tmp_path / "bad.cow", SNAP_MAGIC, 0)
    with pytest.raises(HookError) as excinfo:
        check_reusable(path, read_header(path))
    assert "is marked invalid: it overflowed, or a write to it failed" in str(excinfo.value)
    assert "cow_reset=y" in str(excinfo.value.hint)


def test_something_else_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path / "x.cow", 0x12345678, 1)
    with pytest.raises(HookError, match="is not a dm-snapshot COW file"):
        check_reusable(path, read_header(path))


def test_room_for_new_files_leaves_what_kept_files_can_still_grow_into() -> None:
    kept = [Usage(apparent=100, allocated=30), Usage(apparent=50, allocated=50)]
    assert room_for_new_files(1000, kept) == 930
    assert room_for_new_files(50, kept) == -20
    assert room_for_new_files(1000, []) == 1000


def test_a_kept_cow_file_is_a_regular_file_on_the_cowspace(tmp_path: Path) -> None:
    space = tmp_path / "cowspace"
    space.mkdir()
    ok = write(space / "root.cow", SNAP_MAGIC, 1)
    check_kept(ok, str(space))
    cases = {
        "link.cow": "a symbolic link to /dev/vda",
        "dev.cow": "a device node",
        "dir.cow": "not a regular file",
    }
    (space / "link.cow").symlink_to("/dev/vda")
    os.mknod(space / "dev.cow", 0o600 | stat.S_IFBLK, os.makedev(254, 0))
    (space / "dir.cow").mkdir()
    elsewhere = Path(tempfile.mkdtemp(dir="/dev/shm"))
    try:
        cases[write(elsewhere / "root.cow", SNAP_MAGIC, 1)] = f"not on the filesystem of {space}"
        for name, what in cases.items():
            path = str(space / name)
            with pytest.raises(HookError) as error:
                check_kept(path, str(space))
            assert str(error.value) == (
                f"the persistent COW file {path} is {what}: refusing to write through it "
                "(remove it from the COW device, or boot once with cow_reset=y)"
            )
    finally:
        shutil.rmtree(elsewhere)
