"""Making an ext2/3/4 image: mke2fs -d into a sparse file of the planned size (extsize.py),
debugfs to set every inode's times and (as non-root) owners, then e2fsck and dumpe2fs to
check it; an image whose estimate was short is made again, larger."""

from __future__ import annotations

import re
import stat
from collections.abc import Iterable, Iterator
from pathlib import Path

import attrs

from archiso_hook.aitab import AitabEntry
from archiso_hook.build.context import Context, Job, image_uuid
from archiso_hook.build.extsize import (
    BLOCK,
    FIRST_INO,
    INODE_SIZE,
    MIB_BLOCKS,
    ExtPlan,
    TreeUsage,
    plan_ext,
    plan_ext_free,
)
from archiso_hook.build.hosttools import run_tool, tool_failure
from archiso_hook.errors import HookError, InputError
from archiso_hook.sizes import MiB, Size, human

# Pinned features (instead of the host's /etc/mke2fs.conf): the same bytes on any host with
# this e2fsprogs, and nothing an older live kernel cannot mount read-write (1.47's default
# orphan_file, for one). No resize_inode: the images are never grown in place.
_MKE2FS_CONF = """\
[defaults]
\tbase_features = sparse_super,large_file,filetype,dir_index,ext_attr
\tdefault_mntopts = acl,user_xattr
\tenable_periodic_fsck = 0
\tblocksize = 4096
\tinode_size = 256
\tinode_ratio = 16384

[fs_types]
\text3 = {
\t\tfeatures = has_journal
\t}
\text4 = {
\t\tfeatures = has_journal,extent,huge_file,flex_bg,metadata_csum,64bit,dir_nlink,extra_isize
\t}
"""


_NO_SPACE = re.compile(r"Could not allocate (block|inode)|No space left")


@attrs.frozen
class ExtStats:
    """A built filesystem's numbers, from `dumpe2fs -h`."""

    blocks: int
    free_blocks: int
    inodes: int
    free_inodes: int

    @property
    def used(self) -> int:
        return self.blocks - self.free_blocks


