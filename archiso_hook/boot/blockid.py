"""Labels and UUIDs of filesystems and partitions, read as blkid reads them.

Without udev in the initramfs (`HOOKS=(base archiso)`) no /dev/disk/by-* link exists,
and nothing has recorded ID_FS_LABEL: the hook finds the medium by reading each block
device's identity itself. Covered: what archiso media are made of, iso9660 (volume id,
Joliet's when it says more, and the UUID blkid forms from the volume's date), vfat, ext2/3/4
and btrfs; a partition's PARTUUID (GPT, or the MBR disk signature and its number) and
PARTLABEL (GPT). The values are blkid's (`blkid -p`), so that `LABEL=`, `UUID=`,
`PARTUUID=` and `PARTLABEL=` name the same device with udev and without.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import attrs

from archiso_hook.boot.fsprobe import probe_bytes

# Enough for every superblock read here: btrfs's label ends at 0x1022B.
HEAD_BYTES = 0x10400

Reader = Callable[[int, int], bytes]  # (offset, length) -> bytes, shorter at the end


@attrs.frozen
class Identity:
    """What udev's blkid builtin would record for a device (None: not there)."""

    fstype: str | None
    label: str | None = None
    uuid: str | None = None
    partuuid: str | None = None
    partlabel: str | None = None


def _cstring(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode("utf-8", errors="surrogateescape")


def _guid(raw: bytes) -> str:
    """A GUID stored mixed-endian (GPT, as Microsoft lays them out)."""
    b = raw[3::-1] + raw[5:3:-1] + raw[7:5:-1] + raw[8:16]
    return _uuid(b)


def _uuid(b: bytes) -> str:
    h = b.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:32]}"


def _nonzero(raw: bytes) -> bool:
    return any(raw)


# --- filesystems -------------------------------------------------------------------------


def _ext(head: bytes) -> tuple[str | None, str | None]:
    sb = head[0x400:0x800]
    label = _cstring(sb[0x78:0x88]) or None
    uuid = _uuid(sb[0x68:0x78]) if _nonzero(sb[0x68:0x78]) else None
    return label, uuid


def _btrfs(head: bytes) -> tuple[str | None, str | None]:
    sb = head[0x10000:0x10400]
    label = _cstring(sb[0x12B:0x22B]) or None
    uuid = _uuid(sb[0x20:0x30]) if _nonzero(sb[0x20:0x30]) else None
    return label, uuid


_FAT_NO_NAME = "NO NAME"


def _le(raw: bytes, at: int, size: int) -> int:
    return int.from_bytes(raw[at : at + size], "little")


def _fat(head: bytes, read: Reader) -> tuple[str | None, str | None]:
    def u16(at: int) -> int:
        return _le(head, at, 2)

    def u32(at: int) -> int:
        return _le(head, at, 4)

    sector, per_cluster, reserved, fats = u16(11), head[13], u16(14), head[16]
    fat32 = u16(22) == 0
    at = 0x43 if fat32 else 0x27  # the serial number; its label follows
    boot_label = head[at + 4 : at + 15].decode("latin-1").rstrip(" ")
    serial = head[at : at + 4]
    uuid = f"{serial[3]:02X}{serial[2]:02X}-{serial[1]:02X}{serial[0]:02X}"
    if fat32:
        first = reserved + fats * u32(36) + (u32(44) - 2) * per_cluster
        length = per_cluster * sector
    else:
        first = reserved + fats * u16(22)
        length = u16(17) * 32
    label = None
    if sector and per_cluster and length:
        label = _fat_root_label(read(first * sector, min(length, 1 << 20)))
    if label is None and boot_label and boot_label != _FAT_NO_NAME:
        label = boot_label
    return label, uuid


def _fat_root_label(entries: bytes) -> str | None:
    """The volume label entry of a FAT root directory (what blkid prefers)."""
    for at in range(0, len(entries) - 31, 32):
        entry = entries[at : at + 32]
        if entry[0] == 0:
            break
        if entry[0] == 0xE5 or entry[11] & 0x0F == 0x0F:  # deleted, or a long name part
            continue
        if entry[11] & 0x08 and not entry[11] & 0x10:
            label = entry[:11].decode("latin-1").rstrip(" ")
            return label if label and label != _FAT_NO_NAME else None
    return None


def _iso_descriptors(read: Reader) -> list[bytes]:
    out = []
    for index in range(16, 32):
        block = read(index * 2048, 2048)
        if len(block) < 2048 or block[1:6] != b"CD001" or block[0] == 255:
            break
        out.append(block)
    return out


def _iso_date_uuid(date: bytes) -> str | None:
    """blkid's iso9660 UUID: the date's 16 digits, 'YYYY-MM-DD-HH-MM-SS-CC'; None when
    the date is unset (all '0' with no time zone offset)."""
    digits = date[:16]
    if len(date) < 17 or (digits == b"0" * 16 and date[16] == 0):
        return None
    d = digits.decode("latin-1")
    return f"{d[0:4]}-{d[4:6]}-{d[6:8]}-{d[8:10]}-{d[10:12]}-{d[12:14]}-{d[14:16]}"


