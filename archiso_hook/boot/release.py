"""Release what the state file says was set up, from its records alone, and only what
is still ours.

`mount` calls it when it finds an earlier attempt's records (that hook was killed
half-way, or its rollback failed): those are released before anything new is set up,
and what cannot be is kept in the state as `leftovers`, for the next attempt and the
shutdown. The shutdown uses its ownership checks for its own rounds.

A record is a claim, not a fact: the kernel is asked before anything is touched.
- a mount: still mounted there, with the recorded filesystem type;
- a dm device: still carries the uuid the hook gives it, ARCHISO-<name>;
- a loop device: still bound to the recorded file (a mount of it under /run/archiso that
  no record names, made by a hook killed before it could record it, goes first);
- a dm device's mounts, unrecorded for the same reason, go before it;
- a COW file the hook made (not a kept one): still a regular file, not a link.
What is no longer ours is forgotten with a warning, never touched.
"""

from __future__ import annotations

import contextlib
import enum
import errno
import os
import stat
import time
from collections.abc import Sequence
from typing import Any

from archiso_hook.errors import HookError, KernelError
from archiso_hook.kernel import dm, loop, syscalls
from archiso_hook.lazy import function
from archiso_hook.log import Log
from archiso_hook.paths import DM_UUID_PREFIX, RUN_DIR, under

ROUNDS = 16
PATIENCE = 4  # rounds without progress, WAIT apart, before a lazy unmount and the end
WAIT = 0.2


class Outcome(enum.Enum):
    RELEASED = "released"
    GONE = "already gone"
    BUSY = "busy"
    FOREIGN = "no longer ours"


def same_backing(recorded: str, bound: str, moved: Sequence[tuple[str, str]] = ()) -> bool:
    """Whether a loop device bound to `bound` (as sysfs names it from where we stand)
    is bound to the file recorded as `recorded`. `moved` lists where a directory of the
    recording hook is now: ("/run/", "/oldrun/") at shutdown, say. A file deleted since
    is named with " (deleted)" after it; a file on a mount detached lazily, from that
    mount's root, which ends the recorded path."""
    bound = bound.removesuffix(" (deleted)")
    if bound == recorded:
        return True
    for old, new in moved:
        if recorded.startswith(old) and bound == new + recorded[len(old) :]:
            return True
    return bound.count("/") >= 2 and recorded.endswith(bound)


def loop_backing(device: str) -> str | None:
    """The file a loop device is bound to, or None when it is free (or not a loop)."""
    try:
        with open(
            f"/sys/block/{os.path.basename(device)}/loop/backing_file",
            encoding="utf-8",
            errors="surrogateescape",
        ) as f:
            return f.read().rstrip("\n")
    except OSError:
        return None


def dm_owned(mapper: dm.DeviceMapper, name: str) -> bool:
    """The dm device of that name exists and is one the hook made."""
    try:
        return mapper.info(name).uuid == DM_UUID_PREFIX + name
    except HookError:
        return False


