"""The ext2/3/4 geometry: what a tree takes in a filesystem with the builder's parameters,
and what mke2fs's metadata takes (ext_geometry mirrors its arithmetic), so that plan_ext_free
gives the smallest whole-MiB image with a share of its blocks free.

Pure arithmetic, but for scan_tree, which reads the tree. Checked against mke2fs and
dumpe2fs in the tests.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable
from pathlib import Path

import attrs

from archiso_hook.build.hosttools import reason
from archiso_hook.errors import HookError, InputError
from archiso_hook.sizes import MiB

EXT_TYPES = ("ext2", "ext3", "ext4")
BLOCK = 4096
_BLOCKS_PER_GROUP = 8 * BLOCK  # one block bitmap block per group
INODE_SIZE = 256
_INODE_RATIO = 16384  # bytes per inode at least, mke2fs's default
FIRST_INO = 11  # inodes 1..10 are reserved, 11 is lost+found, the tree starts at 12
_LOST_FOUND_BLOCKS = 16 * 1024 // BLOCK  # mke2fs makes lost+found 16 KiB
MIB_BLOCKS = MiB // BLOCK
_EXTENT_MAX = 32768  # blocks one extent maps
_EXTENTS_PER_LEAF = (BLOCK - 12) // 12
_ADDRS_PER_BLOCK = BLOCK // 4
_INLINE_XATTR_SPACE = INODE_SIZE - 128 - 32  # after the base inode and i_extra_isize
_FAST_SYMLINK_MAX = 59  # shorter targets are stored in the inode


@attrs.frozen
class TreeUsage:
    """What a source tree takes in a filesystem."""

    inodes: int  # inodes besides the root directory's (hard links count once)
    blocks: int  # ext blocks: data, directories (the root's too), mapping and xattr blocks
    bytes: int  # apparent size of the files (for messages)
    newest_mtime: int


def scan_tree(root: Path, fs_type: str | None = None) -> TreeUsage:
    """Measure the tree at `root`; `blocks` is computed only for ext2/3/4."""
    ext = fs_type in EXT_TYPES
    extents = fs_type == "ext4"
    inodes = blocks = size = 0
    newest = int(root.stat().st_mtime)
    seen: set[tuple[int, int]] = set()
    stack: list[tuple[Path, bool]] = [(root, True)]
    while stack:
        directory, is_root = stack.pop()
        names: list[int] = [len(b"lost+found")] if is_root else []
        for entry in _listdir(directory):
            st = entry.stat(follow_symlinks=False)
            newest = max(newest, int(st.st_mtime))
            names.append(len(os.fsencode(entry.name)))
            if not stat.S_ISDIR(st.st_mode) and st.st_nlink > 1:
                if (st.st_dev, st.st_ino) in seen:
                    continue
                seen.add((st.st_dev, st.st_ino))
            inodes += 1
            if stat.S_ISDIR(st.st_mode):
                stack.append((Path(entry.path), False))
                continue
            if stat.S_ISREG(st.st_mode):
                size += st.st_size
                if ext:
                    data = -(-st.st_size // BLOCK)
                    blocks += data + mapping_blocks(data, extents=extents)
            elif stat.S_ISLNK(st.st_mode) and ext and st.st_size > _FAST_SYMLINK_MAX:
                blocks += 1
            if ext:
                blocks += _xattr_blocks(entry.path)
        if ext:
            count = dir_blocks(names, csum=extents)
            # Directory blocks are added as the directory fills, between its files' data.
            blocks += count + mapping_blocks(count, extents=extents, fragmented=True)
            if not is_root:
                blocks += _xattr_blocks(str(directory))
    return TreeUsage(inodes=inodes, blocks=blocks, bytes=size, newest_mtime=newest)


def _listdir(directory: Path) -> list[os.DirEntry[str]]:
    try:
        with os.scandir(directory) as it:
            return sorted(it, key=lambda e: e.name)
    except OSError as e:
        raise InputError(f"cannot read the source directory {directory}: {reason(e)}") from None


def dir_blocks(name_lengths: Iterable[int], *, csum: bool) -> int:
    """Blocks of a linear directory holding these names, added in order.

    mke2fs -d links entries first-fit (libext2fs ext2fs_link) and adds a block when none has
    room; entries are 8 bytes plus the name padded to 4; metadata_csum reserves a 12-byte tail.
    """
    usable = BLOCK - (12 if csum else 0)
    free = [usable - 24]  # "." and ".."
    first = 0  # blocks before this one have no room for even the shortest entry
    for length in name_lengths:
        rec_len = 8 + (length + 3) // 4 * 4
        for i in range(first, len(free)):
            if free[i] >= rec_len:
                free[i] -= rec_len
                break
        else:
            free.append(usable - rec_len)
        while first < len(free) and free[first] < 12:
            first += 1
    return len(free)


def mapping_blocks(data: int, *, extents: bool, fragmented: bool = False) -> int:
    """Blocks that map `data` blocks: extent tree leaves (ext4) or indirect blocks (ext2/3)."""
    if extents:
        # mke2fs writes a file in one go: contiguous but for the block groups' metadata it
        # crosses (allow one break per full extent). The inode holds 4 extents itself.
        count = data if fragmented else 2 * -(-data // _EXTENT_MAX)
        return 0 if count <= 4 else -(-count // _EXTENTS_PER_LEAF)
    per = _ADDRS_PER_BLOCK
    left = data - 12  # direct blocks
    total = 0
    if left > 0:  # single indirect
        total += 1
        left -= per
    if left > 0:  # double indirect
        total += 1 + -(-min(left, per * per) // per)
        left -= per * per
    if left > 0:  # triple indirect
        leaves = -(-left // per)
        total += 1 + -(-leaves // per) + leaves
    return total


_XATTR_PREFIXES = (
    "user.",
    "trusted.",
    "security.",
    "system.posix_acl_access",
    "system.posix_acl_default",
    "system.",
)


def _xattr_blocks(path: str) -> int:
    """1 if the file's extended attributes do not fit in its inode, else 0."""
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:
        return 0
    need = 8  # entry table header and terminator
    for name in names:
        try:
            value = len(os.getxattr(path, name, follow_symlinks=False))
        except OSError:
            continue
        short = next((name[len(p) :] for p in _XATTR_PREFIXES if name.startswith(p)), name)
        need += 16 + (len(short) + 3) // 4 * 4 + (value + 3) // 4 * 4
    return 0 if not names or need <= _INLINE_XATTR_SPACE else 1


