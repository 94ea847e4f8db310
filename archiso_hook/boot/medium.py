"""Finding the boot medium: wait for its device node on device events, bounded in time.

With udevd (`HOOKS=(base udev archiso)`) a wait wakes on udev's events (boot/udev.py).
Without it (`HOOKS=(base archiso)`: /run/udev/control absent) the hook is its own
coldplug (boot/coldplug.py): it loads the drivers, wakes on the kernel's own events and
resolves /dev/disk/by-* names by reading labels and UUIDs itself (boot/blockid.py).
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import time
from collections.abc import Callable, Iterable, Sequence

from archiso_hook.boot import lookonly, modules
from archiso_hook.boot.blockid import Identity, identify
from archiso_hook.boot.fsprobe import journal_needs_recovery, probe, read_head
from archiso_hook.cmdline import device_path, udev_encode
from archiso_hook.errors import HookError
from archiso_hook.kernel import syscalls
from archiso_hook.lazy import function
from archiso_hook.log import Log
from archiso_hook.paths import SEARCH_MNT
from archiso_hook.sizes import human


def udevd_running() -> bool:
    return os.path.exists("/run/udev/control")


class MediumNotFoundError(HookError):
    pass


def present(path: str) -> str | None:
    """The real device behind `path` if it is a block device holding data (media inserted).

    A /dev/disk/by-* link that udev would make is found by its device's identity when
    udevd does not run."""
    if path.startswith(DISK_LINKS) and not os.path.lexists(path) and not udevd_running():
        found = find_by_link(path)
        return found if found and has_medium(found) else None
    try:
        real = os.path.realpath(path)
        if not stat.S_ISBLK(os.stat(real).st_mode):
            return None
    except OSError:
        return None
    return real if has_medium(real) else None


DISK_LINKS = "/dev/disk/"
# Block devices that never hold a medium: the hook's own loop and dm devices, RAM disks.
NOT_MEDIA = ("loop", "ram", "zram", "dm-")
_LINK_FIELDS = {"by-label": "label", "by-uuid": "uuid", "by-partuuid": "partuuid",
                "by-partlabel": "partlabel"}  # fmt: skip
_identities: dict[tuple[str, int], Identity] = {}
# A device that showed no filesystem (or could not be read) is read again after this many
# seconds, while the hook waits: a disk can be seen before it reads (a USB drive that is
# not ready yet, a disk whose driver is still probing it), and no event follows.
REREAD_UNIDENTIFIED = 0.5
_unidentified: dict[tuple[str, int], tuple[float, Identity | None]] = {}


def block_devices() -> list[str]:
    """Kernel names of the disks and partitions that may hold a medium (not the hook's own
    loop and dm devices, nor RAM disks), with data: an empty drive has size 0."""
    try:
        names = sorted(os.listdir("/sys/class/block"))
    except OSError:
        return []
    return [
        name
        for name in names
        if not name.startswith(NOT_MEDIA) and _sysfs_int(f"/sys/class/block/{name}/size") > 0
    ]


def identity(name: str) -> Identity | None:
    """blockid's reading of a device, kept while its size stays the same (a new disc in a
    drive changes it; `forget_identities` drops them all on a media change). A reading
    that found no filesystem is kept REREAD_UNIDENTIFIED seconds only."""
    key = (name, _sysfs_int(f"/sys/class/block/{name}/size"))
    known = _identities.get(key)
    if known is not None:
        return known
    now = time.monotonic()
    last = _unidentified.get(key)
    if last is not None and now - last[0] < REREAD_UNIDENTIFIED:
        return last[1]
    found = identify(name)
    if found is not None and found.fstype is not None:
        _identities[key] = found
        _unidentified.pop(key, None)
    else:
        _unidentified[key] = (now, found)
    return found


def forget_identities() -> None:
    _identities.clear()
    _unidentified.clear()


def forget_unidentified() -> None:
    """A block device appeared: read again those that showed no filesystem. (A disk is
    in sysfs, with its node, before the kernel has scanned its partitions and sent its
    add event; read then, a USB stick's disk, which usb-storage scans in the background,
    showed nothing in the lab.)"""
    _unidentified.clear()


def find_by_link(path: str) -> str | None:
    """The device a /dev/disk/by-label|uuid|partuuid|partlabel link names, found as udev
    would name it: the first disk or partition whose identity, encoded as udev encodes
    link names, is the link's name."""
    kind, _, name = path.removeprefix(DISK_LINKS).partition("/")
    field = _LINK_FIELDS.get(kind)
    if field is None or not name or "/" in name:
        return None
    for device in block_devices():
        found = identity(device)
        value = getattr(found, field) if found is not None else None
        if value is not None and udev_encode(value) == name:
            return f"/dev/{device}"
    return None