def detach_loop(device: str) -> bool:
    """LOOP_CLR_FD; True once the device is free (a held one is freed at its last close)."""
    try:
        fd = os.open(device, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return loop_backing(device) is None
    try:
        loop.LoopDevice(int(device.removeprefix("/dev/loop")), fd, "", True).detach()
    except HookError:
        os.close(fd)
    return loop_backing(device) is None


class Releaser:
    def __init__(self, log: Log, moved: Sequence[tuple[str, str]] = ()) -> None:
        self.log = log
        self.moved = moved
        self._mapper: dm.DeviceMapper | None = None
        self.lazy = False  # unmount with MNT_DETACH

    def close(self) -> None:
        if self._mapper is not None:
            self._mapper.close()
            self._mapper = None

    def mapper(self) -> dm.DeviceMapper:
        if self._mapper is None:
            self._mapper = dm.DeviceMapper()
        return self._mapper

    def one(self, record: dict[str, Any]) -> tuple[Outcome, str]:
        """Release one record; what happened, and what it was (for the log)."""
        handlers = {"mount": self._mount, "dm": self._dm, "loop": self._loop,
                    "nbd": self._nbd, "net": self._net, "file": self._file}  # fmt: skip
        return handlers[record["kind"]](record)

    def _mount(self, r: dict[str, Any]) -> tuple[Outcome, str]:
        target, what = r["target"], f"the mount at {r['target']}"
        mounted = syscalls.mountpoints().get(target)
        if mounted is None:
            return Outcome.GONE, what
        if mounted[1] != r["fstype"]:
            return Outcome.FOREIGN, f"{what} ({mounted[1]}, recorded as {r['fstype']})"
        try:
            syscalls.umount(target, syscalls.MNT_DETACH if self.lazy else 0)
        except KernelError as e:
            if e.errno in (errno.EINVAL, errno.ENOENT):
                return Outcome.GONE, what
            return Outcome.BUSY, f"{what}: {os.strerror(e.errno)}"
        return Outcome.RELEASED, f"unmounted {target}"

    def _dm(self, r: dict[str, Any]) -> tuple[Outcome, str]:
        name = r["name"]
        what = f"/dev/mapper/{name}"
        mapper = self.mapper()
        if name not in {n for n, _, _ in mapper.list_devices()}:
            return Outcome.GONE, what
        if not dm_owned(mapper, name):
            return Outcome.FOREIGN, f"{what} (its uuid is not {DM_UUID_PREFIX}{name})"
        try:
            mapper.remove(name)
        except KernelError as e:
            # Ours by its uuid, so is any mount of it (anywhere: the live root's too).
            if e.errno != errno.EBUSY or not self._unrecorded_mounts(what, below=None):
                return Outcome.BUSY, f"{what}: {os.strerror(e.errno)}"
            try:
                mapper.remove(name)
            except KernelError as again:
                return Outcome.BUSY, f"{what}: {os.strerror(again.errno)}"
        dm.remove_node(name)
        return Outcome.RELEASED, f"removed {what}"

    def _loop(self, r: dict[str, Any]) -> tuple[Outcome, str]:
        device = r["device"]
        bound = loop_backing(device)
        if bound is None:
            return Outcome.GONE, device
        if not same_backing(r["backing"], bound, self.moved):
            return Outcome.FOREIGN, f"{device} (bound to {bound}, recorded as {r['backing']})"
        if not detach_loop(device) and not (
            self._unrecorded_mounts(device, below=self._run_dirs()) and detach_loop(device)
        ):
            return Outcome.BUSY, f"{device}: still in use"
        return Outcome.RELEASED, f"detached {device}"

    def _run_dirs(self) -> tuple[str, ...]:
        """The hook's run directory, and where it is now if it moved (/oldrun/archiso)."""
        moved = (new + RUN_DIR[len(old) :] for old, new in self.moved if RUN_DIR.startswith(old))
        return (RUN_DIR, *moved)

    def _unrecorded_mounts(self, source: str, *, below: tuple[str, ...] | None) -> bool:
        """Unmount the mounts of `source`, a device of ours, that no record names: a hook
        killed between a mount(2) and its record leaves one, and the device busy. Only
        in the directories `below` (None: anywhere), deepest first. Whether any was."""
        targets = [
            target
            for target, (mounted, _) in syscalls.mountpoints().items()
            if mounted == source and (below is None or any(under(target, d) for d in below))
        ]
        done = False
        for target in sorted(targets, key=lambda t: t.count("/"), reverse=True):
            try:
                syscalls.umount(target, syscalls.MNT_DETACH if self.lazy else 0)
            except KernelError:
                continue
            self.log.info(f"released: unmounted {target} ({source}; the record was not written)")
            done = True
        return done

    def _nbd(self, r: dict[str, Any]) -> tuple[Outcome, str]:
        device = r["device"]
        name = os.path.basename(device)
        if not os.path.exists(f"/sys/block/{name}/pid"):
            return Outcome.GONE, device
        with contextlib.suppress(OSError):
            if os.listdir(f"/sys/block/{name}/holders"):
                return Outcome.BUSY, f"{device}: still in use"
        try:  # the NBD client only when there is one
            function("archiso_hook.kernel.nbd:detach")(int(name.removeprefix("nbd")))
        except (OSError, HookError) as e:
            return Outcome.BUSY, f"{device}: {e}"
        return Outcome.RELEASED, f"disconnected {device}"

    def _net(self, r: dict[str, Any]) -> tuple[Outcome, str]:
        name = r["interface"]
        if not os.path.exists(f"/sys/class/net/{name}"):
            return Outcome.GONE, name
        try:  # pyroute2 only when there is one
            function("archiso_hook.boot.net:take_down")(name)
        except Exception as e:  # noqa: BLE001  (pyroute2 raises its own, and OSError)
            return Outcome.BUSY, f"{name}: {e}"
        return Outcome.RELEASED, f"took {name} down"

    def _file(self, r: dict[str, Any]) -> tuple[Outcome, str]:
        path = r["path"]
        if r["kept"]:
            return Outcome.GONE, path  # the user's persistent COW: never ours to remove
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return Outcome.GONE, path
        except OSError as e:
            return Outcome.BUSY, f"{path}: {e.strerror}"
        if not stat.S_ISREG(st.st_mode):
            return Outcome.FOREIGN, f"{path} (not a regular file)"
        try:
            os.unlink(path)
        except OSError as e:
            return Outcome.BUSY, f"{path}: {e.strerror}"
        return Outcome.RELEASED, f"removed {path}"


def release(
    records: list[dict[str, Any]], log: Log, moved: Sequence[tuple[str, str]] = ()
) -> list[dict[str, Any]]:
    """Release every record, newest first, in rounds (a mount goes before the loop
    under it, which may take a second round); a round that releases nothing is tried
    again after WAIT (udev may hold a device for a moment), the last time unmounting
    lazily. The records still set up at the end; each must have passed
    state.check_record."""
    pending = list(records)
    releaser = Releaser(log, moved)
    reasons: dict[int, str] = {}
    stuck = 0  # rounds in a row that released nothing
    try:
        for _ in range(ROUNDS):
            still, progress = [], False
            for record in reversed(pending):
                try:
                    outcome, what = releaser.one(record)
                except (OSError, HookError) as e:
                    outcome, what = Outcome.BUSY, f"{record['kind']}: {e}"
                if outcome is Outcome.RELEASED:
                    log.info(f"released: {what}")
                    progress = True
                elif outcome is Outcome.FOREIGN:
                    log.warning(f"not releasing {what}: it is no longer the hook's")
                    progress = True
                elif outcome is Outcome.BUSY:
                    still.append(record)
                    reasons[id(record)] = what
            pending = list(reversed(still))
            if not pending:
                break
            stuck = 0 if progress else stuck + 1
            if stuck > PATIENCE:
                break
            if stuck == PATIENCE:  # a last round, unmounting lazily what is still busy
                releaser.lazy = True
            elif stuck:  # busy for a moment (udev probing a device): wait, then again
                time.sleep(WAIT)
        for record in pending:
            log.warning(f"could not release {reasons[id(record)]}")
        return pending
    finally:
        releaser.close()
