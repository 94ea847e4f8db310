"""One image of the aitab, written to the medium: a squashfs (mksquashfs), a filesystem
image (ext2/3/4: extimage.py; btrfs: mkfs.btrfs --rootdir), or a filesystem image in a
squashfs; with its checksum file beside it."""

from __future__ import annotations

import re
import shutil
import tempfile
from pathlib import Path

from archiso_hook.aitab import AitabEntry, ImageType
from archiso_hook.build.context import BuiltImage, Context, Job, image_uuid
from archiso_hook.build.extimage import build_ext
from archiso_hook.build.extsize import BLOCK, EXT_TYPES
from archiso_hook.build.hosttools import Log, run_tool, search_path
from archiso_hook.build.imagesums import write_checksum
from archiso_hook.errors import HookError, InputError
from archiso_hook.sizes import MiB, human


def build_image(ctx: Context, job: Job, directory: Path) -> BuiltImage:
    entry = job.entry
    directory.mkdir(parents=True, exist_ok=True)
    dst = directory / entry.filename
    ctx.log(f"building {entry.filename} ({_describe(entry)}) from {job.source}")
    part = dst.with_name(f".{dst.name}.part")
    part.unlink(missing_ok=True)
    try:
        if entry.type is ImageType.SFS:
            assert entry.sfs_comp is not None
            _mksquashfs(ctx, job.source, part, entry.sfs_comp)
        elif entry.type is ImageType.FS:
            _build_fs(ctx, job, part)
        else:
            assert entry.sfs_comp is not None
            holder = Path(tempfile.mkdtemp(dir=ctx.scratch))
            inner = holder / f"{entry.name}.fs"
            _build_fs(ctx, job, inner)
            # Only the directory's attributes and the one file end up in the squashfs.
            holder.chmod(0o755)
            inner.chmod(0o644)
            _mksquashfs(ctx, holder, part, entry.sfs_comp)
            shutil.rmtree(holder)
        part.replace(dst)
    finally:
        part.unlink(missing_ok=True)
    checksum = write_checksum(dst) if ctx.per_image_checksums else dst
    size = dst.stat().st_size
    ctx.log(f"wrote {dst} ({human(size)})")
    return BuiltImage(entry.name, entry.arch, entry.type, dst, size, checksum)


def _describe(entry: AitabEntry) -> str:
    if entry.type is ImageType.SFS:
        return f"squashfs {entry.sfs_comp}"
    assert entry.fs_size is not None
    size = f"{entry.fs_size} free" if entry.fs_size.percent else human(entry.fs_size.value)
    if entry.type is ImageType.FS:
        return f"{entry.fs_type}, {size}"
    return f"{entry.fs_type} in squashfs {entry.sfs_comp}, {size}"


def _mksquashfs(ctx: Context, src: Path, dst: Path, comp: str) -> None:
    # mksquashfs sorts directories and is deterministic across thread counts; times and
    # (as non-root) owners are the only host-dependent input left.
    argv = [
        "mksquashfs",
        str(src),
        str(dst),
        "-noappend",
        "-comp",
        comp,
        "-mkfs-time",
        str(ctx.epoch),
        "-all-time",
        str(ctx.epoch),
        "-exit-on-error",
        "-no-progress",
        "-quiet",
    ]
    if ctx.root_owned:
        argv.append("-all-root")
    run_tool(argv, ctx.log)


def _build_fs(ctx: Context, job: Job, dst: Path) -> None:
    fs_type = job.entry.fs_type
    if fs_type in EXT_TYPES:
        build_ext(ctx, job, dst)
    elif fs_type == "btrfs":
        _build_btrfs(ctx, job, dst)
    else:
        raise InputError(
            f"{ctx.where(job.entry)}: cannot make {fs_type} images on this host: "
            f"the builder makes ext2, ext3, ext4 and (with mkfs.btrfs --rootdir) "
            "btrfs"
        )


# --------------------------------------------------------------------------- btrfs


def _build_btrfs(ctx: Context, job: Job, dst: Path) -> None:
    """mkfs.btrfs --rootdir, where available (not reproducible: btrfs-progs stamps times)."""
    entry, usage = job.entry, job.usage
    assert entry.fs_size is not None
    if not _btrfs_rootdir(ctx.log):
        raise InputError(
            f"{ctx.where(entry)}: cannot make btrfs images on this host: needs "
            "mkfs.btrfs with --rootdir (Debian package btrfs-progs)"
        )
    size = entry.fs_size
    fs_uuid = str(image_uuid(ctx.basedir, entry.arch, entry.name, ctx.epoch))
    # A first guess (btrfs duplicates its metadata and needs 114 MiB at least); mkfs.btrfs
    # itself enlarges a file too small for the tree, so the result is checked, not computed.
    nbytes = size.value
    if size.percent:
        content = usage.bytes + 2 * usage.inodes * BLOCK
        nbytes = max(114 * MiB, content * 100 // (100 - size.value))
    for _attempt in range(4):
        nbytes = -(-nbytes // MiB) * MiB
        with dst.open("wb") as f:
            f.truncate(nbytes)
        run_tool(
            ["mkfs.btrfs", "-q", "-f", "-U", fs_uuid, "--rootdir", str(job.source), str(dst)],
            ctx.log,
        )
        dump = run_tool(["btrfs", "inspect-internal", "dump-super", str(dst)], ctx.log).stdout
        total, used = (_dump_super_field(dump, key) for key in ("total_bytes", "bytes_used"))
        if not size.percent and dst.stat().st_size > nbytes:
            raise InputError(
                f"{ctx.where(entry)}: field fs_size: {entry.name} needs {human(total)} as btrfs "
                f"({human(usage.bytes)} of files), more than the {size.value // MiB} MiB requested"
            )
        if not size.percent or (total - used) * 100 >= size.value * total:
            ctx.log(f"{entry.name}.fs: btrfs of {human(total)}, {human(total - used)} free")
            return
        nbytes = max(nbytes * 5 // 4, used * 100 // (100 - size.value) + 16 * MiB)
    raise HookError(f"{ctx.where(entry)}: could not size {entry.filename} to leave {size} free")


def _btrfs_rootdir(log: Log) -> bool:
    """Whether this host's mkfs.btrfs can populate a filesystem from a directory."""
    if shutil.which("mkfs.btrfs", path=search_path()) is None:
        return False
    proc = run_tool(["mkfs.btrfs", "--help"], log, check=False)
    return "--rootdir" in proc.stdout + proc.stderr


def _dump_super_field(dump: str, key: str) -> int:
    match = re.search(rf"^{key}\s+(\d+)", dump, re.MULTILINE)
    if match is None:
        raise HookError(f"btrfs inspect-internal dump-super printed no {key}")
    return int(match.group(1))


# --------------------------------------------------------------------------- ISO
