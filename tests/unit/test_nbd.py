"""NBD: the handshake against Debian's nbd-server on 127.0.0.1, and against a lying
server (a thread here) whose every statement must be checked; the netlink packing.

Attaching to /dev/nbd0 needs the nbd module (not on this host): the QEMU tests boot
from NBD through the kernel's netlink interface, and reconnect it
(tests/vm/test_52_net_nbd_restart.py).
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from archiso_hook.kernel import genl, nbd
from archiso_hook.live import nbdkeep

needs_nbd_server = pytest.mark.skipif(
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


@needs_nbd_server
def test_handshake_gives_size_flags_and_a_working_socket(server: tuple[int, bytes]) -> None:
    port, data = server
    sock, export = nbd.connect("127.0.0.1", port, "archiso")
    with sock:
        assert export.size == len(data)
        assert export.flags & nbd.TRANSMISSION_READ_ONLY
        assert read_block(sock, 4096, 512) == data[4096 : 4096 + 512]


@needs_nbd_server
def test_unknown_export_is_named(server: tuple[int, bytes]) -> None:
    port, _ = server
    with pytest.raises(nbd.NbdError, match="the NBD server has no export named 'nope'"):
        nbd.connect("127.0.0.1", port, "nope")


def test_no_server_is_a_clear_error() -> None:
    with pytest.raises(nbd.NbdError, match=r"cannot connect to the NBD server 127.0.0.1:\d+: "):
        nbd.connect("127.0.0.1", free_port(), "archiso")


def test_connect_message_packing() -> None:
    export = nbd.Export(size=1 << 30, flags=3, block_size=4096)
    attrs = genl.parse_attrs(nbd.connect_message(5, export, 0, 60))
    assert struct.unpack("=I", attrs[nbd.NBD_ATTR_INDEX]) == (0,)
    assert struct.unpack("=Q", attrs[nbd.NBD_ATTR_SIZE_BYTES]) == (1 << 30,)
    assert struct.unpack("=Q", attrs[nbd.NBD_ATTR_BLOCK_SIZE_BYTES]) == (4096,)
    assert struct.unpack("=Q", attrs[nbd.NBD_ATTR_SERVER_FLAGS]) == (3,)
    item = genl.parse_attrs(attrs[nbd.NBD_ATTR_SOCKETS])[nbd.NBD_SOCK_ITEM]
    assert struct.unpack("=I", genl.parse_attrs(item)[nbd.NBD_SOCK_FD]) == (5,)


def test_generic_netlink_resolves_a_family_on_this_kernel() -> None:
    netlink = genl.GenericNetlink()
    try:
        assert netlink.family_id("nlctrl") == genl.GENL_ID_CTRL
    finally:
        netlink.close()


# --- a lying server: each statement the handshake relies on, false in turn ---

Script = Callable[[socket.socket], None]


class LyingServer:
    """Serves one connection on 127.0.0.1 with `script`, in a thread."""

    def __init__(self, script: Script) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.listener.getsockname()[1]
        self.script = script
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        conn, _ = self.listener.accept()
        with conn, contextlib.suppress(OSError):  # the client gave up, as it should
            self.script(conn)

    def close(self) -> None:
        self.listener.close()
        self.thread.join(10)


def negotiate(server: LyingServer, name: str = "archiso") -> nbd.Export:
    try:
        sock, export = nbd.connect("127.0.0.1", server.port, name, timeout=5)
        sock.close()
    finally:
        server.close()
    return export


def greet(conn: socket.socket) -> None:
    """Fixed newstyle, no zeroes; then read the client's flags and its NBD_OPT_GO."""
    flags = nbd.FLAG_FIXED_NEWSTYLE | nbd.FLAG_NO_ZEROES
    conn.sendall(nbd.NBDMAGIC + nbd.IHAVEOPT + struct.pack(">H", flags))
    nbd._recv(conn, 4)
    _, option, length = struct.unpack(">8sII", nbd._recv(conn, 16))
    assert option == nbd.OPT_GO
    nbd._recv(conn, length)


def reply(conn: socket.socket, kind: int, data: bytes, length: int | None = None) -> None:
    header = struct.pack(
        ">QIII", nbd.REPLY_MAGIC, nbd.OPT_GO, kind, len(data) if length is None else length
    )
    conn.sendall(header + data)


def info_export(size: int, flags: int = 1 | nbd.TRANSMISSION_READ_ONLY) -> bytes:
    return struct.pack(">HQH", nbd.INFO_EXPORT, size, flags)


def info_block_size(minimum: int, preferred: int, maximum: int = 32 << 20) -> bytes:
    return struct.pack(">HIII", nbd.INFO_BLOCK_SIZE, minimum, preferred, maximum)


def script(*replies: tuple[int, bytes], wait: bool = False) -> Script:
    def run(conn: socket.socket) -> None:
        greet(conn)
        for kind, data in replies:
            reply(conn, kind, data)
        if wait:
            conn.recv(1)  # until the client closes

    return run


