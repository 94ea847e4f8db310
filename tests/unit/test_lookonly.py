"""Looking into another system's filesystem without writing to it: the option that
skips each filesystem's journal replay, and the read-only block device around it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from archiso_hook.boot import fsprobe, lookonly
from archiso_hook.boot.lookonly import look_only_data, no_replay_option
from archiso_hook.errors import KernelError
from archiso_hook.kernel import loop
from archiso_hook.kernel.ioctl import GENERIC, POWERPC_MIPS_SPARC


@pytest.mark.parametrize(
    ("fstype", "option"),
    [
        ("ext2", "noload"),
        ("ext3", "noload"),
        ("ext4", "noload"),
        ("xfs", "norecovery"),
        ("f2fs", "norecovery"),
        ("btrfs", "rescue=nologreplay"),
        ("ntfs3", None),  # replays nothing on a read-only mount
        ("vfat", None),
        ("exfat", None),
        ("iso9660", None),
        ("squashfs", None),
        ("nilfs2", None),  # unknown here: the read-only device protects it
    ],
)
def test_the_option_that_skips_the_journal_replay(fstype: str, option: str | None) -> None:
    assert no_replay_option(fstype) == option


def test_look_only_options_keep_the_users_and_add_the_option_once() -> None:
    assert look_only_data("ext4", None) == "noload"
    assert look_only_data("ext4", "errors=remount-ro") == "errors=remount-ro,noload"
    assert look_only_data("ext4", "noload") == "noload"
    assert look_only_data("btrfs", "subvol=@") == "subvol=@,rescue=nologreplay"
    assert look_only_data("vfat", None) is None
    assert look_only_data("vfat", "utf8") == "utf8"


def test_blkroset_and_blkroget_request_numbers() -> None:
    """_IO(0x12, 93) and _IO(0x12, 94); test_abi checks them against the headers."""
    assert (lookonly.blkroset(GENERIC), lookonly.blkroget(GENERIC)) == (0x125D, 0x125E)
    assert lookonly.blkroset(POWERPC_MIPS_SPARC) == 0x2000125D


def _ext4_head(incompat: int) -> bytes:
    head = bytearray(fsprobe._PROBE_BYTES)
    head[0x438:0x43A] = b"\x53\xef"
    head[0x460:0x464] = incompat.to_bytes(4, "little")
    return bytes(head)


def test_an_ext4_whose_journal_needs_recovery_is_recognised() -> None:
    assert fsprobe.journal_needs_recovery(_ext4_head(0x2C6), "ext4")  # RECOVER set
    assert not fsprobe.journal_needs_recovery(_ext4_head(0x2C2), "ext4")
    assert not fsprobe.journal_needs_recovery(_ext4_head(0x2C6), "xfs")
    assert not fsprobe.journal_needs_recovery(b"", "ext4")


_host = pytest.mark.skipif(
    os.geteuid() != 0 or not os.path.exists("/dev/loop-control"),
    reason="needs root and /dev/loop-control (CI has both)",
)


def _ro(device: loop.LoopDevice) -> str:
    return Path(f"/sys/block/loop{device.number}/ro").read_text().strip()


@_host
def test_the_device_is_read_only_inside_and_as_before_after(tmp_path: Path) -> None:
    image = tmp_path / "image"
    image.write_bytes(b"x" * (1 << 20))
    writable = loop.attach(str(image), read_only=False)
    read_only = loop.attach(str(image), read_only=True)
    try:
        assert _ro(writable) == "0"
        with lookonly.read_only_device(writable.path):
            assert _ro(writable) == "1"
            fd = os.open(writable.path, os.O_WRONLY)
            try:
                with pytest.raises(OSError, match="Operation not permitted"):
                    os.pwrite(fd, b"y" * 4096, 0)
            finally:
                os.close(fd)
        assert _ro(writable) == "0"
        with lookonly.read_only_device(read_only.path):
            assert _ro(read_only) == "1"
        assert _ro(read_only) == "1"  # it was read-only before: it stays so
        with pytest.raises(RuntimeError), lookonly.read_only_device(writable.path):
            raise RuntimeError("the look failed")
        assert _ro(writable) == "0"  # put back on the way out of a failure too
    finally:
        writable.detach()
        read_only.detach()


def test_a_device_that_cannot_be_opened_is_not_looked_at(tmp_path: Path) -> None:
    with (
        pytest.raises(lookonly.DeviceReadOnlyError, match=r"cannot open .*/nope to make it"),
        lookonly.read_only_device(str(tmp_path / "nope")),
    ):
        pass
    assert issubclass(lookonly.DeviceReadOnlyError, KernelError)


def test_a_file_is_not_a_block_device(tmp_path: Path) -> None:
    regular = tmp_path / "file"
    regular.write_bytes(b"")
    with (
        pytest.raises(
            lookonly.DeviceReadOnlyError,
            match=r"cannot read whether .* is read-only \(BLKROGET\): Inappropriate ioctl",
        ),
        lookonly.read_only_device(str(regular)),
    ):
        pass
