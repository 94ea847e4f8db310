"""Disk images for the lab, made from plain files: no root, no mounts, no loop devices.

    root = make_ext4(tree, work / "root.ext4", size_mib=64, label="labroot")
    layout = make_disk(work / "disk.img", [Partition(64, image=root, name="labroot")])
    ... boot a guest with Drive(layout.path) ...
    read_file_from_ext4(layout.path, "/root/x", offset=layout.partition("labroot").start)

`make_ext4()` and `make_vfat()` build filesystem images (`mkfs.ext4 -d`; `mkfs.vfat` and
mtools' `mcopy`). `make_disk()` writes a sparse disk image with a GPT or MBR partition
table (`sfdisk` on the file) and copies each partition's image in, writing only its
non-zero blocks. Identifiers are reproducible: the disk identifier and the default
PARTUUIDs are uuid5 of the disk file's name (and the partition number).

`read_file_from_ext4()` and `list_dir_from_ext4()` look inside an ext2/3/4 filesystem
with `debugfs` (read-only), on a whole image or at a byte offset inside a disk image: so
tests can see what a guest left on a persistent disk after it powered off.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import stat
import struct
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Literal
from uuid import NAMESPACE_URL, UUID, uuid5

import attrs

from vm import liveroot

__all__ = [
    "ESP",
    "LINUX_FS",
    "MS_BASIC_DATA",
    "DiskError",
    "DiskLayout",
    "Ext4Entry",
    "Partition",
    "PartitionLayout",
    "ext4_needs_recovery",
    "extract_partition",
    "list_dir_from_ext4",
    "make_disk",
    "make_ext4",
    "make_vfat",
    "read_file_from_ext4",
    "read_layout",
    "udev_link_name",
]

#: GPT partition types.
LINUX_FS = "0FC63DAF-8483-4772-8E79-3D69D8477DE4"
ESP = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
MS_BASIC_DATA = "EBD0A0A2-B9E5-4433-87C0-68B6B72699C7"
# The MBR type codes a GPT type stands for in a "dos" table.
_MBR_TYPES = {LINUX_FS: "83", ESP: "ef", MS_BASIC_DATA: "c"}

SECTOR = 512
MIB = 1 << 20
# Identifiers derive from this namespace, so that two disks of the same file name get
# the same ones on any machine.
_NAMESPACE = uuid5(NAMESPACE_URL, "archiso-hook:vm/disks")
_GUID = re.compile(r"^[0-9A-Fa-f]{8}-(?:[0-9A-Fa-f]{4}-){3}[0-9A-Fa-f]{12}$")
_MBR_CODE = re.compile(r"^[0-9A-Fa-f]{1,2}$")
_BLOCK = 4096
_CHUNK = 1 << 20
_ZEROS = bytes(_CHUNK)
_DEFAULT_EPOCH = "1700000000"


class DiskError(RuntimeError):
    """An image could not be made or read (the message carries the tool's words)."""


def _optional_uuid(value: str | None) -> str | None:
    return None if value is None else str(UUID(value))


def _check_type(_inst: object, _attr: attrs.Attribute[str], value: str) -> None:
    if not (_GUID.match(value) or _MBR_CODE.match(value)):
        raise ValueError(f"partition type {value!r}: expected a GPT type GUID or an MBR code")


def _check_name(_inst: object, _attr: attrs.Attribute[str | None], value: str | None) -> None:
    if value is None:
        return
    # sfdisk's script syntax has no escapes; GPT has room for 36 UTF-16 code units.
    if not value or any(c in value for c in '"\\') or not value.isprintable():
        raise ValueError(f"partition name {value!r}: printable, without quotes or backslashes")
    if len(value.encode("utf-16-le")) > 72:
        raise ValueError(f"partition name {value!r}: longer than 36 UTF-16 code units")


@attrs.frozen
class Partition:
    """One partition of `make_disk()`.

    `image` (a filesystem image) is copied to the start of the partition and must fit in
    `size_mib`. `name` is the GPT partition name (udev's PARTLABEL), `uuid` the GPT
    PARTUUID (default: uuid5 of the disk file name and the partition number). `type` is
    a GPT type GUID or an MBR code ("83", "c", "ef"); in a "dos" table, `LINUX_FS`,
    `ESP` and `MS_BASIC_DATA` stand for 83, ef and c.
    """

    size_mib: int = attrs.field(
        validator=[attrs.validators.instance_of(int), attrs.validators.gt(0)]
    )
    image: Path | None = attrs.field(default=None, converter=attrs.converters.optional(Path))
    name: str | None = attrs.field(default=None, validator=_check_name)
    uuid: str | None = attrs.field(default=None, converter=_optional_uuid)
    type: str = attrs.field(default=LINUX_FS, validator=_check_type)


@attrs.frozen
class PartitionLayout:
    """Where a partition of a disk image is: `start` and `size` in bytes."""

    number: int
    start: int
    size: int
    partuuid: str
    partlabel: str | None
    type: str

    @property
    def partuuid_link(self) -> str:
        return f"/dev/disk/by-partuuid/{udev_link_name(self.partuuid)}"

    @property
    def partlabel_link(self) -> str:
        if self.partlabel is None:
            raise DiskError(f"partition {self.number} has no name, hence no by-partlabel link")
        return f"/dev/disk/by-partlabel/{udev_link_name(self.partlabel)}"


@attrs.frozen
class DiskLayout:
    """A disk image written by `make_disk()`, as `sfdisk --json` reads it back.

    `disk_id` is the GPT disk GUID (lower case) or the MBR identifier ("0x1234abcd").
    """

    path: Path
    table: Literal["gpt", "dos"]
    disk_id: str
    size: int
    partitions: tuple[PartitionLayout, ...]

    def partition(self, key: int | str) -> PartitionLayout:
        """The partition of that number, or of that name (PARTLABEL)."""
        for part in self.partitions:
            if key in (part.number, part.partlabel):
                return part
        raise KeyError(f"{self.path}: no partition {key!r}")


def udev_link_name(value: str) -> str:
    """`value` as udev writes it in a /dev/disk/by-* link name: bytes other than ASCII
    letters, digits and `#+-.:=@_` become `\\xNN` (other characters are kept)."""
    out: list[str] = []
    for char in value:
        if not char.isascii() or char.isalnum() or char in "#+-.:=@_":
            out.append(char)
        else:
            out.extend(f"\\x{byte:02x}" for byte in char.encode())
    return "".join(out)


# --- filesystems --------------------------------------------------------------------------


def _epoch() -> str:
    return os.environ.get("SOURCE_DATE_EPOCH", _DEFAULT_EPOCH)


def make_ext4(
    tree: Path | None, out: Path, *, size_mib: int, label: str, uuid: str | None = None
) -> Path:
    """A new ext4 image `out` of `size_mib` MiB holding `tree` (`mkfs.ext4 -d`; empty
    when `tree` is None). With `uuid`, the image is reproducible (see
    `vm.liveroot.make_ext4`, which does the work)."""
    if len(label.encode()) > 16:
        raise DiskError(f"ext4 label {label!r}: longer than 16 bytes")
    try:
        return liveroot.make_ext4(
            tree, Path(out), label=label, size_mib=size_mib, uuid=_optional_uuid(uuid)
        )
    except liveroot.LiverootError as exc:
        raise DiskError(str(exc)) from exc


def make_vfat(
    tree: Path | None, out: Path, *, size_mib: int, label: str, volume_id: str | None = None
) -> Path:
    """A new FAT image `out` of `size_mib` MiB (`mkfs.vfat`; FAT12/16/32 as it picks for
    the size) labelled `label` (at most 11 characters), holding the contents of `tree`
    (`mcopy -s`). `volume_id` is the serial number (`1234-ABCD` or `1234abcd`); with
    it the image is reproducible (`mkfs.fat --invariant`, file times at
    `$SOURCE_DATE_EPOCH`, default 1700000000)."""
    out = Path(out)
    cmd = ["mkfs.vfat", "-C", "-n", label]
    if volume_id is not None:
        serial = volume_id.replace("-", "")
        if not re.fullmatch(r"[0-9A-Fa-f]{8}", serial):
            raise ValueError(f"volume id {volume_id!r}: expected XXXX-XXXX or 8 hex digits")
        # --invariant fixes the times and sets a serial of its own: -i must come after.
        cmd += ["--invariant", "-i", serial]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.unlink(missing_ok=True)
    env = dict(os.environ, LC_ALL="C", MTOOLS_SKIP_CHECK="1", SOURCE_DATE_EPOCH=_epoch())
    _run([*cmd, str(out), str(size_mib * 1024)], env=env)
    entries = sorted(Path(tree).iterdir()) if tree is not None else []
    if entries:
        # No -m: every file gets SOURCE_DATE_EPOCH, not the tree's mtime.
        _run(["mcopy", "-i", str(out), "-s", "-Q", *map(str, entries), "::/"], env=env)
    return out


def _run(cmd: Sequence[str], *, env: dict[str, str] | None = None, stdin: str = "") -> str:
    proc = subprocess.run(
        list(cmd),
        input=stdin,
        capture_output=True,
        text=True,
        env=env if env is not None else dict(os.environ, LC_ALL="C"),
        check=False,
    )
    if proc.returncode != 0:
        raise DiskError(f"{cmd[0]} failed (status {proc.returncode}):\n{proc.stderr.strip()}")
    return proc.stdout


# --- partitioned disks ----------------------------------------------------------------------


def make_disk(
    out: Path, partitions: Sequence[Partition], *, table: Literal["gpt", "dos"] = "gpt"
) -> DiskLayout:
    """Write the sparse disk image `out` and return its layout.

    Partitions follow each other from 1 MiB on, each aligned to 1 MiB, with 1 MiB free
    at the end (GPT's backup table). A "dos" table holds at most 4 (primary) partitions,
    without names or chosen PARTUUIDs: those are `<disk id>-<NN>`.
    """
    out = Path(out)
    if not partitions:
        raise DiskError("a disk needs at least one partition")
    if table not in ("gpt", "dos"):
        raise DiskError(f"partition table {table!r}: expected gpt or dos")
    seed = uuid5(_NAMESPACE, out.name)
    if table == "gpt":
        disk_id = str(seed)
        header = f"label: gpt\nlabel-id: {disk_id}\nunit: sectors\nfirst-lba: 2048\n\n"
    else:
        if len(partitions) > 4:
            raise DiskError("a dos table holds at most 4 primary partitions here")
        disk_id = f"0x{int.from_bytes(seed.bytes[:4], 'big') or 1:08x}"
        header = f"label: dos\nlabel-id: {disk_id}\nunit: sectors\n\n"

    planned: list[PartitionLayout] = []
    lines: list[str] = []
    start = MIB
    for number, part in enumerate(partitions, 1):
        size = part.size_mib * MIB
        if part.image is not None and part.image.stat().st_size > size:
            raise DiskError(
                f"partition {number}: {part.image} ({part.image.stat().st_size} bytes) "
                f"does not fit in {part.size_mib} MiB"
            )
        line = f"start={start // SECTOR}, size={size // SECTOR}, "
        if table == "gpt":
            if not _GUID.match(part.type):
                raise DiskError(f"partition {number}: type {part.type!r} is not a GPT GUID")
            ptype = part.type.upper()
            partuuid = part.uuid or str(uuid5(_NAMESPACE, f"{out.name}/{number}"))
            line += f"type={ptype}, uuid={partuuid}"
            if part.name is not None:
                line += f', name="{part.name}"'
        else:
            if part.name is not None or part.uuid is not None:
                raise DiskError(f"partition {number}: a dos table has no names or PARTUUIDs")
            code = _MBR_TYPES.get(part.type.upper(), part.type)
            if not _MBR_CODE.match(code):
                raise DiskError(f"partition {number}: no MBR code for type {part.type}")
            ptype = f"{int(code, 16):x}"
            partuuid = f"{disk_id[2:]}-{number:02x}"
            line += f"type={ptype}"
        lines.append(line + "\n")
        planned.append(PartitionLayout(number, start, size, partuuid, part.name, ptype))
        start += size
    disk_size = start + MIB

    out.parent.mkdir(parents=True, exist_ok=True)
    out.unlink(missing_ok=True)
    with out.open("wb") as fh:
        fh.truncate(disk_size)
    # The table first: sfdisk then has no reason to touch the partitions' contents.
    _run(
        ["sfdisk", "--quiet", "--no-reread", "--no-tell-kernel", str(out)],
        stdin=header + "".join(lines),
    )
    layout = DiskLayout(out, table, disk_id, disk_size, tuple(planned))
    written = read_layout(out)
    if written != layout:
        raise DiskError(f"{out}: sfdisk wrote {written}, not {layout}")
    with out.open("r+b") as fh:
        for part, planned_part in zip(partitions, planned, strict=True):
            if part.image is not None:
                size = part.image.stat().st_size
                _copy_sparse(part.image, 0, size, fh.fileno(), planned_part.start)
    return layout


def read_layout(disk: Path) -> DiskLayout:
    """The layout of a partitioned image, from `sfdisk --json`."""
    disk = Path(disk)
    data = json.loads(_run(["sfdisk", "--json", str(disk)]))["partitiontable"]
    if data["label"] not in ("gpt", "dos"):
        raise DiskError(f"{disk}: unsupported partition table {data['label']!r}")
    table: Literal["gpt", "dos"] = "gpt" if data["label"] == "gpt" else "dos"
    sector = int(data.get("sectorsize", SECTOR))
    disk_id = str(data["id"]).lower()
    parts: list[PartitionLayout] = []
    for entry in data.get("partitions", []):
        number = int(re.sub(r"^.*?(\d+)$", r"\1", entry["node"]))
        # blkid (hence udev) names an MBR partition's PARTUUID <disk id>-<NN>.
        partuuid = str(entry["uuid"]).lower() if table == "gpt" else f"{disk_id[2:]}-{number:02x}"
        parts.append(
            PartitionLayout(
                number=number,
                start=int(entry["start"]) * sector,
                size=int(entry["size"]) * sector,
                partuuid=partuuid,
                partlabel=entry.get("name"),
                type=str(entry["type"]),
            )
        )
    return DiskLayout(disk, table, disk_id, disk.stat().st_size, tuple(parts))


def extract_partition(layout: DiskLayout, key: int | str, out: Path) -> Path:
    """Copy partition `key` (number or name) of the disk into the new sparse file `out`."""
    part = layout.partition(key)
    _extract(layout.path, part.start, part.size, Path(out))
    return Path(out)


def _extract(image: Path, offset: int, size: int, out: Path) -> None:
    if offset + size > image.stat().st_size:
        raise DiskError(f"{image}: {size} bytes at offset {offset} go past its end")
    out.unlink(missing_ok=True)
    with out.open("wb") as fh:
        fh.truncate(size)
        _copy_sparse(image, offset, size, fh.fileno(), 0)


def _data_extents(fd: int, start: int, end: int) -> Iterator[tuple[int, int]]:
    """(offset, length) of the stretches of `fd` between `start` and `end` that are not
    holes (a filesystem without SEEK_DATA reports the whole file as data)."""
    pos = start
    while pos < end:
        try:
            data = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError as exc:
            if exc.errno == errno.ENXIO:  # nothing but a hole up to the end of the file
                return
            raise
        if data >= end:
            return
        hole = min(os.lseek(fd, data, os.SEEK_HOLE), end)
        yield data, hole - data
        pos = hole


def _copy_sparse(src: Path, src_offset: int, length: int, dst_fd: int, dst_offset: int) -> None:
    """Copy `length` bytes of `src` from `src_offset` to `dst_fd` at `dst_offset`, writing
    only the 4 KiB blocks that are not zero. The destination must read as zeros there
    (a file just extended with truncate), so it stays sparse and the copy is quick."""
    delta = dst_offset - src_offset
    with src.open("rb") as fh:
        fd = fh.fileno()
        for start, size in _data_extents(fd, src_offset, src_offset + length):
            pos, end = start, start + size
            while pos < end:
                chunk = os.pread(fd, min(_CHUNK, end - pos), pos)
                if not chunk:
                    raise DiskError(f"{src}: shorter than expected (truncated while copied?)")
                if chunk != _ZEROS[: len(chunk)]:
                    _write_nonzero_blocks(dst_fd, chunk, pos + delta)
                pos += len(chunk)


def _write_nonzero_blocks(fd: int, chunk: bytes, offset: int) -> None:
    view = memoryview(chunk)
    run_start: int | None = None
    for i in range(0, len(chunk) + _BLOCK, _BLOCK):
        block = view[i : i + _BLOCK]
        zero = not block or block == _ZEROS[: len(block)]
        if not zero and run_start is None:
            run_start = i
        elif zero and run_start is not None:
            data = view[run_start:i]
            done = 0
            while done < len(data):
                done += os.pwrite(fd, data[done:], offset + run_start + done)
            run_start = None


# --- looking inside ext4 --------------------------------------------------------------------


@attrs.frozen
class Ext4Entry:
    """A directory entry as `debugfs ls -p` shows it (`size` is 0 for a directory)."""

    name: str
    inode: int
    mode: int
    uid: int
    gid: int
    size: int

    @property
    def is_dir(self) -> bool:
        return stat.S_ISDIR(self.mode)

    @property
    def is_file(self) -> bool:
        return stat.S_ISREG(self.mode)


_EXT_MAGIC = 0xEF53
_INCOMPAT_RECOVER = 0x4
_INCOMPAT_64BIT = 0x80
_NOT_FOUND = "File not found by ext2_lookup"
_NOT_A_DIR = "Ext2 inode is not a directory"


def _superblock(image: Path, offset: int) -> tuple[int, int]:
    """(filesystem size in bytes, s_feature_incompat) of the ext2/3/4 at `offset`."""
    with Path(image).open("rb") as fh:
        fh.seek(offset + 1024)
        sb = fh.read(1024)
    if len(sb) < 1024 or struct.unpack_from("<H", sb, 0x38)[0] != _EXT_MAGIC:
        raise DiskError(f"{image}: no ext2/3/4 filesystem at offset {offset}")
    blocks_lo, log_block = struct.unpack_from("<I", sb, 0x04)[0], sb[0x18]
    incompat = struct.unpack_from("<I", sb, 0x60)[0]
    blocks_hi = struct.unpack_from("<I", sb, 0x150)[0] if incompat & _INCOMPAT_64BIT else 0
    return ((blocks_hi << 32) | blocks_lo) * (1024 << log_block), incompat


def ext4_needs_recovery(image: Path, offset: int = 0) -> bool:
    """The filesystem's journal holds changes not yet written in place: it was not
    unmounted or remounted read-only before the guest stopped."""
    return bool(_superblock(image, offset)[1] & _INCOMPAT_RECOVER)


@contextlib.contextmanager
def _ext4_view(image: Path, offset: int) -> Iterator[Path]:
    """A file holding just the filesystem at `offset`, as the next mount would see it.

    debugfs reads a whole file from its start and never replays the journal: a
    filesystem inside a disk image is copied out first (sparse), and one that needs
    recovery is copied and its journal replayed in the copy (`e2fsck -E journal_only`).
    """
    size, incompat = _superblock(image, offset)
    if offset == 0 and not incompat & _INCOMPAT_RECOVER:
        yield Path(image)
        return
    with tempfile.TemporaryDirectory(prefix="lab-ext4-") as tmp:
        copy = Path(tmp) / "fs.img"
        _extract(Path(image), offset, size, copy)
        if incompat & _INCOMPAT_RECOVER:
            proc = subprocess.run(
                ["e2fsck", "-E", "journal_only", "-y", str(copy)],
                capture_output=True,
                text=True,
                env=dict(os.environ, LC_ALL="C"),
                check=False,
            )
            if proc.returncode not in (0, 1):  # 1: errors corrected (the replay)
                raise DiskError(f"{image}: journal replay failed:\n{proc.stdout}{proc.stderr}")
        yield copy


def _check_fs_path(path: str) -> None:
    # debugfs's command parser knows double quotes but no escapes.
    if not path.startswith("/") or '"' in path or not path.isprintable():
        raise ValueError(f"{path!r}: expected an absolute path without double quotes")


def _debugfs(image: Path, request: str) -> tuple[bytes, list[str]]:
    """debugfs's output for one read-only request, and its error lines (debugfs exits
    with 0 whatever happened)."""
    proc = subprocess.run(
        ["debugfs", "-R", request, str(image)],
        capture_output=True,
        env=dict(os.environ, LC_ALL="C"),
        check=False,
    )
    errors = [
        line.strip()
        for line in proc.stderr.decode(errors="replace").splitlines()
        if line.strip() and not re.match(r"debugfs \d", line)
    ]
    if proc.returncode != 0 and not errors:
        errors = [f"debugfs exited with status {proc.returncode}"]
    return proc.stdout, errors


def _list(image: Path, path: str) -> list[Ext4Entry] | None:
    out, errors = _debugfs(image, f'ls -p "{path}"')
    if any(_NOT_FOUND in e for e in errors):
        return None
    if any(_NOT_A_DIR in e for e in errors):
        raise DiskError(f"{path}: not a directory")
    if errors:
        raise DiskError(f"debugfs ls {path} on {image}: " + "; ".join(errors))
    entries: list[Ext4Entry] = []
    for line in out.decode("utf-8", errors="surrogateescape").splitlines():
        # /inode/mode/uid/gid/name/size/ (a name cannot hold a slash)
        fields = line.strip().split("/")
        if len(fields) != 8 or fields[5] in (".", ".."):
            continue
        _, inode, mode, uid, gid, name, size, _ = fields
        entries.append(
            Ext4Entry(name, int(inode), int(mode, 8), int(uid), int(gid), int(size or 0))
        )
    return sorted(entries, key=lambda e: e.name)


def list_dir_from_ext4(image: Path, path: str, offset: int = 0) -> list[Ext4Entry] | None:
    """The entries of directory `path` (without . and ..), sorted by name, in the ext4
    filesystem of `image` at byte `offset`; None if there is no such path."""
    _check_fs_path(path)
    with _ext4_view(Path(image), offset) as fs:
        return _list(fs, path)


def read_file_from_ext4(image: Path, path: str, offset: int = 0) -> bytes | None:
    """The contents of the regular file `path` in the ext4 filesystem of `image` at byte
    `offset`; None if there is no such file. Symbolic links are not followed."""
    _check_fs_path(path)
    parent, _, name = path.rstrip("/").rpartition("/")
    if not name:
        raise DiskError(f"{path}: not a regular file")
    with _ext4_view(Path(image), offset) as fs:
        entries = _list(fs, parent or "/")
        entry = next((e for e in entries or [] if e.name == name), None)
        if entry is None:
            return None
        if not entry.is_file:
            raise DiskError(f"{path}: not a regular file (mode {entry.mode:o})")
        data, errors = _debugfs(fs, f'cat "{path}"')
    if errors or len(data) != entry.size:
        raise DiskError(
            f"debugfs cat {path} on {image}: {len(data)} of {entry.size} bytes; "
            + "; ".join(errors)
        )
    return data