def default_journal_blocks(blocks: int) -> int:
    """libext2fs's default journal size for a filesystem of `blocks` 4 KiB blocks."""
    for limit, journal in (
        (32768, 1024),
        (256 * 1024, 4096),
        (512 * 1024, 8192),
        (4096 * 1024, 16384),
        (8192 * 1024, 32768),
        (16384 * 1024, 65536),
        (32768 * 1024, 131072),
    ):
        if blocks < limit:
            return journal
    return 262144


_MIN_JOURNAL = 1024  # blocks; mke2fs refuses less


def _has_super(group: int) -> bool:
    """sparse_super: backups in groups 0, 1 and powers of 3, 5 and 7."""
    if group <= 1:
        return True
    for base in (3, 5, 7):
        power = base
        while power < group:
            power *= base
        if power == group:
            return True
    return False


@attrs.frozen
class ExtGeometry:
    """What mke2fs makes of a block count, an inode count and a journal size."""

    blocks: int  # block count (mke2fs drops a last group too small for its metadata)
    inodes: int  # inode count (mke2fs fills the inode table blocks)
    overhead: int  # blocks in use before population, less the root directory


def ext_geometry(fs_type: str, blocks: int, inodes: int, journal: int) -> ExtGeometry | None:
    """Mirror of libext2fs ext2fs_initialize() for our parameters; None if mke2fs would refuse."""
    desc_size = 64 if fs_type == "ext4" else 32  # 64bit
    while True:
        groups = -(-blocks // _BLOCKS_PER_GROUP)
        desc_blocks = -(-groups * desc_size // BLOCK)
        per_group = -(-inodes // groups)
        if per_group > 8 * BLOCK:
            return None  # more inodes than bitmaps hold: needs more groups
        table = -(-per_group * INODE_SIZE // BLOCK)
        per_group = (table * BLOCK // INODE_SIZE) & ~7
        table = -(-per_group * INODE_SIZE // BLOCK)
        last = 2 + table + (1 + desc_blocks if _has_super(groups - 1) else 0)
        rem = blocks % _BLOCKS_PER_GROUP
        if groups == 1 and rem and rem < last:
            return None
        if rem and rem < last + 50:
            blocks -= rem
            continue
        break
    metadata = groups * (2 + table) + sum(1 + desc_blocks for g in range(groups) if _has_super(g))
    if journal:
        # mke2fs refuses a journal over half the free space (checked before its tables).
        if journal * 2 > blocks - metadata:
            return None
        metadata += journal + mapping_blocks(journal, extents=fs_type == "ext4")
    return ExtGeometry(
        blocks=blocks, inodes=per_group * groups, overhead=metadata + _LOST_FOUND_BLOCKS
    )


@attrs.frozen
class ExtPlan:
    """The mke2fs parameters for one image and what they are predicted to give."""

    fs_type: str
    blocks: int  # image size in blocks
    inodes: int  # mke2fs -N
    journal: int  # journal blocks, 0 for none
    geometry: ExtGeometry
    used: int  # blocks in use after population

    @property
    def free(self) -> int:
        return self.geometry.blocks - self.used


def plan_ext(fs_type: str, usage: TreeUsage, blocks: int, percent: int = 0) -> ExtPlan | None:
    """Parameters for an image of `blocks` blocks; None if mke2fs cannot make one that small.

    Inodes: mke2fs's default density, and at least `percent` of them free too. The inode
    tables and the journal each take at most a quarter of the share that may be used, or a
    high percentage could never be met (the default density alone takes 1.6%).
    """
    used_inodes = FIRST_INO + usage.inodes
    ratio = max(_INODE_RATIO, 25 * BLOCK // (100 - percent))
    inodes = max(blocks * BLOCK // ratio, -(-used_inodes * 100 // (100 - percent)), FIRST_INO + 1)
    journal = 0
    if fs_type != "ext2":
        cap = blocks * (100 - percent) // 400 // MIB_BLOCKS * MIB_BLOCKS  # -J takes MiB
        journal = max(_MIN_JOURNAL, min(default_journal_blocks(blocks), cap))
    geometry = ext_geometry(fs_type, blocks, inodes, journal)
    if geometry is None:
        return None
    return ExtPlan(
        fs_type=fs_type,
        blocks=blocks,
        inodes=inodes,
        journal=journal,
        geometry=geometry,
        used=geometry.overhead + usage.blocks,
    )


def plan_ext_free(fs_type: str, usage: TreeUsage, percent: int) -> ExtPlan:
    """The smallest whole-MiB image with at least `percent`% of its blocks free."""
    blocks = -(-usage.blocks * 100 // (100 - percent))
    while True:
        blocks = max(MIB_BLOCKS, -(-blocks // MIB_BLOCKS) * MIB_BLOCKS)
        plan = plan_ext(fs_type, usage, blocks, percent)
        if plan is not None and plan.free * 100 >= percent * plan.geometry.blocks:
            return plan
        # Metadata grows with the size, so the size needed now is a lower bound.
        need = 0 if plan is None else -(-plan.used * 100 // (100 - percent))
        blocks = max(need, blocks + MIB_BLOCKS)
        if blocks >= 1 << 32:
            raise HookError(f"no {fs_type} filesystem leaves {percent}% free (a bug)")


# --------------------------------------------------------------------------- ext build
