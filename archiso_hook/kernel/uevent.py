"""The kernel's device events (uevents), read from its netlink socket as udevd reads them.

Each message is `ACTION@DEVPATH` followed by NUL-separated `KEY=VALUE` pairs (ACTION,
DEVPATH, SUBSYSTEM, SEQNUM, and per device MODALIAS, DEVNAME, MAJOR, MINOR, DEVTYPE...).
The kernel sends them to multicast group 1; udevd's own announcements (group 2, starting
with "libudev") are not listened to here.
"""

from __future__ import annotations

import contextlib
import errno
import os
import select
import socket

import attrs

KERNEL_GROUP = 1
# A coldplug's worth of events: the kernel's bursts while drivers probe must not overflow
# the queue between two reads (SO_RCVBUFFORCE needs CAP_NET_ADMIN: an initramfs has it).
RECEIVE_BUFFER = 8 << 20
_SO_RCVBUFFORCE = 33
NETLINK_KOBJECT_UEVENT = 15  # linux/netlink.h (the socket module names it on Linux only)


@attrs.frozen
class Uevent:
    action: str
    devpath: str
    env: dict[str, str] = attrs.field(factory=dict)

    @property
    def subsystem(self) -> str:
        return self.env.get("SUBSYSTEM", "")

    @classmethod
    def parse(cls, message: bytes) -> Uevent | None:
        """One kernel message; None for anything else (udevd's, or malformed)."""
        parts = message.split(b"\0")
        head = parts[0].decode("utf-8", errors="surrogateescape")
        action, sep, devpath = head.partition("@")
        if not sep or not devpath.startswith("/"):
            return None
        env: dict[str, str] = {}
        for part in parts[1:]:
            key, sep, value = part.decode("utf-8", errors="surrogateescape").partition("=")
            if sep:
                env[key] = value
        return cls(env.get("ACTION", action), env.get("DEVPATH", devpath), env)


class UeventSocket:
    """The kernel's uevents as they come: open it before looking at sysfs, so that no
    device added in between goes unseen."""

    def __init__(self) -> None:
        self._sock = socket.socket(
            socket.AF_NETLINK,
            socket.SOCK_DGRAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK,
            NETLINK_KOBJECT_UEVENT,
        )
        with contextlib.suppress(OSError):
            self._sock.setsockopt(socket.SOL_SOCKET, _SO_RCVBUFFORCE, RECEIVE_BUFFER)
        self._sock.bind((0, KERNEL_GROUP))
        self.overflowed = False  # events were lost: the caller should look at sysfs again

    def fileno(self) -> int:
        return self._sock.fileno()

    def wait(self, timeout: float) -> bool:
        """Whether an event is there to read, waiting up to `timeout` seconds."""
        poller = select.poll()
        poller.register(self._sock, select.POLLIN)
        return bool(poller.poll(max(0, int(timeout * 1000))))

    def read(self) -> list[Uevent]:
        """Every event queued now (none if nothing is)."""
        events: list[Uevent] = []
        while True:
            try:
                message = self._sock.recv(1 << 16)
            except BlockingIOError:
                return events
            except OSError as e:
                if e.errno != errno.ENOBUFS:
                    raise
                self.overflowed = True
                continue
            event = Uevent.parse(message)
            if event is not None:
                events.append(event)

    def close(self) -> None:
        self._sock.close()


def device_node(event: Uevent, dev: str = "/dev") -> str | None:
    """Make the node an add event names if devtmpfs has not (it makes them all when it is
    mounted; without it, or for a name it lacks, as udev would); its path or None."""
    name = event.env.get("DEVNAME")
    major, minor = event.env.get("MAJOR"), event.env.get("MINOR")
    if not name or major is None or minor is None or event.action != "add":
        return None
    if name.startswith("/") or ".." in name.split("/"):
        return None
    path = os.path.join(dev, name)
    if os.path.lexists(path):
        return path
    kind = 0o060000 if event.subsystem == "block" else 0o020000  # S_IFBLK, S_IFCHR
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        os.mknod(path, kind | 0o600, os.makedev(int(major), int(minor)))
    except (OSError, ValueError):
        return None
    return path