def _merge_joliet(joliet: bytes, ascii_id: bytes) -> str | None:
    """The Joliet volume id where it only restores what mkisofs had to change in the
    primary one (case, '_' for other characters), as blkid merges them; None when they
    say different things."""
    out = []
    u = 0
    for a in ascii_id:
        if u + 1 >= len(joliet):
            break
        hi, lo = joliet[u], joliet[u + 1]
        if 0xD8 <= hi <= 0xDB and u + 3 < len(joliet) and 0xDC <= joliet[u + 2] <= 0xDF:
            out.append(joliet[u : u + 4].decode("utf-16-be", errors="replace"))
            u += 4
            continue
        if a == ord("_") and (hi != 0 or lo >= 0x80):
            out.append(bytes((hi, lo)).decode("utf-16-be", errors="replace"))
        elif hi == 0 and lo == ord("_"):
            out.append(chr(a))
        elif hi == 0 and chr(a).upper() == chr(lo).upper():
            out.append(chr(lo) if chr(a).isupper() else chr(a))
        else:
            return None
        u += 2
    return "".join(out)


def _iso9660(read: Reader) -> tuple[str | None, str | None]:
    primary = joliet = None
    for block in _iso_descriptors(read):
        if block[0] == 1 and primary is None:
            primary = block
        elif block[0] == 2 and block[88:91] in (b"%/@", b"%/C", b"%/E") and joliet is None:
            joliet = block
    if primary is None:
        return None, None
    ascii_id = primary[40:72]
    label = None
    if joliet is not None:
        label = _merge_joliet(joliet[40:72], ascii_id)
        if label is None:
            label = joliet[40:72].decode("utf-16-be", errors="replace")
    if label is None:
        label = ascii_id.decode("latin-1")
    label = label.rstrip(" \0")
    uuid = _iso_date_uuid(primary[830:847]) or _iso_date_uuid(primary[813:830])
    return label or None, uuid


def identify_filesystem(head: bytes, read: Reader) -> Identity:
    """The filesystem's type, label and UUID from a device's first HEAD_BYTES (`read`
    for what lies further: a FAT root directory, iso9660's descriptors)."""
    fstype = probe_bytes(head)
    label = uuid = None
    if fstype == "ext4":
        label, uuid = _ext(head)
    elif fstype == "btrfs":
        label, uuid = _btrfs(head)
    elif fstype == "vfat":
        label, uuid = _fat(head, read)
    elif fstype == "iso9660":
        label, uuid = _iso9660(read)
    return Identity(fstype, label, uuid)


# --- partition tables --------------------------------------------------------------------


def partition_entry(read: Reader, number: int, sector: int = 512) -> tuple[str | None, str | None]:
    """(PARTUUID, PARTLABEL) of partition `number` (the kernel's numbering) of the disk
    `read` reads: GPT's unique GUID and name, or for an MBR disk its signature and the
    number (blkid's 'xxxxxxxx-NN'), no name."""
    mbr = read(0, 512)
    if len(mbr) < 512 or mbr[510:512] != b"\x55\xaa":
        return None, None
    if any(mbr[0x1BE + 16 * i + 4] == 0xEE for i in range(4)):
        return _gpt_entry(read, number, sector)
    signature = int.from_bytes(mbr[0x1B8:0x1BC], "little")
    return (f"{signature:08x}-{number:02x}" if signature else None), None


def _gpt_entry(read: Reader, number: int, sector: int) -> tuple[str | None, str | None]:
    header = read(sector, 92)
    if header[:8] != b"EFI PART" or number < 1:
        return None, None
    entries_lba = int.from_bytes(header[72:80], "little")
    count = int.from_bytes(header[80:84], "little")
    size = int.from_bytes(header[84:88], "little")
    if number > count or size < 128:
        return None, None
    entry = read(entries_lba * sector + (number - 1) * size, 128)
    if len(entry) < 128 or not _nonzero(entry[:16]):
        return None, None
    name = entry[56:128].decode("utf-16-le", errors="replace").split("\0", 1)[0]
    return _guid(entry[16:32]), name or None


# --- devices -----------------------------------------------------------------------------


def _reader(fd: int) -> Reader:
    def read(offset: int, length: int) -> bytes:
        try:
            return os.pread(fd, length, offset)
        except OSError:
            return b""

    return read


def _sysfs_int(path: str, default: int) -> int:
    try:
        with open(path, encoding="ascii") as f:
            return int(f.read())
    except (OSError, ValueError):
        return default


def identify(name: str, dev: str = "/dev", sys_block: str = "/sys/class/block") -> Identity | None:
    """What a block device (a kernel name: sr0, sda1) holds; None if it cannot be read
    (no medium in the drive, say)."""
    try:
        fd = os.open(os.path.join(dev, name), os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        read = _reader(fd)
        found = identify_filesystem(read(0, HEAD_BYTES), read)
    finally:
        os.close(fd)
    number = _sysfs_int(f"{sys_block}/{name}/partition", 0)
    if not number:
        return found
    disk = os.path.basename(os.path.dirname(os.path.realpath(f"{sys_block}/{name}")))
    sector = _sysfs_int(f"{sys_block}/{disk}/queue/logical_block_size", 512)
    try:
        fd = os.open(os.path.join(dev, disk), os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return found
    try:
        partuuid, partlabel = partition_entry(_reader(fd), number, sector)
    finally:
        os.close(fd)
    return attrs.evolve(found, partuuid=partuuid, partlabel=partlabel)


def identify_file(path: str) -> Identity:
    """The filesystem in an image file (no partition: see partition_entry)."""
    with open(path, "rb") as f:
        read = _reader(f.fileno())
        return identify_filesystem(read(0, HEAD_BYTES), read)