MEDIA_POLL = "/sys/module/block/parameters/events_dfl_poll_msecs"


def enable_media_polling(log: Log, msecs: int = 2000) -> None:
    """Make the kernel report a disc inserted into an optical drive.

    The kernel notices a new medium only if it polls for it, and by default it does
    not: systemd's 60-block.rules turns polling on (every 2 s) once the real system
    runs. A user inserting the medium while the hook waits needs it now.
    """
    try:
        with open(MEDIA_POLL, "r+", encoding="ascii") as f:
            if int(f.read().strip() or 0) == 0:
                f.seek(0)
                f.write(str(msecs))
                log.debug(f"media change polling enabled ({msecs} ms), as systemd does")
    except (OSError, ValueError):
        pass


def has_medium(device: str) -> bool:
    """Whether the device can be read: an optical drive without a disc answers ENOMEDIUM
    (its size in sysfs is no guide: an empty drive may report 1 GiB)."""
    try:
        os.close(os.open(device, os.O_RDONLY | os.O_CLOEXEC))
    except OSError as e:
        return e.errno not in (errno.ENOMEDIUM, errno.ENXIO, errno.ENODEV)
    return True


def wait_until(
    find: Callable[[], str | None],
    timeout: float,
    what: str,
    log: Log,
    *,
    subsystem: str = "block",
    meanwhile: Sequence[Callable[[], None]] = (),
) -> tuple[str | None, str]:
    """Call `find` now and after every event of `subsystem` until it answers or time
    runs out.

    `meanwhile`: work for the wait (loading the modules the next steps need), done one
    piece at a time with a look for the device after each, so that the device, when it
    comes, waits for at most one piece.

    Returns what `find` answered (None on timeout) and, on timeout, a description of
    the block devices that were present, for the error message.
    """
    wait = function(WAITS[udevd_running()])
    waited: tuple[str | None, str] = wait(
        find, timeout, what, log, subsystem=subsystem, meanwhile=meanwhile
    )
    return waited


# How a wait wakes: on udev's events and links when udevd runs (boot/udev.py, with
# pyudev), else as the hook's own coldplug (boot/coldplug.py, on the kernel's uevents).
WAITS = {True: "archiso_hook.boot.udev:wait_until", False: "archiso_hook.boot.coldplug:wait_until"}


def wait_for_device(
    path: str,
    timeout: float,
    log: Log,
    *,
    what: str = "",
    hint: str | None = None,
    meanwhile: Sequence[Callable[[], None]] = (),
) -> str:
    """The real device node of `path` (a node or a udev link), once it is there."""
    what = what or f"the boot medium {path}"
    found, seen = wait_until(lambda: present(path), timeout, what, log, meanwhile=meanwhile)
    if found is None:
        raise MediumNotFoundError(
            f"{what} did not appear within {timeout:g} s; block devices seen: {seen}",
            hint=hint,
        )
    return found


def search(uuid: str | None, filename: str, timeout: float, log: Log) -> str:
    """archisosearchuuid: the filesystem with this UUID, else the first holding `filename`
    (archisosearchfilename alone: uuid None)."""
    by_uuid = device_path(f"UUID={uuid}") if uuid is not None else None
    looked_at: set[tuple[str, int]] = set()

    def find() -> str | None:
        found = present(by_uuid) if by_uuid else None
        if found:
            return found
        for device, fstype, size in _candidates():
            if (device, size) in looked_at:
                continue
            looked_at.add((device, size))
            if _holds_file(device, fstype, filename, log):
                log.info(f"{device} holds /{filename}")
                return device
        return None

    if uuid is None:
        what = f"a filesystem holding /{filename}"
        hint = "check archisosearchfilename= against the medium's files; rootdelay= sets how "
        hint += "long to wait"
    else:
        what = f"a filesystem with UUID {uuid}, or one holding /{filename}"
        hint = "check archisosearchuuid= against the medium's filesystem UUID; rootdelay= "
        hint += "sets how long to wait"
    found, seen = wait_until(find, timeout, what, log)
    if found is None:
        raise MediumNotFoundError(
            f"{what} did not appear within {timeout:g} s; block devices seen: {seen}", hint=hint
        )
    return found