def test_an_honest_server_is_believed() -> None:
    server = LyingServer(
        script(
            (nbd.REP_INFO, info_export(1 << 20)),
            (nbd.REP_INFO, info_block_size(1, 4096)),
            (nbd.REP_ACK, b""),
            wait=True,
        )
    )
    export = negotiate(server)
    assert (export.size, export.block_size) == (1 << 20, 4096)


def test_a_huge_option_reply_is_refused_before_it_is_read() -> None:
    def huge(conn: socket.socket) -> None:
        greet(conn)
        reply(conn, nbd.REP_INFO, b"", length=0xFFFFFFF0)  # 4 GiB announced...
        conn.sendall(b"\0" * 4096)  # ...and a little sent, then nothing
        conn.recv(1)

    start = time.monotonic()
    with pytest.raises(
        nbd.NbdError,
        match=r"^the NBD server 127\.0\.0\.1:\d+ announced an option reply of 4294967280 "
        r"bytes, more than the 16384 such a reply may have \(this is not a working NBD server: "
        r"check archiso_nbd_srv=\)$",
    ):
        negotiate(LyingServer(huge))
    assert time.monotonic() - start < 3  # refused at once, not after the socket's timeout


def test_endless_replies_are_cut_off() -> None:
    def endless(conn: socket.socket) -> None:
        greet(conn)
        while True:
            reply(conn, nbd.REP_INFO, info_export(1 << 20))

    with pytest.raises(
        nbd.NbdError,
        match=r"^the NBD server 127\.0\.0\.1:\d+ sent more than 64 replies to NBD_OPT_GO "
        r"without finishing the negotiation \(this is not a working NBD server: check "
        r"archiso_nbd_srv=\)$",
    ):
        negotiate(LyingServer(endless))


@pytest.mark.parametrize(
    ("info", "message"),
    [
        (info_export(0), r"gives export 'archiso' as empty \(0 bytes\)"),
        (info_export(1 << 63), r"gives export 'archiso' a size of 9223372036854775808 bytes, "
         "which no disk has"),
        (info_block_size(3000, 4096), "gives a minimum block size of 3000 bytes, not a power of "
         "two"),
        (info_block_size(512, 1000), "gives a preferred block size of 1000 bytes, not a power of "
         "two"),
        (info_block_size(0, 4096), "gives a minimum block size of 0 bytes, not a power of two"),
        (info_block_size(1 << 17, 1 << 17), "gives a minimum block size of 131072 bytes, more than "
         "the 65536 the NBD protocol allows"),
        (info_block_size(4096, 512), "gives a preferred block size of 512 bytes, below its "
         "minimum of 4096"),
        (info_export(1 << 20)[:7], "sent an NBD_INFO type 0 reply of 7 bytes, shorter than the "
         "12 it needs"),
        (info_block_size(512, 4096)[:10], "sent an NBD_INFO type 3 reply of 10 bytes, shorter "
         "than the 14 it needs"),
        (b"\0", "sent an NBD_REP_INFO reply of 1 bytes, shorter than the 2 it needs"),
    ],
    ids=["empty", "huge", "minimum-not-a-power", "preferred-not-a-power", "minimum-0",
         "minimum-too-big", "preferred-below-minimum", "short-export-info",
         "short-block-size-info", "short-info"],
)  # fmt: skip
def test_what_the_server_states_is_checked(info: bytes, message: str) -> None:
    server = LyingServer(
        script(
            (nbd.REP_INFO, info),
            (nbd.REP_INFO, info_export(1 << 20)),
            (nbd.REP_ACK, b""),
            wait=True,
        )
    )
    with pytest.raises(nbd.NbdError, match=rf"^the NBD server 127\.0\.0\.1:\d+ {message}$"):
        negotiate(server)


def test_an_old_style_negotiation_checks_the_size_too() -> None:
    def export_name(conn: socket.socket) -> None:
        conn.sendall(nbd.NBDMAGIC + nbd.IHAVEOPT + struct.pack(">H", nbd.FLAG_NO_ZEROES))
        nbd._recv(conn, 4)
        _, option, length = struct.unpack(">8sII", nbd._recv(conn, 16))
        assert option == nbd.OPT_EXPORT_NAME
        nbd._recv(conn, length)
        conn.sendall(struct.pack(">QH", 0, 1))
        conn.recv(1)

    with pytest.raises(nbd.NbdError, match=r"127\.0\.0\.1:\d+ gives export 'archiso' as empty"):
        negotiate(LyingServer(export_name))


# --- reconnecting ---


