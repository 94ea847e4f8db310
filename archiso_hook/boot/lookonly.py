"""Mounting another disk's filesystem only to look at it, writing nothing to that disk.

A read-only mount is not enough. On a writable device the kernel replays a dirty
journal even for a read-only mount (fs/ext4/super.c, ext4_load_journal: "write access
will be enabled during recovery"; XFS and btrfs replay their logs likewise), and ext4
then deletes orphan inodes "on readonly fs" (fs/ext4/orphan.c). A hibernated or
crashed system's disk would be changed under it. So a look-only mount gets:

- the filesystem's option that skips the replay (`no_replay_option`): ext2/3/4
  `noload`, XFS and f2fs `norecovery`, btrfs `rescue=nologreplay` (Linux 5.9). The
  kernel accepts these only on read-only mounts; ext4 with `noload` mounts a
  filesystem that needs recovery read-only, as its last checkpoint left it;
- the block device made read-only around the mount (BLKROSET, `read_only_device`),
  so that a filesystem without such an option, or anything the kernel would still
  write (ext4's orphan cleanup and error records check `bdev_read_only()` first), is
  refused by the block layer. What it was before (BLKROGET) is put back after.

ntfs3 needs no option: on a read-only mount it reads $LogFile, notes that a replay
would be needed and replays nothing (fs/ntfs3/fslog.c, log_replay: `if (is_ro) goto
out`). vfat, exFAT, iso9660, squashfs and udf have no journal.
"""

from __future__ import annotations

import contextlib
import os
import struct
from collections.abc import Iterator

from archiso_hook.errors import KernelError
from archiso_hook.kernel.ioctl import IocLayout, IoctlError, ioctl, layout_for

# The option of each filesystem type (as mount(2) names it) that mounts it without
# replaying its journal; None: it replays nothing on a read-only mount.
_NO_REPLAY: dict[str, str | None] = {
    "ext2": "noload",  # the ext4 driver mounts ext2 and ext3 too, and takes noload for all
    "ext3": "noload",
    "ext4": "noload",
    "xfs": "norecovery",
    "f2fs": "norecovery",
    "btrfs": "rescue=nologreplay",
    "ntfs3": None,
    "vfat": None,
    "exfat": None,
    "iso9660": None,
    "squashfs": None,
    "udf": None,
}


def no_replay_option(fstype: str) -> str | None:
    """The mount option that keeps `fstype` from replaying its journal, if it has one.

    A type not listed gets none: the read-only device is then what protects it.
    """
    return _NO_REPLAY.get(fstype)


def look_only_data(fstype: str, data: str | None) -> str | None:
    """The filesystem options of a look-only mount: `data` (a user's, comma-separated)
    with the no-replay option added when it is not there already."""
    option = no_replay_option(fstype)
    words = data.split(",") if data else []
    if option is not None and option not in words:
        words.append(option)
    return ",".join(words) or None


# include/uapi/linux/fs.h: #define BLKROSET _IO(0x12,93), BLKROGET _IO(0x12,94); both
# take a pointer to an int (0: read-write).
BLK_IOCTL_TYPE = 0x12
BLKROSET_NR = 93
BLKROGET_NR = 94
_INT = struct.Struct("=i")


def blkroset(layout: IocLayout | None = None) -> int:
    return (layout or layout_for()).io(BLK_IOCTL_TYPE, BLKROSET_NR)


def blkroget(layout: IocLayout | None = None) -> int:
    return (layout or layout_for()).io(BLK_IOCTL_TYPE, BLKROGET_NR)


class DeviceReadOnlyError(KernelError):
    """The device could not be made read-only: it must not be mounted to look."""


def _get_read_only(fd: int, device: str) -> bool:
    buffer = bytearray(_INT.size)
    ioctl(fd, blkroget(), buffer, name="BLKROGET", what=f"read whether {device} is read-only")
    value: int = _INT.unpack(buffer)[0]
    return value != 0


def _set_read_only(fd: int, device: str, read_only: bool) -> None:
    what = f"make {device} read-only" if read_only else f"make {device} writable again"
    ioctl(fd, blkroset(), bytearray(_INT.pack(1 if read_only else 0)), name="BLKROSET", what=what)


@contextlib.contextmanager
def read_only_device(device: str) -> Iterator[None]:
    """The block device `device` read-only for the duration of the block, then as it was.

    Raises DeviceReadOnlyError on the way in (nothing changed), KernelError if the
    old state cannot be put back.
    """
    try:
        fd = os.open(device, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as e:
        raise DeviceReadOnlyError(
            f"cannot open {device} to make it read-only: {e.strerror}", e.errno or 0
        ) from None
    try:
        try:
            was_read_only = _get_read_only(fd, device)
            if not was_read_only:
                _set_read_only(fd, device, True)
        except IoctlError as e:
            raise DeviceReadOnlyError(e.message, e.errno) from None
        try:
            yield
        finally:
            if not was_read_only:
                try:
                    _set_read_only(fd, device, False)
                except IoctlError as e:
                    raise KernelError(
                        e.message, e.errno, hint="`blockdev --setrw` does it by hand"
                    ) from None
    finally:
        os.close(fd)
