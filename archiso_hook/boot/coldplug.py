"""The hook as its own coldplug, for an initramfs without udev (`HOOKS=(base archiso)`).

What udev's coldplug does for the boot: load the driver of every device the kernel knows
of (`udevadm trigger` and 80-drivers.rules: modprobe of each device's MODALIAS), and of
every device that appears as those drivers probe, until the medium is there. Here: the
kernel's uevents are subscribed to first (kernel/uevent.py), then each bus device's
`modalias` in sysfs is resolved and loaded with the initramfs's module indexes
(kernel/kmod.py, finit_module: no modprobe runs), then each add event's MODALIAS is.
Device nodes come from devtmpfs; a node it lacks is made with mknod. Labels and UUIDs
are the hook's own reading (boot/blockid.py). After switch_root the live system's udev
takes over: its coldplug sees every device and makes the links.
"""

from __future__ import annotations

import os
import stat
import time
from collections.abc import Callable, Iterator, Sequence

from archiso_hook.boot import medium, modules
from archiso_hook.errors import HookError
from archiso_hook.kernel import kmod
from archiso_hook.kernel.uevent import Uevent, UeventSocket, device_node
from archiso_hook.log import Log

SYS_BUS = "/sys/bus"


def bus_modaliases(sys_bus: str = SYS_BUS) -> Iterator[str]:
    """The modalias of every device on a bus (PCI, ACPI, platform, SCSI, virtio, USB...),
    where a driver binds; a device without one, or gone meanwhile, is skipped."""
    try:
        buses = sorted(os.listdir(sys_bus))
    except OSError:
        return
    for bus in buses:
        devices = os.path.join(sys_bus, bus, "devices")
        try:
            names = sorted(os.listdir(devices))
        except OSError:
            continue
        for name in names:
            try:
                with open(os.path.join(devices, name, "modalias"), "rb") as f:
                    alias = f.read().strip().decode("ascii", errors="replace")
            except OSError:
                continue
            if alias:
                yield alias


def static_nodes(text: str) -> list[tuple[str, str, int, int]]:
    """modules.devname's nodes: (name under /dev, 'c' or 'b', major, minor), as `kmod
    static-nodes` reads them; malformed lines are skipped."""
    nodes = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) != 3 or line.startswith("#"):
            continue
        _module, name, spec = fields
        kind, numbers = spec[:1], spec[1:]
        major, sep, minor = numbers.partition(":")
        if kind in ("c", "b") and sep and major.isdigit() and minor.isdigit():
            nodes.append((name, kind, int(major), int(minor)))
    return nodes


def make_static_nodes(root: str, dev: str = "/dev") -> list[str]:
    """The nodes whose opening loads their module (loop-control, mapper/control...), as
    the udev hook makes them with `kmod static-nodes`: without them a path that opens
    /dev/loop-control before loop is loaded (an ISO file on a disk) finds nothing."""
    try:
        with open(os.path.join(root, "modules.devname"), encoding="utf-8") as f:
            text = f.read()
    except OSError:
        return []
    made = []
    for name, kind, major, minor in static_nodes(text):
        path = os.path.join(dev, name)
        if name.startswith("/") or ".." in name.split("/") or os.path.lexists(path):
            continue
        mode = (stat.S_IFCHR if kind == "c" else stat.S_IFBLK) | 0o600
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            os.mknod(path, mode, os.makedev(major, minor))
        except OSError:
            continue
        made.append(path)
    return made


class Coldplug:
    """Drivers for the devices there now, then for those that appear; `events` wakes the
    waiting hook."""

    def __init__(self, log: Log, index: kmod.ModuleIndex | None = None) -> None:
        self.log = log
        self.events = UeventSocket()  # before sysfs is read: nothing added goes unseen
        self._index = index
        self._seen: set[str] = set()
        self.loaded: list[str] = []
        self.seconds = 0.0  # time spent loading drivers

    @property
    def index(self) -> kmod.ModuleIndex:
        if self._index is None:
            self._index = modules.default_index()
        return self._index

    def scan(self) -> None:
        """Load the drivers of every device present."""
        self.load_for(bus_modaliases())

    def load_for(self, aliases: Iterator[str] | list[str]) -> None:
        start = time.monotonic()
        for alias in aliases:
            if alias in self._seen:
                continue
            self._seen.add(alias)
            try:
                names = self.index.lookup(alias)
            except HookError:
                continue  # no driver in the image: as udev, nothing to do
            try:
                inserted = self.index.load(*names)
            except HookError as e:  # a driver that fails its probe: udev goes on too
                self.log.debug(f"driver for {alias}: {e}")
                continue
            if inserted:
                self.log.debug(f"loaded {', '.join(inserted)} for {alias}")
                self.loaded += inserted
        self.seconds += time.monotonic() - start

    def handle(self, events: list[Uevent]) -> set[str]:
        """Drivers and nodes for new devices; the subsystems the events were of."""
        if self.events.overflowed:  # some were lost: what sysfs shows now stands for them
            self.events.overflowed = False
            self.scan()
        aliases = []
        for event in events:
            if event.action == "add":
                device_node(event)
                alias = event.env.get("MODALIAS")
                if alias:
                    aliases.append(alias)
        self.load_for(aliases)
        return {event.subsystem for event in events}

    def close(self) -> None:
        self.events.close()


_running: Coldplug | None = None


def start(log: Log) -> Coldplug:
    """The process's coldplug: the first call subscribes and loads the drivers of what is
    there; later calls (a later wait: the NBD device, the network) share it."""
    global _running  # noqa: PLW0603  (one event subscription per process)
    if _running is None:
        _running = Coldplug(log)
        made = make_static_nodes(_running.index.root)
        if made:
            log.debug(f"static device nodes: {', '.join(made)}")
        _running.scan()
        log.info(
            f"no udev: loaded {len(_running.loaded)} driver(s) for the devices present "
            f"in {_running.seconds:.2f} s"
        )
    return _running


def stop() -> None:
    """Unsubscribe: once the live root is mounted nothing reads the events, and the
    watchdog forked later would keep the socket, and the kernel queue events for it."""
    global _running  # noqa: PLW0603
    if _running is not None:
        _running.close()
        _running = None


def wait_until(
    find: Callable[[], str | None],
    timeout: float,
    what: str,
    log: Log,
    *,
    subsystem: str,
    meanwhile: Sequence[Callable[[], None]],
) -> tuple[str | None, str]:
    """medium.wait_until as the hook's own coldplug: the drivers of what is there first (all of
    them, as udev's coldplug loads them: the emergency shell's keyboard too), then of
    each device the kernel adds, looking again after each batch of events."""
    plug = start(log)
    if subsystem == "block":
        medium.enable_media_polling(log)
    # From here, as rootdelay counts with udev from its settled coldplug.
    began = time.monotonic()
    deadline = began + timeout
    pending = list(meanwhile)
    waiting = False
    while True:
        found = find()
        if found:
            if waiting:
                log.info(f"found {what}: {found}, after {time.monotonic() - began:.2f} s")
            return found, ""
        if not waiting:
            log.info(f"waiting up to {timeout:g} s for {what}")
            waiting = True
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return None, medium.describe_devices() if subsystem == "block" else ""
        events = plug.events.read()
        if events:
            if any(e.action == "change" for e in events):
                medium.forget_identities()
            elif any(e.subsystem == "block" for e in events):
                medium.forget_unidentified()
            plug.handle(events)
            continue
        if pending:
            pending.pop(0)()
            continue
        # Woken by an event, or to look again at what did not read yet (medium.identity).
        plug.events.wait(min(remaining, medium.REREAD_UNIDENTIFIED))
