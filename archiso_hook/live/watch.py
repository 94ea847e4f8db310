"""`archiso-hook watch`: keep the COW of every snapshot from filling up.

Started by the hook just before the switch to the live root, it keeps running in
the live system. Every `interval` seconds, and at once when a snapshot reports a
device-mapper event (DM_DEV_WAIT: it became invalid or overflowed), it reads each
snapshot's usage and the cowspace, warns at 80/90/95 % of what the COW can reach,
and grows a COW in RAM ahead of the writes: first the cowspace tmpfs, then the COW
file, then the loop device (LOOP_SET_CAPACITY); the snapshot target reads its COW
device's size at every allocation, so it never sees a full device.

Its argv[0] begins with `@`: systemd leaves such initrd processes alone when it
kills what is left at shutdown (systemd.io/ROOT_STORAGE_DAEMONS); archiso-hook's
own shutdown stops it before taking the snapshots down.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from typing import TYPE_CHECKING, Any

import attrs

from archiso_hook.boot.state import State, locked
from archiso_hook.errors import HookError
from archiso_hook.kernel import dm, loop, syscalls
from archiso_hook.lazy import function
from archiso_hook.live.growth import RateMeter, Usage, grow_to, warning_level
from archiso_hook.log import Log
from archiso_hook.paths import READY_FILE, STATE_FILE
from archiso_hook.sizes import human

if TYPE_CHECKING:
    from archiso_hook.live.nbdkeep import LinkKeeper

ARGV0 = "@archiso-hook"


class RootFollower:
    """switch_root changes PID 1's root, not ours: we would be left in the emptied
    initramfs, where /run, /proc and /dev no longer are. A descriptor on /proc,
    opened before, still reaches /proc/1/root: when it differs from our root, we
    chroot into it (the live system, where /run/initramfs is reachable again)."""

    def __init__(self) -> None:
        self.proc = os.open("/proc", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)

    def follow(self) -> bool:
        try:
            theirs = os.stat("1/root", dir_fd=self.proc)
            ours = os.stat("/")
        except OSError:
            return False
        if (theirs.st_dev, theirs.st_ino) == (ours.st_dev, ours.st_ino):
            return False
        fd = os.open("1/root", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=self.proc)
        try:
            os.fchdir(fd)
            os.chroot(".")
        finally:
            os.close(fd)
        os.chdir("/")
        return True


def mem_available() -> int:
    """MemAvailable from /proc/meminfo (psutil would cost the daemon a few MiB of RSS)."""
    with open("/proc/meminfo", encoding="ascii") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 0


@attrs.define
class Watched:
    name: str
    cow_device: str
    cow_file: str
    chunk: int  # bytes
    need: int  # the most the COW can ever use
    meter: RateMeter = attrs.Factory(RateMeter)
    warned: int = 0  # the warning level already logged
    state: str = "Active"


class Watchdog:
    def __init__(self, log: Log, *, state_file: str = STATE_FILE, interval: float = 0.25) -> None:
        self.log = log
        self.state_file = state_file
        self.interval = interval
        self.state = State.load(state_file)
        self.policy: dict[str, Any] = self.state.cow
        self.snapshots = [
            Watched(r["name"], r["cow"], r["cow_file"], r["chunk_sectors"] * 512, r["cow_need"])
            for r in cow_file_records(self.state)
        ]
        self.mapper = dm.DeviceMapper()
        self.wake = threading.Event()
        self.stop = False
        self.root = RootFollower()
        # An NBD root (copytoram=n): kept connected when its server restarts.
        self.keepers: list[LinkKeeper] = []
        if nbd_records(self.state):
            keepers = function("archiso_hook.live.nbdkeep:keepers")  # only with an NBD root
            self.keepers = keepers(nbd_records(self.state), log)

    def run(self) -> None:
        for snapshot in self.snapshots:
            threading.Thread(target=self._events, args=(snapshot.name,), daemon=True).start()
        for keeper in self.keepers:
            keeper.start()
        growth = (
            f"up to {human(self.policy['grow_max'])} of RAM" if self.policy.get("grow") else "off"
        )
        what = [f"{len(self.snapshots)} snapshot(s); growth {growth}"] if self.snapshots else []
        what += [f"{k.link.device} on {k.link.server}" for k in self.keepers]
        self.log.info("watching " + ", ".join(what or ["nothing"]))
        while not self.stop:
            if self.root.follow():
                self.log.info("watch: followed the switch into the live system")
            try:
                self.tick()
            except (OSError, HookError) as e:  # e.g. while switch_root moves /run away
                self.log.debug(f"watch: skipped a look: {e}")
            self.wake.wait(self.interval)
            self.wake.clear()

    def _events(self, name: str) -> None:
        """Wake the main loop whenever the snapshot reports an event."""
        mapper = dm.DeviceMapper()
        try:
            event = mapper.info(name).event_nr
            while not self.stop:
                event = mapper.wait_event(name, event).event_nr
                self.wake.set()
        except HookError:
            return  # the device went away (shutdown)
        finally:
            mapper.close()

    def tick(self) -> None:
        sizes = {s.name: os.stat(s.cow_file).st_size for s in self.snapshots}
        budget = self.policy.get("grow_max", 0) - sum(sizes.values())
        for snapshot in self.snapshots:
            try:
                (target,) = self.mapper.status(snapshot.name)
            except (HookError, ValueError):
                continue
            status = dm.SnapshotStatus.parse(target.params)
            if status.state != snapshot.state:
                snapshot.state = status.state
                if status.state == "Overflow":
                    self.log.error(
                        f"the COW of {snapshot.name} is full: writes to it fail, reads still work"
                    )
                elif status.state != "Active":
                    self.log.error(f"the snapshot {snapshot.name} is {status.state}")
            if status.allocated is None or status.total is None:
                self.log.debug(f"watch: {snapshot.name}: {target.params}")
                continue
            size = status.total * 512
            grows = bool(self.policy.get("grow"))
            ceiling = min(snapshot.need, size + max(0, budget)) if grows else size
            usage = Usage(status.allocated * 512, size, max(ceiling, size))
            rate = snapshot.meter.add(time.monotonic(), usage.allocated)
            self._warn(snapshot, usage, grows)
            if grows:
                new = grow_to(usage, rate, mem_available(), snapshot.chunk)
                if new is not None:
                    self.grow(snapshot, size, new, usage)
                    budget -= new - size

    def _warn(self, snapshot: Watched, usage: Usage, grows: bool) -> None:
        level = warning_level(usage) or 0
        if level > snapshot.warned:
            more = "cannot grow further" if grows else "growth is off (cow_grow=n)"
            self.log.warning(
                f"the COW of {snapshot.name} is {level}% full: {human(usage.allocated)} used "
                f"of at most {human(usage.ceiling)} ({more}); when it is full, writes to the "
                "live system fail"
            )
        snapshot.warned = level

    def grow(self, snapshot: Watched, size: int, new: int, usage: Usage) -> None:
        """tmpfs, then file, then loop device: each step has room for the next."""
        start = time.monotonic()
        try:
            if self.policy.get("tmpfs"):
                space = self.policy["space"]
                fs = os.statvfs(space)
                capacity = fs.f_blocks * fs.f_frsize
                syscalls.mount(
                    "", space, None, syscalls.MS_REMOUNT, f"size={capacity + new - size}"
                )
            os.truncate(snapshot.cow_file, new)
            fd = os.open(snapshot.cow_device, os.O_RDONLY | os.O_CLOEXEC)
            try:
                loop.set_capacity(fd, snapshot.cow_device)
            finally:
                os.close(fd)
        except (OSError, HookError) as e:
            self.log.error(f"could not grow the COW of {snapshot.name}: {e}")
            return
        took = time.monotonic() - start
        self.log.info(
            f"grew the COW of {snapshot.name} from {human(size)} to {human(new)} in "
            f"{took * 1000:.0f} ms ({human(usage.allocated)} used, at most "
            f"{human(usage.ceiling)})"
        )
        try:  # the new size, for `status` and the next boot's accounting
            with locked(self.state_file, command="watch", wait=2.0):
                self.state = State.load(self.state_file)
                for resource in self.state.resources:
                    if resource["kind"] == "file" and resource["path"] == snapshot.cow_file:
                        resource["apparent_bytes"] = new
                self.state.timings["last_growth_seconds"] = round(took, 4)
                self.state.save(self.state_file)
        except (OSError, ValueError, HookError) as e:
            self.log.warning(f"watch: could not record the new size in {self.state_file}: {e}")


def cow_file_records(state: State) -> list[dict[str, Any]]:
    """The snapshots whose COW is a file: what the watchdog watches and grows."""
    return [r for r in state.resources if r.get("kind") == "dm" and "cow_file" in r]


def nbd_records(state: State) -> list[dict[str, Any]]:
    """The NBD devices the boot left attached: the live root is on the server."""
    return [r for r in state.resources if r.get("kind") == "nbd"]


def nothing_to_watch(state: State) -> str | None:
    """Why the live system needs no watchdog, as the log says it; None if it does.

    It does for an NBD root (kept connected), and for a snapshot in RAM whose COW file
    is smaller than the most its origin can ever need (`cow_need`): that COW could fill,
    so it is grown, and warned about. A COW that holds all its origin can change never
    fills, and a warning that it is 80 % full would be a false alarm: with only such
    snapshots there is nothing to do, and the watchdog's memory (a Python heap, about
    10 MiB, until the power-off) is better left to the live system.
    """
    if nbd_records(state):
        return None
    snapshots = cow_file_records(state)
    if not state.cow or not snapshots:
        return "no snapshot in RAM to watch, no NBD root to keep connected"
    for record in snapshots:
        try:
            if os.stat(record["cow_file"]).st_size < record["cow_need"]:
                return None
        except (OSError, KeyError, TypeError):
            return None  # the watchdog will say what is wrong
    return (
        f"the COW of each snapshot ({len(snapshots)}) holds all that its origin can change: "
        "none can fill, and there is no NBD root to keep connected"
    )


def run_foreground(log: Log, interval: float) -> int:
    try:
        state = State.load()
    except FileNotFoundError:
        pass
    except (OSError, ValueError) as e:  # never a traceback: say it, and do nothing
        log.error(f"watch: cannot read the boot's state, nothing to watch: {e}")
        return 1
    else:
        reason = nothing_to_watch(state)
        if reason:
            log.info(f"watch: not needed: {reason}")
            return 0
    watchdog = Watchdog(log, interval=interval)

    def stop(signum: int, frame: object) -> None:
        watchdog.stop = True
        watchdog.wake.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    # Everything is imported and opened: the hook may now let switch_root go ahead.
    with open(READY_FILE, "w", encoding="ascii") as f:
        f.write(f"{os.getpid()}\n")
    watchdog.run()
    # A daemon with nothing to clean up: no interpreter teardown (seconds under emulation)
    # while the shutdown waits for it.
    sys.stderr.flush()
    os._exit(0)