def _candidates() -> list[tuple[str, str, int]]:
    """(device, filesystem type, size) of every device holding a filesystem we can mount,
    removable devices first: the medium a user just plugged in is the likely one."""
    out = []
    for name in sorted(os.listdir("/sys/class/block")):
        if name.startswith(NOT_MEDIA):
            continue
        size = _sysfs_int(f"/sys/class/block/{name}/size")
        device = f"/dev/{name}"
        fstype = probe(device) if size else None
        if fstype is None or fstype == "squashfs":
            continue
        sys_dir = os.path.realpath(f"/sys/class/block/{name}")
        disk = os.path.dirname(sys_dir) if os.path.exists(f"{sys_dir}/partition") else sys_dir
        removable = _sysfs_int(f"{disk}/removable") == 1
        out.append((not removable, device, fstype, size))
    return [(device, fstype, size) for _, device, fstype, size in sorted(out)]


def _sysfs_int(path: str) -> int:
    try:
        with open(path, encoding="ascii") as f:
            return int(f.read())
    except (OSError, ValueError):
        return 0


def _holds_file(device: str, fstype: str, filename: str, log: Log) -> bool:
    """Mount for a moment and look, writing nothing to the device: read-only, without
    replaying a journal, the device itself read-only meanwhile (see lookonly). A device
    that cannot be mounted so, or made read-only, does not hold the file."""
    os.makedirs(SEARCH_MNT, mode=0o700, exist_ok=True)
    with contextlib.ExitStack() as stack:
        try:
            modules.ensure_modules(f"fs-{fstype}")
            stack.enter_context(lookonly.read_only_device(device))
            if _unclean(device, fstype):
                log.info(
                    f"{device} ({fstype}) was not cleanly unmounted: looking into it "
                    "without replaying its journal"
                )
            data = lookonly.look_only_data(fstype, None)
            syscalls.mount(device, SEARCH_MNT, fstype, syscalls.MS_RDONLY, data)
        except HookError as e:
            log.debug(f"not looking in {device}: {e}")
            return False
        try:
            return os.path.isfile(os.path.join(SEARCH_MNT, filename))
        finally:
            syscalls.umount(SEARCH_MNT)
    raise AssertionError("unreachable")  # pragma: no cover  (for mypy: the block returns)


def _unclean(device: str, fstype: str) -> bool:
    """The filesystem's journal holds changes not written in place (see fsprobe)."""
    try:
        return journal_needs_recovery(read_head(device), fstype)
    except OSError:
        return False


def describe_devices(
    names: Iterable[str] | None = None, read: Callable[[str], Identity | None] = identity
) -> str:
    """`sr0 (iso9660, label 'ARCH_2026', uuid ..., 1.0 GiB); sda (no medium)` for every
    disk or partition present (`names`: sysfs's, unless given), with what `read` says of
    each: the hook's own reading, or under udev its records (boot/udev.py)."""
    parts = []
    for name in sorted(os.listdir("/sys/class/block")) if names is None else names:
        if name.startswith(NOT_MEDIA):
            continue
        if not has_medium(f"/dev/{name}"):
            parts.append(f"{name} (no medium)")
            continue
        found = read(name) or Identity(None)
        size = human(_sysfs_int(f"/sys/class/block/{name}/size") * 512)
        facts = [found.fstype or "no filesystem"]
        if found.label is not None:
            facts.append(f"label '{found.label}'")
        if found.uuid is not None:
            facts.append(f"uuid {found.uuid}")
        parts.append(f"{name} ({', '.join(facts)}, {size})")
    return "; ".join(parts) or "none"


def filesystem_type(device: str) -> str | None:
    """The medium's filesystem: its superblock, else what udev recorded."""
    fstype = probe(device)
    if fstype or not udevd_running():
        return fstype
    recorded: str | None = function("archiso_hook.boot.udev:recorded_fstype")(device)
    return recorded
