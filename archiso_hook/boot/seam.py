"""The seam between the boot's executor and the system: every call that changes the
kernel's state (a mount, a loop device, a dm device, a COW file, an NBD device, a link)
or asks it something the executor decides on.

`Kernel` is the protocol the executor and its step handlers are written against;
`LiveKernel` is the running kernel, through kernel/ and the medium's waits. A test can
run a whole boot plan against another implementation (tests/unit/test_executor.py
injects a failure at every call of a generated plan and checks that nothing stays
acquired). Calls that acquire are whole: one that fails has made nothing (a COW file
whose size cannot be set is removed before the error goes up), so the executor registers
what a call returns, and nothing else.
"""

from __future__ import annotations

import contextlib
import errno
import os
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from archiso_hook.boot import cowfile, fsprobe, lookonly, medium
from archiso_hook.boot.modules import ensure_modules
from archiso_hook.errors import KernelError
from archiso_hook.kernel import dm, loop, syscalls
from archiso_hook.log import Log


class LoopHandle(Protocol):
    """An attached loop device while the boot holds it open."""

    @property
    def path(self) -> str: ...
    @property
    def devno(self) -> str: ...
    @property
    def backing(self) -> str: ...
    def size(self) -> int: ...
    def close(self) -> None: ...


class Kernel(Protocol):
    # --- devices and modules ---
    def load_modules(self, names: Sequence[str]) -> list[str]: ...
    def wait_for_device(
        self,
        device: str,
        timeout: float,
        log: Log,
        *,
        what: str,
        hint: str | None = None,
        meanwhile: Sequence[Callable[[], None]] = (),
    ) -> str: ...
    def search(self, uuid: str | None, filename: str, timeout: float, log: Log) -> str: ...
    def filesystem_type(self, source: str) -> str | None: ...
    def filesystems(self) -> set[str]: ...
    def is_optical(self, device: str) -> bool: ...

    # --- mounts ---
    def mount(
        self,
        source: str,
        target: str,
        fstype: str | None,
        flags: int,
        data: str | None,
        *,
        look_only: bool = False,
    ) -> None: ...
    def unmount(self, target: str) -> None: ...
    def mounted(self, target: str) -> tuple[str, str] | None: ...
    def journal_unclean(self, source: str, fstype: str) -> bool: ...

    # --- loop and device-mapper ---
    def attach_loop(self, backing: str, *, read_only: bool) -> LoopHandle: ...
    def detach_loop(self, device: LoopHandle) -> None: ...
    def dm_version(self) -> tuple[int, int, int]: ...
    def dm_create(self, name: str, uuid: str) -> str: ...
    def dm_load(self, name: str, table: dm.Target) -> None: ...
    def dm_resume(self, name: str) -> str: ...
    def dm_snapshot_state(self, name: str) -> str: ...
    def dm_remove(self, name: str) -> None: ...

    # --- files ---
    def make_directory(self, path: str, mode: int) -> None: ...
    def mount_point(self, path: str) -> None: ...
    def exists(self, path: str, *, follow: bool = True) -> bool: ...
    def file_size(self, path: str) -> int: ...
    def file_usage(self, path: str) -> cowfile.Usage: ...
    def read_head(self, path: str) -> bytes: ...
    def read_text(self, path: str) -> str: ...
    def free_bytes(self, path: str) -> int: ...
    def create_file(self, path: str, size: int) -> None: ...
    def remove_file(self, path: str) -> None: ...

    def close(self) -> None: ...


class Network(Protocol):
    """What a network boot acquires: its link and an NBD device (boot/netboot.py has the
    running system's, with pyroute2, imported only on a network boot)."""

    def attach_nbd(self, host: str, port: int, name: str, timeout: int) -> Any: ...
    def detach_nbd(self, device: str) -> None: ...
    def bring_up(self, config: Any, bootif: str | None, timeout: float, log: Log) -> Any: ...
    def take_down(self, interface: str) -> None: ...
    def write_resolv_conf(self, lease: Any, path: str | None = None) -> bool: ...


