"""`archiso-hook shutdown VERB`: take the live system's storage apart at power-off.

At shutdown systemd switches root back into /run/initramfs (a copy of the initramfs
the hook made) when /run/initramfs/shutdown exists, with the old root at /oldroot,
and runs `/shutdown poweroff|reboot|halt|kexec`. We chose this over archiso's
current `x-initrd.mount` approach because it lets the hook itself undo exactly what
it set up, whatever init the live system runs, and leave a persistent COW valid:
the snapshot is removed before its COW loop and filesystem go.

Like systemd-shutdown, it repeats rounds of: unmount everything under /oldroot
deepest first; remove the hook's dm devices that nothing holds; detach its loop
devices, newest first; until a round changes nothing.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import time

from archiso_hook.boot import release
from archiso_hook.boot.state import State, locked
from archiso_hook.errors import HookError, KernelError
from archiso_hook.kernel import dm, syscalls
from archiso_hook.lazy import function
from archiso_hook.live import pidfile
from archiso_hook.log import Log
from archiso_hook.paths import OLDROOT, OLDRUN, PID_FILE, RUN_DIR, STATE_FILE, under

REBOOT = {"poweroff": 0x4321FEDC, "reboot": 0x01234567, "halt": 0xCDEF0123,
          "kexec": 0x45584543}  # fmt: skip
_API_FILESYSTEMS = (("proc", "/proc", "proc"), ("sysfs", "/sys", "sysfs"),
                    ("devtmpfs", "/dev", "devtmpfs"))  # fmt: skip


def mount_api_filesystems() -> None:
    """/proc, /sys and /dev in the shutdown root, where the switch did not move them."""
    for source, target, fstype in _API_FILESYSTEMS:
        os.makedirs(target, exist_ok=True)
        if not os.path.ismount(target):
            syscalls.mount(source, target, fstype, syscalls.MS_NOSUID)


def stop_watchdog(log: Log, root: str = OLDROOT) -> None:
    """The watchdog holds files open on /run: it must go before /run can be unmounted.
    Its pid file is a claim too: only the process it names, started when it says (not
    another given the same pid since), gets a signal."""
    for pid_file in (f"{root}{PID_FILE}", PID_FILE):
        try:
            pid, start = pidfile.read(pid_file)
        except FileNotFoundError:
            continue
        except (OSError, ValueError) as e:
            log.warning(f"{e}: no signal sent")
            return
        if not pidfile.names_running(pid, start):
            log.info(f"the watchdog (pid {pid}) is not running: nothing to stop")
            return
        for sig in (signal.SIGTERM, signal.SIGKILL):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
            for _ in range(40):
                if _gone(pid):
                    log.info(f"stopped the watchdog (pid {pid})")
                    return
                time.sleep(0.05)
        log.warning(f"the watchdog (pid {pid}) did not stop")
        return


def _gone(pid: int) -> bool:
    """Exited; as PID 1 we inherited it, so we reap it (else it stays a zombie)."""
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def state_paths(root: str = OLDROOT) -> tuple[str, ...]:
    """Where the boot's state file may be: the live system's /run, moved aside or not."""
    return (f"{root}{STATE_FILE}", f"{OLDRUN}{STATE_FILE.removeprefix('/run')}", STATE_FILE)


def find_state(log: Log, paths: tuple[str, ...] | None = None) -> State | None:
    """The boot's state, with every record it cannot trust skipped (and said)."""
    for path in paths or state_paths():
        try:
            state, problems = State.read(path)
        except FileNotFoundError:
            continue
        except (OSError, ValueError) as e:
            log.warning(f"cannot use the state file: {e}")
            continue
        for problem in problems:
            log.warning(problem)
        return state
    return None


def _holders(name: str, devno: str) -> list[str]:
    minor = devno.split(":")[1]
    try:
        return os.listdir(f"/sys/block/dm-{minor}/holders")
    except OSError:
        return []


