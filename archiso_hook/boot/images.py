"""The steps that turn the aitab's images into the live root's parts: PrepareImages (the
checks and the copytoram decision; the copy itself is prepare.py's), AttachLoop,
SizeCowFiles, CreateCowFile and CreateSnapshot."""

from __future__ import annotations

import errno
from typing import TYPE_CHECKING

from archiso_hook.boot import cowfile, decisions, procfs, resources
from archiso_hook.cmdline import CopyMode, CowMode
from archiso_hook.cowsize import cow_need, cow_sizes
from archiso_hook.errors import HookError, KernelError
from archiso_hook.kernel import dm
from archiso_hook.kernel.klog import KernelLogWindow
from archiso_hook.paths import BOOTMNT, COWSPACE, DM_UUID_PREFIX
from archiso_hook.sizes import human
from archiso_hook.steps import (
    AttachLoop,
    CreateCowFile,
    CreateSnapshot,
    PrepareImages,
    SizeCowFiles,
)

if TYPE_CHECKING:
    from archiso_hook.boot.executor import Boot


def prepare_images(boot: Boot, step: PrepareImages) -> None:
    """Every image is there; copied to RAM and/or verified if asked (and possible)."""
    for path, line in zip(step.images, step.lines, strict=True):
        if not boot.kernel.exists(path):
            raise HookError(f"image {path} (aitab line {line}) does not exist on the medium")
    sizes = [boot.kernel.file_size(path) for path in step.images]
    copy = step.copy is not CopyMode.N and _copy_is_possible(boot, step, sum(sizes))
    if copy or step.verify:
        boot.call("archiso_hook.boot.prepare:copy_and_verify", boot, step, sizes, copy=copy)


def _copy_is_possible(boot: Boot, step: PrepareImages, needed: int) -> bool:
    """Whether to copy, said out loud with the numbers when the answer is no."""
    memory = procfs.meminfo()
    optical = None
    if step.copy is CopyMode.AUTO:
        optical = _optical_medium(boot)
    reason = decisions.copy_refusal(
        step.copy, needed, step.copy_size.resolve(memory.total), memory, optical
    )
    mode = f"copytoram={step.copy}"
    if reason is None:
        boot.log.info(
            f"{mode}: copying {human(needed)} of images to RAM "
            f"({human(memory.available)} available)"
        )
        return True
    message = f"{mode}: not copying to RAM: {reason}; booting from the medium"
    if step.copy is CopyMode.Y:
        boot.log.warning(message)
    else:
        boot.log.info(message)
    return False


def _optical_medium(boot: Boot) -> str | None:
    """The medium's device if it is an optical drive."""
    device = boot.refs.get("isodev") or boot.refs.get("medium")
    if device is None:
        device = (boot.kernel.mounted(BOOTMNT) or (None, None))[0]
    if device is None or not isinstance(device, str):
        return None  # a loop device: an ISO file
    return device if boot.kernel.is_optical(device) else None


def attach_loop(boot: Boot, step: AttachLoop) -> None:
    backing = boot.image_paths.get(step.backing, step.backing)  # a copy in RAM?
    if step.expect_fstype is not None:
        check_image(boot, backing, step.expect_fstype, step.aitab_line)
    kernel = boot.kernel
    device = kernel.attach_loop(backing, read_only=step.read_only)
    boot.refs[step.ref] = device
    boot.acquired(
        resources.Loop(device.path, backing, step.read_only), lambda: kernel.detach_loop(device)
    )
    boot.log.info(f"attached {backing} to {device.path}{' read-only' if step.read_only else ''}")


def check_image(boot: Boot, path: str, fstype: str, aitab_line: int | None) -> None:
    """Is it there, readable, of the right type and whole? Said plainly, before use."""
    where = f" (aitab line {aitab_line})" if aitab_line else ""
    if not boot.kernel.exists(path):
        raise HookError(f"image {path}{where} does not exist on the medium")
    with KernelLogWindow() as klog:
        try:
            head = boot.kernel.read_head(path)
        except OSError as e:
            raise KernelError(
                f"cannot read {path}{where}: {e.strerror}: the image or the medium is damaged",
                e.errno or 0,
                kernel_log=klog.lines(),
                hint="rewrite the medium; a scratched disc or failing stick reads like this",
            ) from None
    problem = decisions.image_problem(f"{path}{where}", head, fstype, boot.kernel.file_size(path))
    if problem is not None:
        raise HookError(problem.message, hint=problem.hint)