class LiveKernel:
    """The running kernel."""

    def __init__(self, log: Log) -> None:
        self._log = log
        self._dm: dm.DeviceMapper | None = None

    def load_modules(self, names: Sequence[str]) -> list[str]:
        return ensure_modules(*names)

    def wait_for_device(
        self,
        device: str,
        timeout: float,
        log: Log,
        *,
        what: str,
        hint: str | None = None,
        meanwhile: Sequence[Callable[[], None]] = (),
    ) -> str:
        return medium.wait_for_device(
            device, timeout, log, what=what, hint=hint, meanwhile=meanwhile
        )

    def search(self, uuid: str | None, filename: str, timeout: float, log: Log) -> str:
        return medium.search(uuid, filename, timeout, log)

    def filesystem_type(self, source: str) -> str | None:
        return medium.filesystem_type(source)

    def filesystems(self) -> set[str]:
        with open("/proc/filesystems", encoding="ascii") as f:
            return {line.split()[-1] for line in f if line.strip()}

    def is_optical(self, device: str) -> bool:
        """An optical drive: SCSI type 5 (sr*)."""
        name = os.path.basename(device)
        try:
            with open(f"/sys/class/block/{name}/device/type", encoding="ascii") as f:
                return f.read().strip() == "5"
        except OSError:
            return name.startswith("sr")

    def mount(
        self,
        source: str,
        target: str,
        fstype: str | None,
        flags: int,
        data: str | None,
        *,
        look_only: bool = False,
    ) -> None:
        if not look_only:
            syscalls.mount(source, target, fstype, flags, data)
            return
        assert fstype is not None
        with lookonly.read_only_device(source):
            syscalls.mount(source, target, fstype, flags, lookonly.look_only_data(fstype, data))

    def unmount(self, target: str) -> None:
        """A briefly busy mount (udev probing) gets a few retries, then a lazy detach."""
        busy_retried(
            lambda: syscalls.umount(target), lambda: syscalls.umount(target, syscalls.MNT_DETACH)
        )

    def mounted(self, target: str) -> tuple[str, str] | None:
        """What is mounted at `target`: (source, fstype), or None."""
        return syscalls.mountpoints().get(target)

    def journal_unclean(self, source: str, fstype: str) -> bool:
        try:
            return fsprobe.journal_needs_recovery(fsprobe.read_head(source), fstype)
        except OSError:
            return False

    def attach_loop(self, backing: str, *, read_only: bool) -> LoopHandle:
        return loop.attach(backing, read_only=read_only)

    def detach_loop(self, device: LoopHandle) -> None:
        assert isinstance(device, loop.LoopDevice)
        device.detach()

    def _mapper(self) -> dm.DeviceMapper:
        if self._dm is None:
            self._dm = dm.DeviceMapper()
        return self._dm

    def dm_version(self) -> tuple[int, int, int]:
        return self._mapper().version()

    def dm_create(self, name: str, uuid: str) -> str:
        return self._mapper().create(name, uuid=uuid).devno

    def dm_load(self, name: str, table: dm.Target) -> None:
        self._mapper().load(name, [table])

    def dm_resume(self, name: str) -> str:
        info = self._mapper().resume(name)
        dm.make_node(name, info.major, info.minor)
        return info.devno

    def dm_snapshot_state(self, name: str) -> str:
        return dm.SnapshotStatus.parse(self._mapper().status(name)[0].params).state

    def dm_remove(self, name: str) -> None:
        """A briefly open device gets a few retries, then a deferred remove."""
        mapper = self._mapper()
        busy_retried(lambda: mapper.remove(name), lambda: mapper.remove(name, deferred=True))
        dm.remove_node(name)

    def make_directory(self, path: str, mode: int) -> None:
        os.makedirs(path, mode=mode, exist_ok=True)
        os.chmod(path, mode)

    def mount_point(self, path: str) -> None:
        """The directory, made if missing (one that is there keeps its mode)."""
        os.makedirs(path, mode=0o755, exist_ok=True)

    def exists(self, path: str, *, follow: bool = True) -> bool:
        """Whether there is a file at `path` (follow=False: a symlink counts, whatever it
        names)."""
        return os.path.exists(path) if follow else os.path.lexists(path)

    def file_size(self, path: str) -> int:
        return os.stat(path).st_size

    def file_usage(self, path: str) -> cowfile.Usage:
        return cowfile.Usage.of(path)

    def read_head(self, path: str) -> bytes:
        return fsprobe.read_head(path)

    def read_text(self, path: str) -> str:
        """A text file of the medium (the aitab), bytes that are not UTF-8 kept."""
        with open(path, encoding="utf-8", errors="surrogateescape") as f:
            return f.read()

    def free_bytes(self, path: str) -> int:
        fs = os.statvfs(path)
        return fs.f_bavail * fs.f_frsize

    def create_file(self, path: str, size: int) -> None:
        """A new sparse file of `size` bytes (it costs space only when written), or none."""
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            os.ftruncate(fd, size)
        except BaseException:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(path)
            raise
        os.close(fd)

    def remove_file(self, path: str) -> None:
        os.unlink(path)

    def close(self) -> None:
        if self._dm is not None:
            self._dm.close()
            self._dm = None
        # The hook was its own coldplug (no udev): its uevent listener goes with the boot.
        coldplug = sys.modules.get("archiso_hook.boot.coldplug")
        if coldplug is not None:
            coldplug.stop()


def busy_retried(action: Callable[[], None], last_resort: Callable[[], None]) -> None:
    """`action`, tried 5 times 0.1 s apart while the kernel says EBUSY; then `last_resort`."""
    for _ in range(5):
        try:
            action()
            return
        except KernelError as e:
            if e.errno != errno.EBUSY:
                raise
            time.sleep(0.1)
    last_resort()
