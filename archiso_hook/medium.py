"""Finding the boot medium: wait for its device node on udev events, bounded in time."""

from __future__ import annotations

import os
import stat
import time
from types import ModuleType

from archiso_hook.errors import HookError
from archiso_hook.fsprobe import probe
from archiso_hook.log import Log
from archiso_hook.sizes import human

# pyudev loads libudev with ctypes.util.find_library(), which runs ldconfig or gcc:
# neither exists in an initramfs. Name the sonames directly instead.
_SONAMES = {"udev": "libudev.so.1", "c": "libc.so.6"}


def import_pyudev() -> ModuleType:
    """pyudev, made loadable in an initramfs (imported only when the hook has to wait)."""
    import ctypes.util  # noqa: PLC0415  (pulls in subprocess: not at start-up)

    find_library = ctypes.util.find_library
    if not getattr(find_library, "by_soname", False):

        def find_by_soname(name: str) -> str | None:
            return _SONAMES.get(name) or find_library(name)

        find_by_soname.by_soname = True  # type: ignore[attr-defined]
        ctypes.util.find_library = find_by_soname
    import pyudev  # noqa: PLC0415

    module: ModuleType = pyudev
    return module


def udevd_running() -> bool:
    return os.path.exists("/run/udev/control")


class MediumNotFoundError(HookError):
    pass


def present(path: str) -> str | None:
    """The real device behind `path` if it is a block device holding data (media inserted)."""
    try:
        real = os.path.realpath(path)
        if not stat.S_ISBLK(os.stat(real).st_mode):
            return None
    except OSError:
        return None
    name = os.path.basename(real)
    try:
        with open(f"/sys/class/block/{name}/size", encoding="ascii") as f:
            if int(f.read()) == 0:  # e.g. an optical drive without a disc
                return None
    except (OSError, ValueError):
        pass
    return real


def wait_for_device(path: str, timeout: float, log: Log) -> str:
    """Return the real device node of `path` once it exists; woken by udev, not polling."""
    found = present(path)
    if found:
        return found
    pyudev = import_pyudev()
    context = pyudev.Context()
    # udevd creates the /dev/disk/by-* links; without it only kernel names appear.
    monitor = pyudev.Monitor.from_netlink(context, source="udev" if udevd_running() else "kernel")
    monitor.filter_by("block")
    monitor.start()
    start = time.monotonic()
    deadline = start + timeout
    log.info(f"waiting up to {timeout:g} s for the boot medium {path}")
    while True:
        found = present(path)  # checked after subscribing, so no event is missed
        if found:
            log.info(f"found {path} -> {found} after {time.monotonic() - start:.2f} s")
            return found
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise MediumNotFoundError(
                f"boot medium {path} did not appear within {timeout:g} s; block devices seen: "
                f"{describe_block_devices(pyudev, context)}",
                hint="check archisolabel=/archisodevice= against the medium (a USB writing "
                "tool may have changed its label); rootdelay= sets how long to wait",
            )
        monitor.poll(timeout=remaining)


def describe_block_devices(pyudev: ModuleType, context: object) -> str:
    """`sr0 (iso9660 'ARCH_2026', uuid ...)`, ... for every disk or partition present."""
    parts = []
    for device in pyudev.Enumerator(context).match_subsystem("block"):
        name = device.sys_name
        if name.startswith(("loop", "ram", "zram", "dm-")):
            continue
        props = device.properties
        fstype = props.get("ID_FS_TYPE") or probe(f"/dev/{name}")
        try:
            with open(f"/sys/class/block/{name}/size", encoding="ascii") as f:
                size = human(int(f.read()) * 512)
        except (OSError, ValueError):
            size = "?"
        facts = [fstype or "no filesystem"]
        if props.get("ID_FS_LABEL"):
            facts.append(f"label '{props.get('ID_FS_LABEL')}'")
        if props.get("ID_FS_UUID"):
            facts.append(f"uuid {props.get('ID_FS_UUID')}")
        parts.append(f"{name} ({', '.join(facts)}, {size})")
    return "; ".join(parts) or "none"


def filesystem_type(device: str) -> str | None:
    """The medium's filesystem: its superblock, else what udev recorded."""
    fstype = probe(device)
    if fstype:
        return fstype
    try:
        pyudev = import_pyudev()
        props = pyudev.Devices.from_device_file(pyudev.Context(), device).properties
        value = props.get("ID_FS_TYPE")
        return str(value) if value else None
    except Exception:  # noqa: BLE001  (no udev database: nothing more to learn)
        return None
