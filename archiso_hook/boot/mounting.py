"""The steps that find the medium and mount filesystems: LoadModules, FindMedium,
SearchMedium, Mount, Remount, MakeDirectory. Each is a function of the executor (`Boot`)
and its step; what it acquires it registers with `boot.acquired` as the kernel made it."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from functools import partial
from typing import TYPE_CHECKING

from archiso_hook.boot import resources
from archiso_hook.boot.rootpath import resolve_in_root
from archiso_hook.errors import HookError
from archiso_hook.kernel import syscalls
from archiso_hook.mountopts import parse_mount_options
from archiso_hook.steps import FindMedium, LoadModules, MakeDirectory, Mount, Remount, SearchMedium

if TYPE_CHECKING:
    from archiso_hook.boot.executor import Boot

# Loaded while the medium is awaited: what an ISO 9660 medium needs, so that no module
# is loaded between the medium's event and its mount. (Not more: a medium arriving
# during a load waits for it.)
PRELOAD = ("fs-iso9660",)


def load(boot: Boot, names: Sequence[str]) -> None:
    loaded = boot.kernel.load_modules(names)
    if loaded:
        boot.log.info(f"loaded kernel modules: {', '.join(loaded)}")


def load_modules(boot: Boot, step: LoadModules) -> None:
    load(boot, step.names)


def find_medium(boot: Boot, step: FindMedium) -> None:
    boot.refs[step.ref] = boot.kernel.wait_for_device(
        step.device,
        step.timeout,
        boot.log,
        what=f"{step.what} {step.device}",
        hint=step.hint,
        meanwhile=[partial(_preload, boot, name) for name in PRELOAD]
        + [partial(_read_filesystems, boot)],
    )


def _preload(boot: Boot, name: str) -> None:
    """Load a module while the medium is awaited (idle time); one the initramfs lacks
    is left for the step that needs it to report."""
    with contextlib.suppress(HookError):
        load(boot, (name,))


def _read_filesystems(boot: Boot) -> None:
    """While the medium is awaited: so that its mount need not read them."""
    boot.filesystems = boot.kernel.filesystems()


def search_medium(boot: Boot, step: SearchMedium) -> None:
    boot.refs[step.ref] = boot.kernel.search(step.uuid, step.filename, step.timeout, boot.log)


def make_directory(boot: Boot, step: MakeDirectory) -> None:
    boot.kernel.make_directory(step.path, step.mode)


def mount(boot: Boot, step: Mount) -> None:
    source = boot.device(step.source)
    fstype = step.fstype or boot.kernel.filesystem_type(source)
    if fstype is None:
        raise HookError(
            f"{source} holds no filesystem this hook can recognise",
            hint="is it the right device?",
        )
    if fstype not in boot.filesystems:  # known ones stay known: read once per new one
        boot.filesystems = boot.kernel.filesystems()
        if fstype not in boot.filesystems:
            load(boot, (f"fs-{fstype}",))
    target = step.target
    if step.live_path is not None:  # under the new root: its symlinks stay inside it
        target = resolve_in_root(boot.newroot, step.live_path)
        if target != step.target:
            boot.log.info(f"{step.live_path} resolves to {target} in the new root")
    boot.kernel.mount_point(target)
    options = parse_mount_options(step.options, what=f"options of {step.target}")
    flags = options.flags | (syscalls.MS_RDONLY if step.read_only else 0)
    how = "read-only" if step.read_only else "read-write"
    if step.look_only:
        # Another system's filesystem, written to in no way (see lookonly): it may belong
        # to a hibernated system, whose resume would find its disk changed.
        if boot.kernel.journal_unclean(source, fstype):
            boot.log.warning(
                f"{source} ({fstype}) was not cleanly unmounted (a hibernated or crashed "
                "system): it is mounted without replaying its journal, so changes still "
                "in the journal are not seen, and nothing is written to it"
            )
        how += ", without journal replay"
    boot.kernel.mount(source, target, fstype, flags, options.data, look_only=step.look_only)
    live_path = None
    if step.live_path is not None:
        live_path = "/" + os.path.relpath(target, boot.newroot).removeprefix(".")
    acquired_mount(boot, resources.Mount(target, source, fstype, step.read_only, live_path))
    boot.log.info(f"mounted {source} ({fstype}) {how} at {target}")


def acquired_mount(boot: Boot, mount: resources.Mount) -> None:
    kernel = boot.kernel
    boot.acquired(mount, lambda: kernel.unmount(mount.target))


def remount(boot: Boot, step: Remount) -> None:
    options = parse_mount_options(step.options, what=f"options of {step.target}")
    boot.kernel.mount("", step.target, None, syscalls.MS_REMOUNT | options.flags, options.data)
    boot.log.info(f"remounted {step.target} read-write")
