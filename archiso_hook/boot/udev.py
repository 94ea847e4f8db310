"""Waiting for a device with udev running (`HOOKS=(base udev archiso)`): woken by udev's
events, once udevd has made the device's /dev/disk/by-* links and recorded what blkid
found. Imported only when udevd runs (medium.WAITS); without it the hook is its own
coldplug (boot/coldplug.py)."""

from __future__ import annotations

import ctypes.util
import time
from collections.abc import Callable, Sequence

from archiso_hook.boot import medium
from archiso_hook.boot.blockid import Identity
from archiso_hook.boot.fsprobe import probe
from archiso_hook.log import Log

# pyudev loads libudev with ctypes.util.find_library(), which runs ldconfig or gcc:
# neither exists in an initramfs. It is given the sonames directly instead.
_SONAMES = {"udev": "libudev.so.1", "c": "libc.so.6"}
_find_library = ctypes.util.find_library


def _find_by_soname(name: str) -> str | None:
    return _SONAMES.get(name) or _find_library(name)


ctypes.util.find_library = _find_by_soname
import pyudev  # noqa: E402  (after find_library is replaced, which it calls at import)


def wait_until(
    find: Callable[[], str | None],
    timeout: float,
    what: str,
    log: Log,
    *,
    subsystem: str,
    meanwhile: Sequence[Callable[[], None]],
) -> tuple[str | None, str]:
    """medium.wait_until on udev's events."""
    found = find()
    if found:
        return found, ""
    if subsystem == "block":
        medium.enable_media_polling(log)
    context = pyudev.Context()
    # udevd creates the /dev/disk/by-* links; without it only kernel names appear.
    monitor = pyudev.Monitor.from_netlink(context, source="udev")
    monitor.filter_by(subsystem)
    monitor.start()
    start = time.monotonic()
    deadline = start + timeout
    log.info(f"waiting up to {timeout:g} s for {what}")
    pending = list(meanwhile)
    while True:
        found = find()  # after subscribing, so no event can slip by unseen
        if found:
            log.info(f"found {what}: {found}, after {time.monotonic() - start:.2f} s")
            return found, ""
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return None, describe_block_devices(context) if subsystem == "block" else ""
        if pending:
            pending.pop(0)()
            continue
        monitor.poll(timeout=remaining)


def describe_block_devices(context: pyudev.Context) -> str:
    """medium.describe_devices with what udev recorded of each device (its blkid
    builtin's ID_FS_*; the superblock's type when udev has none)."""
    recorded = {
        d.sys_name: d.properties for d in pyudev.Enumerator(context).match_subsystem("block")
    }

    def read(name: str) -> Identity:
        props = recorded[name]
        return Identity(
            props.get("ID_FS_TYPE") or probe(f"/dev/{name}"),
            label=props.get("ID_FS_LABEL") or None,
            uuid=props.get("ID_FS_UUID") or None,
        )

    return medium.describe_devices(recorded, read)


def recorded_fstype(device: str) -> str | None:
    """The filesystem udev's database records for `device` (blkid's ID_FS_TYPE)."""
    try:
        props = pyudev.Devices.from_device_file(pyudev.Context(), device).properties
        value = props.get("ID_FS_TYPE")
        return str(value) if value else None
    except Exception:  # noqa: BLE001  (no udev database: nothing more to learn)
        return None
