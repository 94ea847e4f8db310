"""Which filesystem a device or image holds, from its superblock magic.

Used to mount the medium without blkid and to tell a user plainly when an image
is not what its aitab line says (a truncated download, a wrong fs_type).
"""

from __future__ import annotations

import os

# (offset, magic, filesystem type as mount(2) names it); first match wins.
_MAGICS: tuple[tuple[int, bytes, str], ...] = (
    (0, b"hsqs", "squashfs"),
    (0, b"XFSB", "xfs"),
    (3, b"NTFS    ", "ntfs3"),
    (3, b"EXFAT   ", "exfat"),
    (0x438, b"\x53\xef", "ext4"),  # ext2/3/4 alike: the ext4 driver mounts all three
    (0x8001, b"CD001", "iso9660"),
    (0x10040, b"_BHRfS_M", "btrfs"),
)
_PROBE_BYTES = 0x10040 + 8


def probe_bytes(head: bytes) -> str | None:
    """Filesystem type from the first 65608 bytes of a device, or None."""
    for offset, magic, fstype in _MAGICS:
        if head[offset : offset + len(magic)] == magic:
            return fstype
    # FAT has no single magic: a boot sector signature plus a FAT type string.
    if head[510:512] == b"\x55\xaa" and (head[0x36:0x39] == b"FAT" or head[0x52:0x57] == b"FAT32"):
        return "vfat"
    return None


def probe(path: str) -> str | None:
    """Filesystem type of a block device or image file; None if unknown or unreadable."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        return probe_bytes(os.pread(fd, _PROBE_BYTES, 0))
    except OSError:
        return None
    finally:
        os.close(fd)


def read_head(path: str) -> bytes:
    """The bytes the probe needs; raises OSError (EIO from a damaged image, say)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return os.pread(fd, _PROBE_BYTES, 0)
    finally:
        os.close(fd)


def declared_size(head: bytes, fstype: str) -> int | None:
    """How big the filesystem says it is, from its superblock; None if unknown.

    A file shorter than that was cut short: an interrupted copy or download.
    """
    if fstype == "ext4" and len(head) >= 0x554:
        blocks = int.from_bytes(head[0x404:0x408], "little")
        if int.from_bytes(head[0x460:0x464], "little") & 0x80:  # INCOMPAT_64BIT
            blocks |= int.from_bytes(head[0x550:0x554], "little") << 32
        log_block = int.from_bytes(head[0x418:0x41C], "little")
        return blocks * (1024 << log_block) if log_block < 8 else None
    if fstype == "squashfs" and len(head) >= 48:
        return int.from_bytes(head[40:48], "little")  # bytes_used
    if fstype == "iso9660" and len(head) >= 0x8082:
        blocks = int.from_bytes(head[0x8050:0x8054], "little")  # volume space size
        return blocks * int.from_bytes(head[0x8080:0x8082], "little")  # logical block size
    return None


def journal_needs_recovery(head: bytes, fstype: str) -> bool:
    """Whether the superblock says its journal holds changes not yet written in place (a
    system hibernated or stopped without unmounting it). Known for ext2/3/4 only
    (INCOMPAT_RECOVER); False for every other type."""
    if fstype == "ext4" and len(head) >= 0x464:
        return bool(int.from_bytes(head[0x460:0x464], "little") & 0x4)
    return False