def move_run_aside(log: Log, root: str = OLDROOT) -> None:
    """The old /run holds the cowspace, pinned by the COW's loop device, which the
    snapshot holds, which is mounted at /oldroot, /run's parent: no unmount order
    breaks that. Moved out of the old root (as archiso's own shutdown did), /run is
    unmounted last. Mounts are made private first: a shared mount cannot be moved."""
    run = f"{root}/run"
    if not os.path.ismount(run):
        return
    try:
        syscalls.mount("", root, None, syscalls.MS_REC | syscalls.MS_PRIVATE)
        os.makedirs(OLDRUN, exist_ok=True)
        syscalls.mount(run, OLDRUN, None, syscalls.MS_MOVE)
    except (OSError, HookError) as e:
        log.warning(f"cannot move {run} aside: {e}")
        return
    log.info(f"moved {run} to {OLDRUN}")


def teardown(
    state: State | None,
    log: Log,
    root: str = OLDROOT,
    rounds: int = 8,
    also: tuple[str, ...] = (OLDRUN,),
) -> list[str]:
    """Undo what is there to undo; what is still busy at the end, for the log."""
    records = state.every_record() if state else []
    ours_dm = [r for r in records if r["kind"] == "dm"]
    ours_loops = [r for r in records if r["kind"] == "loop"]
    # Where the live system's /run is now, for the loops' backing files recorded there.
    moved = (("/run/", f"{root}/run/"), *(("/run/", f"{other}/") for other in also))
    warned: set[str] = set()
    mapper: dm.DeviceMapper | None = None
    with contextlib.suppress(HookError):
        mapper = dm.DeviceMapper()
    try:
        for _ in range(rounds):
            progress = _unmount_round(root, log)
            for other in also:
                progress |= _unmount_round(other, log)
            if mapper is not None:
                progress |= _remove_round(mapper, ours_dm, log)
            progress |= _detach_round(ours_loops, log, moved, warned)
            if not progress:
                break
        left = [
            f"mount {t}" for t in syscalls.mountpoints() if any(under(t, r) for r in (root, *also))
        ]
        if mapper is not None:
            names = {name for name, _, _ in mapper.list_devices()}
            left += [
                f"/dev/mapper/{r['name']}"
                for r in ours_dm
                if r["name"] in names and release.dm_owned(mapper, r["name"])
            ]
    finally:
        if mapper is not None:
            mapper.close()
    left += [r["device"] for r in ours_loops if _ours(r, moved)]
    left += _detach_nbd([r for r in records if r["kind"] == "nbd"], log)
    return left


def _detach_nbd(ours: list[dict[str, str]], log: Log) -> list[str]:
    """A root kept on NBD (copytoram=n): disconnect once nothing is mounted from it."""
    left = []
    for resource in ours:
        device = resource["device"]
        if not os.path.exists(f"/sys/block/{os.path.basename(device)}/pid"):
            continue  # not connected
        try:
            function("archiso_hook.kernel.nbd:detach")(int(device.removeprefix("/dev/nbd")))
        except (OSError, HookError) as e:
            log.warning(f"cannot disconnect {device}: {e}")
            left.append(device)
            continue
        log.info(f"disconnected {device}")
    return left


def _unmount_round(root: str, log: Log) -> bool:
    progress = False
    # Deepest first; among equals, the later mount first (it may sit on the earlier).
    targets = [t for t in syscalls.mountpoints() if under(t, root)]
    for target in sorted(targets, key=lambda t: t.count("/"), reverse=True):
        try:
            syscalls.umount(target)
        except KernelError as e:
            if e.errno not in (errno.EBUSY, errno.EINVAL, errno.ENOENT):
                log.warning(f"cannot unmount {target}: {os.strerror(e.errno)}")
            continue
        log.info(f"unmounted {target}")
        progress = True
    return progress