def build_ext(ctx: Context, job: Job, dst: Path) -> None:
    entry, usage = job.entry, job.usage
    assert entry.fs_type is not None and entry.fs_size is not None
    fs_type, size = entry.fs_type, entry.fs_size
    if not size.percent:
        plan = plan_ext(fs_type, usage, size.value // BLOCK)
        if plan is None or plan.free < 0:
            raise _does_not_fit(ctx, entry, usage, size)
        if not _make_ext(ctx, job, plan, dst):
            raise _does_not_fit(ctx, entry, usage, size)
        _report(ctx, entry, plan, _check_ext(ctx, dst))
        return

    plan = plan_ext_free(fs_type, usage, size.value)
    for attempt in range(4):
        stats = _check_ext(ctx, dst) if _make_ext(ctx, job, plan, dst) else None
        if stats is not None and stats.free_blocks * 100 >= size.value * stats.blocks:
            _report(ctx, entry, plan, stats)
            return
        if attempt == 3:
            break
        # The estimate was short: add what was missing (or a quarter if it did not fit).
        missing = (plan.blocks // 4 if stats is None else stats.used - plan.used) + MIB_BLOCKS
        usage = attrs.evolve(usage, blocks=usage.blocks + missing)
        plan = plan_ext_free(fs_type, usage, size.value)
        retry = human(plan.blocks * BLOCK)
        ctx.log(f"{entry.filename}: less than {size} free, retrying with {retry}")
    raise HookError(
        f"{ctx.where(entry)}: could not size {entry.filename} to leave {size} free "
        "after four attempts (a bug in the size estimate)"
    )


def _does_not_fit(ctx: Context, entry: AitabEntry, usage: TreeUsage, size: Size) -> InputError:
    assert entry.fs_type is not None
    need = plan_ext_free(entry.fs_type, usage, 0)
    # At least one MiB more than requested, should mke2fs disagree with the estimate.
    mib = max(-(-need.blocks // MIB_BLOCKS), size.value // MiB + 1)
    return InputError(
        f"{ctx.where(entry)}: field fs_size: {entry.name} needs at least "
        f"{mib} MiB as {entry.fs_type} ({human(usage.bytes)} of files, "
        f"about {human(need.used * BLOCK)} used with metadata), more than the {size.value // MiB} "
        "MiB requested; give a larger size or a share of free space such as 10%"
    )


def _make_ext(ctx: Context, job: Job, plan: ExtPlan, dst: Path) -> bool:
    """Make and populate the filesystem; False if the content did not fit."""
    entry, src = job.entry, job.source
    fs_uuid = str(image_uuid(ctx.basedir, entry.arch, entry.name, ctx.epoch))
    src_stat = src.stat()
    owner = "0:0" if ctx.root_owned else f"{src_stat.st_uid}:{src_stat.st_gid}"
    config = ctx.scratch / "mke2fs.conf"
    config.write_text(_MKE2FS_CONF, encoding="utf-8")
    env = {"MKE2FS_CONFIG": str(config), "E2FSPROGS_FAKE_TIME": str(ctx.epoch)}

    with dst.open("wb") as f:  # a sparse file of the exact size
        f.truncate(plan.blocks * BLOCK)
    argv = [
        "mke2fs",
        "-F",
        "-q",
        "-t",
        plan.fs_type,
        "-T",
        "default",
        "-b",
        str(BLOCK),
        "-I",
        str(INODE_SIZE),
        "-N",
        str(plan.inodes),
        "-m",
        "0",
        "-U",
        fs_uuid,
        "-E",
        f"root_owner={owner},hash_seed={fs_uuid},lazy_itable_init=0,lazy_journal_init=0",
    ]
    if plan.journal:
        argv += ["-J", f"size={plan.journal * BLOCK // MiB}"]
    argv += ["-d", str(src), str(dst), str(plan.blocks)]
    proc = run_tool(argv, ctx.log, env=env, check=False)
    if proc.returncode != 0:
        if _NO_SPACE.search(proc.stderr):
            return False
        raise tool_failure("mke2fs", proc)

    # Inodes by number, not by path: a lookup in a large linear directory (mke2fs -d makes no
    # htree) costs a scan of it, and /usr/share/man/man1 has thousands of entries.
    inodes = used_inodes(run_tool(["dumpe2fs", str(dst)], ctx.log).stdout)
    root_mode = stat.S_IFDIR | stat.S_IMODE(src.stat().st_mode)
    script = ctx.scratch / "debugfs.cmds"
    with script.open("w", encoding="ascii") as f:
        f.writelines(
            fixup_commands(inodes, ctx.epoch, root_owned=ctx.root_owned, root_mode=root_mode)
        )
    proc = run_tool(
        ["debugfs", "-w", "-f", str(script), str(dst)],
        ctx.log,
        env={"E2FSPROGS_FAKE_TIME": str(ctx.epoch)},
        stdout=False,
    )
    # debugfs exits 0 whatever its commands do; anything but its banner is an error.
    errors = [line for line in proc.stderr.splitlines() if line and not line.startswith("debugfs ")]
    if errors:
        raise HookError(f"debugfs could not fix up {dst.name}: {' / '.join(errors[-3:])}")
    return True


def used_inodes(dumpe2fs: str) -> list[int]:
    """The inodes in use, read from the per-group `Free inodes:` lists of `dumpe2fs`."""
    match = re.search(r"^Inodes per group:\s+(\d+)$", dumpe2fs, re.MULTILINE)
    if match is None:
        raise HookError("dumpe2fs printed no inode count per group")
    per_group = int(match.group(1))
    used: list[int] = []
    groups = re.findall(
        r"^Group (\d+):.*?^  Free inodes: *([-0-9, ]*)$", dumpe2fs, re.MULTILINE | re.DOTALL
    )
    for group, ranges in groups:
        first = int(group) * per_group + 1
        free: set[int] = set()
        for item in filter(None, (r.strip() for r in ranges.split(","))):
            low, _, high = item.partition("-")
            free.update(range(int(low), int(high or low) + 1))
        used += [ino for ino in range(first, first + per_group) if ino not in free]
    return used


def fixup_commands(
    inodes: Iterable[int], epoch: int, *, root_owned: bool, root_mode: int
) -> Iterator[str]:
    """debugfs commands: every inode's times, (non-root) owners, and the root's mode.

    Inodes 1 and 3..10 are reserved (the journal, bad blocks...) and stay as mke2fs made them.
    """
    yield f"sif <2> mode 0{root_mode:o}\n"
    for ino in inodes:
        if ino != 2 and ino < FIRST_INO:
            continue
        for field in ("atime", "mtime", "ctime"):
            yield f"sif <{ino}> {field} @{epoch}\n"
        if root_owned:
            yield f"sif <{ino}> uid 0\nsif <{ino}> gid 0\n"


def _check_ext(ctx: Context, image: Path) -> ExtStats:
    run_tool(["e2fsck", "-fn", str(image)], ctx.log)
    return ext_stats(run_tool(["dumpe2fs", "-h", str(image)], ctx.log).stdout)


def ext_stats(dumpe2fs_h: str) -> ExtStats:
    fields = dict(line.split(":", 1) for line in dumpe2fs_h.splitlines() if ":" in line)
    number = {k.strip(): v.strip() for k, v in fields.items()}
    return ExtStats(
        blocks=int(number["Block count"]),
        free_blocks=int(number["Free blocks"]),
        inodes=int(number["Inode count"]),
        free_inodes=int(number["Free inodes"]),
    )


def _report(ctx: Context, entry: AitabEntry, plan: ExtPlan, stats: ExtStats) -> None:
    share = 100 * stats.free_blocks / stats.blocks
    ctx.log(
        f"{entry.name}.fs: {plan.fs_type} of {human(plan.blocks * BLOCK)}, "
        f"{human(stats.free_blocks * BLOCK)} free ({share:.1f}%), "
        f"{stats.free_inodes} of {stats.inodes} inodes free"
    )
