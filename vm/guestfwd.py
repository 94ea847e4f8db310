"""Relay one guest TCP connection to a server on the host's loopback.

QEMU runs this for each connection a guest opens to a `guestfwd=tcp:ADDR:PORT-cmd:...`
address of its user-mode network (see `vm.qemu.Forward`): libslirp spawns the command
with its stdin, stdout *and stderr* on the guest's connection (a TCP socket pair on the
host's loopback) in a session of its own. So this program never writes to stderr (that
would go to the guest as data); it logs one line per connection to LOG instead:

    <unix time> <pid> connect 127.0.0.1:<port> ok
    <unix time> <pid> connect 127.0.0.1:<port> failed: <error>
    <unix time> <pid> done 127.0.0.1:<port> to_server=<bytes> to_guest=<bytes>

When the server refuses the connection (it is stopped) the guest's connection is
closed at once: the guest sees its connect succeed (slirp completed the handshake
before this ran), then a reset when it had sent data already (an HTTP request: the
close finds it unread), else end of file; never "connection refused". A half-close
on either side is passed on (shutdown of the other side's writing end); the relay
exits when both directions ended, or on an error. Only the standard library, and
only 127.0.0.1: usage

    python3 -I -S vm/guestfwd.py PORT LOG
"""

from __future__ import annotations

import contextlib
import os
import selectors
import socket
import sys
import time

HOST = "127.0.0.1"
CHUNK = 256 * 1024


def _log(path: str, message: str) -> None:
    line = f"{time.time():.3f} {os.getpid()} {message}\n".encode()
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line)
        finally:
            os.close(fd)


def relay(guest: socket.socket, server: socket.socket) -> tuple[int, int]:
    """Copy both ways until both directions ended; the bytes (to server, to guest)."""
    sent = {guest: 0, server: 0}
    peer = {guest: server, server: guest}
    open_ends = {guest, server}
    sel = selectors.DefaultSelector()
    for sock in open_ends:
        sel.register(sock, selectors.EVENT_READ)
    while open_ends:
        for key, _ in sel.select():
            src: socket.socket = key.fileobj  # type: ignore[assignment]
            dst = peer[src]
            try:
                data = src.recv(CHUNK)
            except OSError:  # reset: nothing more comes from either side
                return sent[guest], sent[server]
            if data:
                try:
                    dst.sendall(data)
                except OSError:
                    return sent[guest], sent[server]
                sent[src] += len(data)
                continue
            sel.unregister(src)
            open_ends.discard(src)
            with contextlib.suppress(OSError):
                dst.shutdown(socket.SHUT_WR)
    return sent[guest], sent[server]


def main(argv: list[str]) -> int:
    # Whatever happens, nothing may reach the guest through stderr.
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    os.close(devnull)
    if len(argv) != 3:
        return 2
    port, log = int(argv[1]), argv[2]
    guest = socket.socket(fileno=os.dup(0))
    for fd in (0, 1):
        os.close(fd)
    try:
        server = socket.create_connection((HOST, port), timeout=10)
    except OSError as e:
        _log(log, f"connect {HOST}:{port} failed: {e.strerror or e}")
        guest.close()
        return 1
    server.settimeout(None)
    _log(log, f"connect {HOST}:{port} ok")
    try:
        to_server, to_guest = relay(guest, server)
    finally:
        server.close()
        guest.close()
    _log(log, f"done {HOST}:{port} to_server={to_server} to_guest={to_guest}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
