"""Keep an NBD root connected when its server restarts, as `nbd-client -persist` does.

Run by `archiso-hook watch`, one thread a device. The kernel keeps the device's
requests waiting for up to NBD_ATTR_DEAD_CONN_TIMEOUT seconds when its connection dies,
and says so to the nbd_mc_group multicast group (NBD_CMD_LINK_DEAD). Then, with back-off
while the server is away: a new TCP connection to the address the boot connected to (no
name lookup: /etc may be on the export itself), the handshake again, the export's size
checked against the boot's, and the socket handed to the kernel (NBD_CMD_RECONFIGURE),
which resumes the waiting requests on it. A missed event (the connection died before
the watchdog listened) is caught by looking for the connection in /proc/net/tcp.

Everything it needs is imported and opened before the watchdog says it is ready: once
the root is on the export, a file read from it could wait for the very server this waits
for.
"""

from __future__ import annotations

import socket
import struct
import threading
import time
from typing import Any

from archiso_hook.errors import HookError
from archiso_hook.kernel import genl, nbd
from archiso_hook.log import Log
from archiso_hook.sizes import human

POLL = 5.0  # seconds between looks for the connection when no event comes
FIRST_DELAY = 0.5  # seconds before the second attempt, doubled up to MAX_DELAY
MAX_DELAY = 5.0  # well within the dead-connection timeout: reads resume soon after
REPORT_EVERY = 30.0  # seconds between lines while the same error repeats


def link_of(record: dict[str, Any]) -> nbd.Link | None:
    """The nbd.Link of a state record, or None when the boot did not record enough
    (an older hook) or something no boot writes."""
    device, address = record.get("device"), record.get("address")
    port, size, timeout = record.get("port"), record.get("size"), record.get("timeout")
    name = record.get("export")
    if not (isinstance(device, str) and device.startswith("/dev/nbd")):
        return None
    index = device.removeprefix("/dev/nbd")
    numbers = (port, size, timeout)
    if not index.isdigit() or not all(isinstance(n, int) and n > 0 for n in numbers):
        return None
    if not isinstance(name, str) or not isinstance(address, str):
        return None
    try:
        socket.inet_pton(socket.AF_INET6 if ":" in address else socket.AF_INET, address)
    except (OSError, ValueError):
        return None
    assert isinstance(port, int) and isinstance(size, int) and isinstance(timeout, int)
    return nbd.Link(int(index), address, port, name, size, timeout)


class LinkKeeper:
    """Reconnects one NBD device whenever its connection dies."""

    def __init__(self, link: nbd.Link, log: Log) -> None:
        self.link = link
        self.log = log
        self.requests = genl.GenericNetlink()
        self.family, groups = self.requests.family(nbd.NBD_FAMILY)
        self.events = genl.GenericNetlink()
        if nbd.NBD_MCAST_GROUP in groups:
            self.events.subscribe(groups[nbd.NBD_MCAST_GROUP])
        self.reconnections = 0

    def start(self) -> None:
        self.log.info(
            f"watching {self.link.device}'s connection to the NBD server {self.link.server}: "
            "it is made again if it breaks"
        )
        threading.Thread(target=self.run, daemon=True, name="nbd-keeper").start()

    def run(self) -> None:
        misses = 0
        while True:
            try:
                events = self.events.events(POLL)
            except OSError as e:  # ENOBUFS: events were lost; look at the connection
                self.log.debug(f"watch: {self.link.device}: {e}")
                events = []
            dead = any(
                cmd == nbd.NBD_CMD_LINK_DEAD
                and attrs_.get(nbd.NBD_ATTR_INDEX, b"")[:4] == struct.pack("=I", self.link.index)
                for cmd, attrs_ in events
            )
            if dead:
                why = "the kernel reports it dead"
            elif events:
                continue
            else:
                try:
                    alive = nbd.tcp_established((self.link.address, self.link.port))
                except OSError:  # /proc is being moved by switch_root
                    continue
                misses = 0 if alive else misses + 1
                if misses < 2:
                    continue
                why = "it is no longer open"
            misses = 0
            self.restore(why)

    def restore(self, why: str) -> None:
        link = self.link
        start = time.monotonic()
        self.log.warning(
            f"lost {link.device}'s connection to the NBD server {link.server} ({why}): "
            f"reads of the live system wait for it up to {link.timeout} s; reconnecting"
        )
        delay, attempts, last, reported = FIRST_DELAY, 0, "", 0.0
        while True:
            attempts += 1
            try:
                export = nbd.reconnect(link, self.requests, self.family)
            except nbd.LinkAliveError:
                self.log.info(f"{link.device}'s connection to {link.server} is alive: kept it")
                return
            except (HookError, OSError) as e:
                now = time.monotonic()
                text = str(e)
                if text != last or now - reported >= REPORT_EVERY:
                    log = self.log.error if "refusing" in text else self.log.warning
                    log(
                        f"reconnecting {link.device} to {link.server}: attempt {attempts} "
                        f"failed after {now - start:.0f} s: {text}; trying again every "
                        f"{MAX_DELAY:.0f} s at most"
                    )
                    last, reported = text, now
                time.sleep(delay)
                delay = min(delay * 2, MAX_DELAY)
                continue
            self.reconnections += 1
            self._drain()
            self.log.info(
                f"reconnected {link.device} to the NBD server {link.server} after "
                f"{time.monotonic() - start:.1f} s ({attempts} attempt(s)): export "
                f"{link.name!r}, {human(export.size)} as at boot"
            )
            return

    def _drain(self) -> None:
        """Forget the events of the connection just replaced."""
        while True:
            try:
                if not self.events.events(0.01):
                    return
            except OSError:
                return


def keepers(records: list[dict[str, Any]], log: Log) -> list[LinkKeeper]:
    """A keeper for each NBD device the boot left attached, its sockets open."""
    found = []
    for record in records:
        link = link_of(record)
        if link is None:
            log.warning(
                f"watch: {record.get('device')} was attached by a hook that recorded too "
                "little to reconnect it: it is not kept connected"
            )
            continue
        try:
            found.append(LinkKeeper(link, log))
        except (HookError, OSError) as e:
            log.warning(f"watch: cannot keep {link.device} connected: {e}")
    return found