def size_cow_files(boot: Boot, step: SizeCowFiles) -> None:
    kernel = boot.kernel
    fstype = (kernel.mounted(step.space) or ("", ""))[1]
    kept = {
        ref: _kept_cow_file(path, step.space)
        for ref, path in zip(step.origins, step.files, strict=True)
        if step.reuse and kernel.exists(path, follow=False)
    }
    room = cowfile.room_for_new_files(kernel.free_bytes(step.space), list(kept.values()))
    if kept and room < 0:
        boot.log.warning(
            f"the kept COW files can grow {human(-room)} beyond the free space of "
            f"{step.space}; if it fills, their snapshots become invalid"
        )
    new = [ref for ref in step.origins if ref not in kept]
    origins = {ref: boot.loop(ref).size() for ref in step.origins}
    sizes = cow_sizes([origins[r] for r in new], max(room, 0), step.mode, step.chunk_sectors)
    if fstype in cowfile.NO_SPARSE_FILES:
        chunk = step.chunk_sectors * 512
        sizes = [min(size, cowfile.FAT_MAX_FILE // chunk * chunk) for size in sizes]
        if new:
            boot.log.warning(
                f"{fstype} has no sparse files: the new COW files take "
                f"{human(sum(sizes))} of {step.space} from now on"
            )
    boot.cow_bytes.update(zip(new, sizes, strict=True))
    for ref in step.origins:
        name, origin = ref.rsplit(".", 1)[0], origins[ref]
        size = kept[ref].apparent if ref in kept else boot.cow_bytes[ref]
        covered = min(100.0, 100.0 * size / origin) if origin else 100.0
        boot.log.info(
            f"{name}: {human(size)} of writable space in {step.space} "
            f"(origin {human(origin)}, {covered:.0f}% of it can change)"
        )


def _kept_cow_file(path: str, space: str) -> cowfile.Usage:
    cowfile.check_kept(path, space)
    return cowfile.Usage.of(path)


def create_cow_file(boot: Boot, step: CreateCowFile) -> None:
    kernel = boot.kernel
    exists = kernel.exists(step.path, follow=False)  # a symlink is there too
    if exists and step.reuse:
        usage = _kept_cow_file(step.path, COWSPACE)
        cowfile.check_reusable(step.path, cowfile.read_header(step.path))
        boot.log.info(
            f"reusing the persistent COW file {step.path} "
            f"({human(usage.allocated)} used of {human(usage.apparent)})"
        )
        # Kept: recorded for `status` and the growth policy, never removed.
        boot.acquired(resources.CowFile(step.path, usage.apparent, kept=True), None)
        return
    if exists:
        why = "cow_reset=y" if boot.options.cow_reset else "a transient store (N) was asked for"
        boot.log.info(f"starting {step.path} over: {why}")
        kernel.remove_file(step.path)
    size = boot.cow_bytes[step.origin]
    kernel.create_file(step.path, size)  # sparse: costs space only when written
    boot.acquired(
        resources.CowFile(step.path, size, kept=False), lambda: kernel.remove_file(step.path)
    )


def create_snapshot(boot: Boot, step: CreateSnapshot) -> None:
    kernel = boot.kernel
    origin, cow = boot.loop(step.origin), boot.loop(step.cow)
    if not boot.dm_announced:
        boot.dm_announced = True
        boot.log.info("device-mapper driver " + ".".join(map(str, kernel.dm_version())))
    sectors = origin.size() // 512
    table = dm.Target(
        0, sectors, "snapshot", f"{origin.devno} {cow.devno} {step.mode} {step.chunk_sectors}"
    )
    devno = kernel.dm_create(step.name, DM_UUID_PREFIX + step.name)
    snapshot = resources.Snapshot(
        name=step.name,
        device=f"/dev/mapper/{step.name}",
        devno=devno,
        origin=origin.path,
        cow=cow.path,
        mode=str(step.mode),
        chunk_sectors=step.chunk_sectors,
        table=str(table),
        cow_file=cow.backing,
        cow_need=cow_need(sectors * 512, step.mode, step.chunk_sectors),
    )
    boot.acquired(snapshot, lambda: kernel.dm_remove(step.name))
    try:
        kernel.dm_load(step.name, table)
    except KernelError as e:
        # PO is the default in RAM "where the kernel supports it" (Linux 4.3+).
        if not (
            step.mode is CowMode.PO
            and boot.options.cow_persistent is None
            and e.errno == errno.EINVAL
        ):
            raise
        boot.log.warning("this kernel's dm-snapshot has no overflow mode (PO); using N")
        table = dm.Target(
            0, sectors, "snapshot", f"{origin.devno} {cow.devno} N {step.chunk_sectors}"
        )
        kernel.dm_load(step.name, table)
    devno = kernel.dm_resume(step.name)
    boot.log.info(f"created /dev/mapper/{step.name} ({devno}): {table}")
    # A persistent store the kernel found damaged loads fine and then fails every I/O.
    state = kernel.dm_snapshot_state(step.name)
    if state != "Active":
        raise HookError(
            f"/dev/mapper/{step.name} is {state}: its COW file {cow.backing} cannot be used",
            hint=cowfile.RESET_HINT if step.mode is not CowMode.N else None,
        )
