"""NBD: the handshake against Debian's nbd-server on 127.0.0.1, and the netlink packing.

Attaching to /dev/nbd0 needs the nbd module (not on this host): the QEMU tests boot
from NBD through the kernel's netlink interface.
"""

from __future__ import annotations

import shutil
import socket
import struct
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from archiso_hook import nbd

pytestmark = pytest.mark.skipif(
    shutil.which("nbd-server") is None, reason="nbd-server is installed by make setup"
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def listening(port: int) -> bool:
    with open("/proc/net/tcp", encoding="ascii") as f:
        return any(
            line.split()[1] == f"0100007F:{port:04X}" and line.split()[3] == "0A"
            for line in f.readlines()[1:]
        )


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[int, bytes]]:
    data = bytes(range(256)) * 4096  # 1 MiB
    (tmp_path / "disk.img").write_bytes(data)
    port = free_port()
    config = tmp_path / "nbd.conf"
    config.write_text(
        f"[generic]\n    listenaddr = 127.0.0.1\n    port = {port}\n    allowlist = true\n"
        f"[archiso]\n    exportname = {tmp_path / 'disk.img'}\n    readonly = true\n"
    )
    proc = subprocess.Popen(
        ["nbd-server", "-C", str(config), "-d"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        # Not by connecting: nbd-server -d serves one connection, then exits.
        for _ in range(200):
            if listening(port):
                break
            time.sleep(0.05)
        yield port, data
    finally:
        proc.terminate()
        proc.wait(10)


def read_block(sock: socket.socket, offset: int, length: int) -> bytes:
    """NBD_CMD_READ (0) on a negotiated socket: what the kernel would do."""
    sock.sendall(struct.pack(">IHHQQI", 0x25609513, 0, 0, 7, offset, length))
    reply = nbd._recv(sock, 16)
    magic, error, handle = struct.unpack(">IIQ", reply)
    assert (magic, error, handle) == (0x67446698, 0, 7)
    return nbd._recv(sock, length)


def test_handshake_gives_size_flags_and_a_working_socket(server: tuple[int, bytes]) -> None:
    port, data = server
    sock, export = nbd.connect("127.0.0.1", port, "archiso")
    with sock:
        assert export.size == len(data)
        assert export.flags & nbd.TRANSMISSION_READ_ONLY
        assert read_block(sock, 4096, 512) == data[4096 : 4096 + 512]


def test_unknown_export_is_named(server: tuple[int, bytes]) -> None:
    port, _ = server
    with pytest.raises(nbd.NbdError, match="the NBD server has no export named 'nope'"):
        nbd.connect("127.0.0.1", port, "nope")


def test_no_server_is_a_clear_error() -> None:
    with pytest.raises(nbd.NbdError, match=r"cannot connect to the NBD server 127.0.0.1:\d+: "):
        nbd.connect("127.0.0.1", free_port(), "archiso")


def test_connect_message_packing() -> None:
    export = nbd.Export(size=1 << 30, flags=3, block_size=4096)
    attrs = nbd.parse_attrs(nbd.connect_message(5, export, 0, 60))
    assert struct.unpack("=I", attrs[nbd.NBD_ATTR_INDEX]) == (0,)
    assert struct.unpack("=Q", attrs[nbd.NBD_ATTR_SIZE_BYTES]) == (1 << 30,)
    assert struct.unpack("=Q", attrs[nbd.NBD_ATTR_BLOCK_SIZE_BYTES]) == (4096,)
    assert struct.unpack("=Q", attrs[nbd.NBD_ATTR_SERVER_FLAGS]) == (3,)
    item = nbd.parse_attrs(attrs[nbd.NBD_ATTR_SOCKETS])[nbd.NBD_SOCK_ITEM]
    assert struct.unpack("=I", nbd.parse_attrs(item)[nbd.NBD_SOCK_FD]) == (5,)


def test_generic_netlink_resolves_a_family_on_this_kernel() -> None:
    netlink = nbd.GenericNetlink()
    try:
        assert netlink.family_id("nlctrl") == nbd.GENL_ID_CTRL
    finally:
        netlink.close()