def _remove_round(mapper: dm.DeviceMapper, ours: list[dict[str, str]], log: Log) -> bool:
    progress = False
    present = {name for name, _, _ in mapper.list_devices()}
    for resource in reversed(ours):
        name = resource["name"]
        if name not in present or _holders(name, resource["devno"]):
            continue  # gone, or something stacked on it goes first
        if not release.dm_owned(mapper, name):
            log.warning(f"/dev/mapper/{name} is not the one the hook made: left alone")
            present.discard(name)
            continue
        try:
            mapper.remove(name)
        except KernelError:
            continue
        dm.remove_node(name)
        log.info(f"removed /dev/mapper/{name}")
        progress = True
    return progress


def _ours(resource: dict[str, str], moved: tuple[tuple[str, str], ...]) -> bool:
    """Bound, and to the file the record names (seen from the shutdown root)."""
    bound = release.loop_backing(resource["device"])
    return bound is not None and release.same_backing(resource["backing"], bound, moved)


def _detach_round(
    ours: list[dict[str, str]],
    log: Log,
    moved: tuple[tuple[str, str], ...] = (),
    warned: set[str] | None = None,
) -> bool:
    warned = set() if warned is None else warned
    progress = False
    for resource in reversed(ours):
        device = resource["device"]
        bound = release.loop_backing(device)
        if bound is None:
            continue
        if not release.same_backing(resource["backing"], bound, moved):
            if device not in warned:
                log.warning(f"{device} is bound to {bound}, not to {resource['backing']}: "
                            "left alone")  # fmt: skip
                warned.add(device)
            continue
        if release.detach_loop(device):
            log.info(f"detached {device}")
            progress = True
    return progress


def power(verb: str, log: Log) -> None:
    """The end: reboot(2) as the verb asks (poweroff when it is unknown). Never returns:
    PID 1 exiting would panic the kernel, so a refused call tries poweroff, then halt."""
    with contextlib.suppress(OSError):
        os.sync()
    for how in dict.fromkeys((verb if verb in REBOOT else "poweroff", "poweroff", "halt")):
        try:
            syscalls.reboot(REBOOT[how])
        except KernelError as e:
            log.error(f"reboot({how}) failed: {os.strerror(e.errno)}")
    while True:  # nothing more can be done: stop here rather than panic
        time.sleep(3600)


def run(verb: str, log: Log) -> int:
    """Take the storage apart, as far as it goes; as PID 1, then end the machine's life
    as asked whatever happened on the way (a corrupt state, a failing ioctl)."""
    left: list[str] = ["?"]
    try:
        left = take_apart(verb, log)
    except BaseException as e:  # noqa: BLE001  (nothing may stop the power-off)
        log.error(f"shutdown: {type(e).__name__}: {e}; going on with the {verb}")
    if os.getpid() == 1:  # we are the last process: end the machine's life as asked
        power(verb, log)
    return 1 if left else 0


def take_apart(verb: str, log: Log) -> list[str]:
    start = time.monotonic()
    log.info(f"shutdown ({verb}): taking the live system's storage apart")
    try:
        mount_api_filesystems()
    except (OSError, HookError) as e:
        log.warning(f"{e}")
    stop_watchdog(log)
    state = None
    try:
        if not os.path.isdir(f"{OLDROOT}{RUN_DIR}"):
            raise FileNotFoundError  # no state there: no lock to take either
        with locked(f"{OLDROOT}{STATE_FILE}", command="shutdown", wait=2.0):
            state = find_state(log)
    except (OSError, HookError) as e:  # no lock to be had: read it all the same
        if not isinstance(e, FileNotFoundError):
            log.warning(f"{e}")
        state = find_state(log)
    move_run_aside(log)
    left = teardown(state, log)
    if left:
        log.warning("still busy, left as they are: " + ", ".join(left))
    else:
        log.info(f"nothing left busy ({time.monotonic() - start:.2f} s)")
    return left
