"""COW files: what a persistent one's header says, and how much room new ones may take.

A persistent dm-snapshot store begins with `struct disk_header` (little-endian:
magic "SnAp", valid, version, chunk_size; drivers/md/dm-snap-persistent.c). An
all-zero start is a store the kernel will initialise.
"""

from __future__ import annotations

import os
import stat
import struct

import attrs

from archiso_hook.errors import HookError

SNAP_MAGIC = 0x70416E53
DISK_HEADER = struct.Struct("<4I")
# Filesystems without holes: a COW file there takes its whole size at once.
NO_SPARSE_FILES = frozenset({"vfat", "msdos", "exfat"})
FAT_MAX_FILE = (4 << 30) - 1

RESET_HINT = "boot once with cow_reset=y to start over (the changes kept in it are lost)"


@attrs.frozen
class CowHeader:
    magic: int
    valid: int
    version: int
    chunk_size: int  # sectors

    @classmethod
    def unpack(cls, raw: bytes) -> CowHeader:
        return cls(*DISK_HEADER.unpack(raw[: DISK_HEADER.size].ljust(DISK_HEADER.size, b"\0")))

    @property
    def blank(self) -> bool:
        return self.magic == 0


def read_header(path: str) -> CowHeader:
    with open(path, "rb") as f:
        return CowHeader.unpack(f.read(DISK_HEADER.size))


def check_reusable(path: str, header: CowHeader) -> None:
    """Refuse, in plain words, a file the kernel would refuse or mark Invalid."""
    if header.blank:
        return
    if header.magic != SNAP_MAGIC:
        raise HookError(
            f"{path} is not a dm-snapshot COW file, so it cannot be reused", hint=RESET_HINT
        )
    if not header.valid:
        raise HookError(
            f"the persistent COW file {path} is marked invalid: it overflowed, or a write to it "
            "failed, in an earlier boot",
            hint=RESET_HINT,
        )


def check_kept(path: str, space: str) -> None:
    """A kept COW file must be a regular file on the cowspace's own filesystem: a symlink
    or a device node there would aim the snapshot's writes at whatever it names (another
    disk's blocks), and a file elsewhere is not what cow_label= or cow_device= chose."""
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode):
        what = f"a symbolic link to {os.readlink(path)}"
    elif stat.S_ISBLK(st.st_mode) or stat.S_ISCHR(st.st_mode):
        what = "a device node"
    elif not stat.S_ISREG(st.st_mode):
        what = "not a regular file"
    elif st.st_dev != os.stat(space).st_dev:
        what = f"not on the filesystem of {space}"
    else:
        return
    raise HookError(
        f"the persistent COW file {path} is {what}: refusing to write through it",
        hint="remove it from the COW device, or boot once with cow_reset=y",
    )


@attrs.frozen
class Usage:
    apparent: int
    allocated: int

    @classmethod
    def of(cls, path: str) -> Usage:
        st = os.stat(path)
        return cls(st.st_size, st.st_blocks * 512)

    @property
    def can_grow(self) -> int:
        return max(0, self.apparent - self.allocated)


def room_for_new_files(free: int, kept: list[Usage]) -> int:
    """What new COW files may take so that no COW file can ever hit a full filesystem:
    the free space, less what the kept files can still grow into."""
    return free - sum(usage.can_grow for usage in kept)