def test_reconfigure_message_packing() -> None:
    attrs = genl.parse_attrs(nbd.reconfigure_message(7, 3))
    assert set(attrs) == {nbd.NBD_ATTR_INDEX, nbd.NBD_ATTR_SOCKETS}  # size and flags kept
    assert struct.unpack("=I", attrs[nbd.NBD_ATTR_INDEX]) == (3,)
    items = genl.parse_attrs(attrs[nbd.NBD_ATTR_SOCKETS])
    assert list(items) == [nbd.NBD_SOCK_ITEM]
    assert struct.unpack("=I", genl.parse_attrs(items[nbd.NBD_SOCK_ITEM])[nbd.NBD_SOCK_FD]) == (7,)
    raw = nbd.reconfigure_message(7, 3)
    # The kernel parses NBD_ATTR_SOCKETS as nested: the flag must be on the wire.
    sockets_type = struct.unpack_from("=H", raw, 8 + 2)[0]
    assert sockets_type == nbd.NBD_ATTR_SOCKETS | genl.NLA_F_NESTED
    assert len(raw) % 4 == 0


def _uapi_enum(text: str, first: str) -> dict[str, int]:
    """The members of the C enum whose first member is `first`."""
    body = text[text.index(first) : text.index("}", text.index(first))]
    names = [word.strip().rstrip(",") for word in body.split("\n")]
    return {name: i for i, name in enumerate(n for n in names if n)}


@pytest.mark.skipif(not Path("/usr/include/linux/nbd-netlink.h").exists(), reason="linux-libc-dev")
def test_netlink_numbers_match_the_uapi_header() -> None:
    text = Path("/usr/include/linux/nbd-netlink.h").read_text()
    commands = _uapi_enum(text, "NBD_CMD_UNSPEC")
    assert commands["NBD_CMD_RECONFIGURE"] == nbd.NBD_CMD_RECONFIGURE
    assert commands["NBD_CMD_LINK_DEAD"] == nbd.NBD_CMD_LINK_DEAD
    attrs = _uapi_enum(text, "NBD_ATTR_UNSPEC")
    assert attrs["NBD_ATTR_SOCKETS"] == nbd.NBD_ATTR_SOCKETS
    assert attrs["NBD_ATTR_DEAD_CONN_TIMEOUT"] == nbd.NBD_ATTR_DEAD_CONN_TIMEOUT
    assert f'NBD_GENL_MCAST_GROUP_NAME\t"{nbd.NBD_MCAST_GROUP}"' in text


def test_multicast_groups_are_read_from_a_family_reply() -> None:
    group = genl.attr(genl.CTRL_ATTR_MCAST_GRP_ID, struct.pack("=I", 27)) + genl.attr(
        genl.CTRL_ATTR_MCAST_GRP_NAME, b"nbd_mc_group\0"
    )
    groups = genl.attr(1 | genl.NLA_F_NESTED, group)
    assert genl.mcast_groups(groups) == {"nbd_mc_group": 27}


def test_generic_netlink_lists_the_groups_of_a_family_on_this_kernel() -> None:
    netlink = genl.GenericNetlink()
    try:
        family, groups = netlink.family("nlctrl")
    finally:
        netlink.close()
    assert family == genl.GENL_ID_CTRL
    assert "notify" in groups


def test_an_established_connection_is_seen_and_a_closed_one_is_not() -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    with listener, socket.create_connection(("127.0.0.1", port)) as client:
        accepted, _ = listener.accept()
        local = client.getsockname()
        assert nbd.tcp_established(("127.0.0.1", port), local)
        assert nbd.tcp_established(("127.0.0.1", port))
        client.close()
        assert not nbd.tcp_established(("127.0.0.1", port), local)
        accepted.close()
    assert not nbd.tcp_established(("127.0.0.1", free_port()))


def test_reconnecting_to_an_export_of_another_size_is_refused() -> None:
    server = LyingServer(
        script((nbd.REP_INFO, info_export(2 << 20)), (nbd.REP_ACK, b""), wait=True)
    )
    link = nbd.Link(0, "127.0.0.1", server.port, "archiso", 1 << 20, 60)
    netlink = genl.GenericNetlink()
    try:
        with pytest.raises(
            nbd.NbdError,
            match=rf"^the NBD server 127\.0\.0\.1:{server.port} now gives export 'archiso' as "
            r"2097152 bytes, not 1048576 as at boot: refusing to reconnect /dev/nbd0 to "
            r"another disk \(serve the file the system booted from again\)$",
        ):
            nbd.reconnect(link, netlink, 0)
    finally:
        netlink.close()
        server.close()


def test_a_link_is_read_from_what_the_boot_recorded() -> None:
    record = {
        "kind": "nbd", "device": "/dev/nbd0", "server": "nbd.lan:10809", "export": "archiso",
        "address": "10.0.2.2", "port": 10809, "size": 1 << 30, "timeout": 60,
    }  # fmt: skip
    assert nbdkeep.link_of(record) == nbd.Link(0, "10.0.2.2", 10809, "archiso", 1 << 30, 60)
    assert nbdkeep.link_of({**record, "address": "nbd.lan"}) is None  # no lookups later
    assert nbdkeep.link_of({**record, "size": 0}) is None
    assert nbdkeep.link_of({**record, "device": "/dev/sda"}) is None
    old = {k: v for k, v in record.items() if k not in ("address", "port", "size", "timeout")}
    assert nbdkeep.link_of(old) is None  # an older hook's record
