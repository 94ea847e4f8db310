"""aitab: the table of images on a medium (`img mnt arch sfs_comp fs_type fs_size`).

    # <img>      <mnt>        <arch>  <sfs_comp> <fs_type> <fs_size>
    root-image   /            x86_64  xz         ext4      50%
    usr-share    /usr/share   any     xz         ext4      50%
    core-pkgs    /repo/pkg    x86_64  xz         none      0

Every problem is an InputError `FILE:LINE: what is wrong`.
"""

from __future__ import annotations

import enum
import posixpath
import re

import attrs

from archiso_hook.errors import InputError
from archiso_hook.sizes import Size


class ImageType(enum.StrEnum):
    SFS = "sfs"  # squashfs, mounted read-only
    FS_SFS = "fs.sfs"  # squashfs holding one filesystem image <img>.fs
    FS = "fs"  # a plain filesystem image

    @property
    def snapshot(self) -> bool:
        """Whether writes go through a dm-snapshot (only filesystem images have one)."""
        return self is not ImageType.SFS


COMPRESSIONS = ("gzip", "lzo", "lz4", "xz", "zstd")
FILESYSTEMS = ("ext4", "ext3", "ext2", "xfs", "btrfs")
ARCHES = ("i686", "x86_64", "any")

_NAME_RE = re.compile(r"^[A-Za-z0-9_+-][A-Za-z0-9_.+-]*$")
FIELDS = ("img", "mnt", "arch", "sfs_comp", "fs_type", "fs_size")
# Plain decimal digits: str.isdigit() also takes '²', which int() refuses.
_NUMBER_RE = re.compile(r"[0-9]{1,20}")


@attrs.frozen
class AitabEntry:
    """One image line of an aitab."""

    name: str
    mount: str
    arch: str
    sfs_comp: str | None  # None: not in a squashfs
    fs_type: str | None  # None: a plain squashfs, no filesystem image inside
    fs_size: Size | None  # build-time size of the filesystem image; None for .sfs
    line: int

    @property
    def type(self) -> ImageType:
        if self.fs_type is None:
            return ImageType.SFS
        return ImageType.FS if self.sfs_comp is None else ImageType.FS_SFS

    @property
    def filename(self) -> str:
        """The file on the medium: <img>.sfs, <img>.fs.sfs or <img>.fs."""
        return f"{self.name}.{self.type}"


def parse_aitab(text: str, source: str = "aitab") -> list[AitabEntry]:
    """Parse an aitab's text; `source` names it in errors (the file's path)."""
    entries: list[AitabEntry] = []
    # Lines end at \n (a file read in text mode has no other line ends): str.splitlines()
    # also breaks at \f, \x1c, \x85, \u2028, ..., which would put errors on wrong lines.
    for lineno, raw in enumerate(text.split("\n"), start=1):
        fields = raw.split()
        for i, field in enumerate(fields):  # a word starting with '#' starts a comment
            if field.startswith("#"):
                fields = fields[:i]
                break
        if not fields:
            continue
        where = f"{source}:{lineno}"
        entry = _parse_line(fields, where, lineno)
        for other in entries:
            # Images of one machine's boot: same arch, or either of them `any`.
            if "any" not in (other.arch, entry.arch) and other.arch != entry.arch:
                continue
            if other.mount == entry.mount:
                raise InputError(
                    f"{where}: field mnt: {entry.mount} is already the mount point "
                    f"of line {other.line}"
                )
            if other.name == entry.name:
                raise InputError(
                    f"{where}: field img: {entry.name} is already the image of line {other.line}"
                )
        entries.append(entry)
    return entries


def _parse_line(fields: list[str], where: str, lineno: int) -> AitabEntry:
    if len(fields) < 5:
        missing = ", ".join(FIELDS[len(fields) :])
        raise InputError(f"{where}: missing field(s) {missing}: expected `{' '.join(FIELDS)}`")
    if len(fields) > 6:
        raise InputError(f"{where}: {len(fields)} fields, expected 6: `{' '.join(FIELDS)}`")
    name, mount, arch, sfs_comp, fs_type = fields[:5]
    fs_size = fields[5] if len(fields) == 6 else None

    if not _NAME_RE.match(name) or len(name) > 64:
        raise InputError(
            f"{where}: field img: {name!r} is not a plain file name "
            "(expected letters, digits, _ + - . ; no '/', at most 64 characters)"
        )
    trimmed = mount.rstrip("/") or "/"
    if not mount.startswith("/") or "//" in mount or posixpath.normpath(mount) != trimmed:
        raise InputError(
            f"{where}: field mnt: {mount!r} is not an absolute, normalized path "
            "(expected e.g. / or /usr/share, without '..', '.' or '//')"
        )
    if any(not c.isprintable() for c in mount):
        raise InputError(f"{where}: field mnt: {mount!r} contains control characters")
    if arch not in ARCHES:
        raise InputError(
            f"{where}: field arch: unknown architecture {arch!r}, expected one of "
            f"{' | '.join(ARCHES)}"
        )
    if sfs_comp != "none" and sfs_comp not in COMPRESSIONS:
        raise InputError(
            f"{where}: field sfs_comp: unknown compression {sfs_comp!r}, expected one "
            f"of {' | '.join((*COMPRESSIONS, 'none'))}"
        )
    if fs_type != "none" and fs_type not in FILESYSTEMS:
        raise InputError(
            f"{where}: field fs_type: unknown filesystem {fs_type!r}, expected one of "
            f"{' | '.join((*FILESYSTEMS, 'none'))}"
        )
    if sfs_comp == "none" and fs_type == "none":
        raise InputError(
            f"{where}: sfs_comp and fs_type are both none: an image must be a "
            "squashfs, a filesystem image, or a filesystem image in a squashfs"
        )

    size: Size | None = None
    if fs_type == "none":
        if fs_size is not None and fs_size not in {"0", "-"} and not _valid_fs_size(fs_size):
            raise InputError(
                f"{where}: field fs_size: {fs_size!r} is not valid: expected 0 or - "
                "for a squashfs image (fs_type none)"
            )
    else:
        if fs_size is None:
            raise InputError(
                f"{where}: missing field fs_size: expected a size in MiB or 1%..99% "
                "free space for a filesystem image"
            )
        size = _parse_fs_size(fs_size, where)

    return AitabEntry(
        name=name,
        mount=trimmed,
        arch=arch,
        sfs_comp=None if sfs_comp == "none" else sfs_comp,
        fs_type=None if fs_type == "none" else fs_type,
        fs_size=size,
        line=lineno,
    )


def _valid_fs_size(text: str) -> bool:
    try:
        _parse_fs_size(text, "")
    except InputError:
        return False
    return True


def _parse_fs_size(text: str, where: str) -> Size:
    """fs_size: an absolute size in MiB, or N% of free space to leave (1..99)."""
    if text.endswith("%") and _NUMBER_RE.fullmatch(text[:-1]) and 1 <= int(text[:-1]) <= 99:
        return Size(int(text[:-1]), percent=True)
    if _NUMBER_RE.fullmatch(text) and 0 < int(text) <= 1 << 24:
        return Size(int(text) * 1024 * 1024)
    raise InputError(
        f"{where}: field fs_size: {text!r} is not valid: expected a size in MiB "
        "(1..16777216) or the share of free space to leave, 1%..99%"
    )
