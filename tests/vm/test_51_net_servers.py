"""The network boot lab: real servers on 127.0.0.1 (vm/servers.py) and a guest on QEMU's
restricted user-mode network reaching them (vm/qemu.py `Nic`, `Forward`).

The server tests need no guest: they speak HTTP, NBD (a small newstyle client below) and
NFSv4 (libnfs's nfs-cat, a user-space client: this host's kernel has no NFS client) to
the servers over the loopback. The guest test boots a busybox initramfs with the lab's
`labnet` hook and drives its shell through the serial console.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import re
import socket
import struct
import subprocess
import time
from pathlib import Path

import pytest

from tests.vm.conftest import SHELL_PROMPT
from vm import lab_dir
from vm.initramfs import build_initramfs
from vm.kernel import Kernel, fetch_kernel
from vm.qemu import GUEST_ADDR, SERVER_ADDR, SLIRP_HOST, Forward, Guest, Nic, lab_mac
from vm.servers import HOST, NbdServer, NfsServer, Nginx, Server, ServerError

# --- helpers ----------------------------------------------------------------------------


def _sockets_of(server: Server) -> list[tuple[str, str, str]]:
    """(table, local address:port hex, state) of every socket the server's processes
    hold, from /proc/net/{tcp,tcp6,udp,udp6}."""
    inodes: set[str] = set()
    for pid in server._pids():
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    found = []
    for table in ("tcp", "tcp6", "udp", "udp6"):
        with open(f"/proc/net/{table}") as f:
            next(f)
            for line in f:
                fields = line.split()
                if fields[9] in inodes:
                    found.append((table, fields[1], fields[3]))
    return found


def assert_loopback_only(server: Server) -> None:
    """Every socket the server listens or binds on is 127.0.0.1 (or ::ffff:127.0.0.1),
    and it listens on its port."""
    sockets = _sockets_of(server)
    listening = [s for s in sockets if s[0].startswith("tcp") and s[2] == "0A"]
    assert listening, sockets
    for table, local, state in sockets:
        addr = local.rsplit(":", 1)[0]
        if table.startswith("tcp") and state != "0A":
            continue  # a connection: its local address is where the client came to
        assert addr in ("0100007F", "0000000000000000FFFF00000100007F"), (table, local)
    assert {int(s[1].rsplit(":", 1)[1], 16) for s in listening} == {server.port}, sockets


def http_get(
    port: int, path: str, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection(HOST, port, timeout=60)
    try:
        conn.request("GET", path, headers=headers or {})
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


# NBD newstyle protocol (https://github.com/NetworkBlockDevice/nbd/blob/master/doc/proto.md)
NBDMAGIC = 0x4E42444D41474943
IHAVEOPT = 0x49484156454F5054
REPLY_MAGIC = 0x3E889045565A9
NBD_OPT_GO = 7
NBD_REP_ACK = 1
NBD_REP_INFO = 3
NBD_REP_ERR_UNKNOWN = (1 << 31) | 6
NBD_INFO_EXPORT = 0
NBD_FLAG_READ_ONLY = 1 << 1
NBD_CMD_READ = 0
NBD_CMD_WRITE = 1
NBD_CMD_DISC = 2
REQUEST_MAGIC = 0x25609513
SIMPLE_REPLY_MAGIC = 0x67446698
EPERM = 1


class NbdError(Exception):
    pass


class NbdClient:
    """Just enough of a newstyle NBD client: NBD_OPT_GO, then simple replies."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection((HOST, port), timeout=30)
        self.size = 0
        self.flags = 0
        self._handle = 0
        magic, opt_magic, handshake_flags = struct.unpack(">QQH", self._recv(18))
        assert (magic, opt_magic) == (NBDMAGIC, IHAVEOPT), "not a newstyle NBD server"
        assert handshake_flags & 1, "no NBD_FLAG_FIXED_NEWSTYLE"
        no_zeroes = handshake_flags & 2
        self.sock.sendall(struct.pack(">I", 1 | no_zeroes))

    def _recv(self, n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = self.sock.recv(n - len(data))
            if not chunk:
                raise NbdError(f"connection closed after {len(data)} of {n} bytes")
            data += chunk
        return data

    def go(self, name: str) -> None:
        """NBD_OPT_GO `name`: size and transmission flags, or NbdError(reply type)."""
        payload = struct.pack(">I", len(name)) + name.encode() + struct.pack(">H", 0)
        self.sock.sendall(struct.pack(">QII", IHAVEOPT, NBD_OPT_GO, len(payload)) + payload)
        while True:
            magic, _opt, rtype, length = struct.unpack(">QIII", self._recv(20))
            assert magic == REPLY_MAGIC
            data = self._recv(length)
            if rtype == NBD_REP_INFO and struct.unpack(">H", data[:2])[0] == NBD_INFO_EXPORT:
                self.size, self.flags = struct.unpack(">QH", data[2:12])
            elif rtype == NBD_REP_ACK:
                return
            elif rtype & (1 << 31):
                raise NbdError(rtype)

    def _request(self, cmd: int, offset: int, length: int, data: bytes = b"") -> tuple[int, bytes]:
        self._handle += 1
        self.sock.sendall(
            struct.pack(">IHHQQI", REQUEST_MAGIC, 0, cmd, self._handle, offset, length) + data
        )
        magic, error, handle = struct.unpack(">IIQ", self._recv(16))
        assert (magic, handle) == (SIMPLE_REPLY_MAGIC, self._handle)
        payload = self._recv(length) if cmd == NBD_CMD_READ and error == 0 else b""
        return error, payload

    def read(self, offset: int, length: int) -> bytes:
        error, data = self._request(NBD_CMD_READ, offset, length)
        if error:
            raise NbdError(f"NBD_CMD_READ error {error}")
        return data

    def write(self, offset: int, data: bytes) -> int:
        """The error the server answers (0: written)."""
        return self._request(NBD_CMD_WRITE, offset, len(data), data)[0]

    def close(self) -> None:
        try:
            self.sock.sendall(struct.pack(">IHHQQI", REQUEST_MAGIC, 0, NBD_CMD_DISC, 0, 0, 0))
        finally:
            self.sock.close()


# --- server tests (no guest) ------------------------------------------------------------


@pytest.fixture
def www(tmp_path: Path) -> Path:
    root = tmp_path / "www"
    (root / "arch").mkdir(parents=True)
    (root / "arch" / "blob.bin").write_bytes(os.urandom(1 << 20))
    (root / "hello.txt").write_text("hello from nginx\n")
    return root


@pytest.mark.servers
def test_nginx_serves_files_and_ranges_on_loopback_only(www: Path) -> None:
    blob = (www / "arch" / "blob.bin").read_bytes()
    with Nginx(www) as nginx:
        assert_loopback_only(nginx)
        status, _, body = http_get(nginx.port, "/arch/blob.bin")
        assert (status, body) == (200, blob)
        status, headers, body = http_get(nginx.port, "/arch/blob.bin", {"Range": "bytes=1000-1999"})
        assert status == 206
        assert headers["Content-Range"] == f"bytes 1000-1999/{len(blob)}"
        assert body == blob[1000:2000]
        status, _, _ = http_get(nginx.port, "/missing")
        assert status == 404
        entries = nginx.wait_requests(3)
    assert [(e.path, e.status, e.range, e.complete) for e in entries] == [
        ("/arch/blob.bin", 200, "", True),
        ("/arch/blob.bin", 206, "bytes=1000-1999", True),
        ("/missing", 404, "", True),
    ]
    assert entries[0].body_bytes == len(blob) and entries[1].body_bytes == 1000
    assert all(e.remote == "127.0.0.1" for e in entries)


@pytest.mark.servers
def test_nginx_stopped_mid_download_and_restarted_on_the_same_port(www: Path) -> None:
    """limit_rate keeps a 1 MiB download going for 16 s: stop nginx after 64 KiB, the
    client sees the transfer cut; start it again, and a Range request gets the rest."""
    blob = (www / "arch" / "blob.bin").read_bytes()
    with Nginx(www, rate_limit="64k") as nginx:
        port = nginx.port
        sock = socket.create_connection((HOST, port), timeout=60)
        sock.sendall(b"GET /arch/blob.bin HTTP/1.1\r\nHost: lab\r\nConnection: close\r\n\r\n")
        received = b""
        while b"\r\n\r\n" not in received or len(received.split(b"\r\n\r\n", 1)[1]) < 65536:
            chunk = sock.recv(65536)
            assert chunk, "the download ended before it was cut"
            received += chunk
        assert nginx.established() >= 1
        nginx.stop()
        assert not nginx.running
        while chunk := sock.recv(65536):
            received += chunk
        sock.close()
        head, first = received.split(b"\r\n\r\n", 1)
        assert head.startswith(b"HTTP/1.1 200")
        assert 65536 <= len(first) < len(blob)  # cut off, and what came is right
        assert first == blob[: len(first)]
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection((HOST, port), timeout=10).close()

        nginx.start()
        assert nginx.port == port
        status, _, rest = http_get(port, "/arch/blob.bin", {"Range": f"bytes={len(first)}-"})
        assert status == 206
        assert first + rest == blob
        # The request cut off by the stop is not logged (nginx's fast shutdown).
        (resumed,) = nginx.wait_requests(1)
        assert (resumed.status, resumed.range) == (206, f"bytes={len(first)}-")


@pytest.mark.servers
def test_nbd_export_read_only_over_newstyle(tmp_path: Path) -> None:
    image = tmp_path / "root.img"
    data = os.urandom(4 << 20)
    image.write_bytes(data)
    with NbdServer(image, name="archiso") as nbd:
        assert_loopback_only(nbd)
        # Two clients at once: each is served (nbd-server forks one child a client).
        first, second = NbdClient(nbd.port), NbdClient(nbd.port)
        first.go("archiso")
        second.go("archiso")
        assert first.size == len(data)
        assert first.flags & NBD_FLAG_READ_ONLY
        assert first.read(0, 4096) == data[:4096]
        assert second.read(3 << 20, 65536) == data[3 << 20 : (3 << 20) + 65536]
        assert first.write(0, b"\0" * 512) == EPERM
        first.close()
        second.close()

        unknown = NbdClient(nbd.port)
        with pytest.raises(NbdError) as excinfo:
            unknown.go("no-such-export")
        assert excinfo.value.args[0] == NBD_REP_ERR_UNKNOWN
        unknown.sock.close()
        # prerun/postrun: the two clients of the export opened it and went away.
        deadline = time.monotonic() + 30
        while nbd.connections().count("close") < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert sorted(nbd.connections()) == ["close", "close", "open", "open"], nbd.log_text()
    assert image.read_bytes() == data


@pytest.mark.servers
def test_nfs_export_read_with_a_user_space_nfsv4_client(tmp_path: Path) -> None:
    export = tmp_path / "export"
    (export / "arch" / "x86_64").mkdir(parents=True)
    blob = os.urandom(3 << 20)
    (export / "arch" / "x86_64" / "airootfs.sfs").write_bytes(blob)
    (export / "hello.txt").write_text("hello from ganesha\n")
    with NfsServer(export, pseudo="/archiso") as nfs:
        assert_loopback_only(nfs)
        cat = subprocess.run(
            ["nfs-cat", nfs.url("hello.txt")], capture_output=True, timeout=60, check=False
        )
        assert cat.returncode == 0, cat.stderr
        assert cat.stdout == b"hello from ganesha\n"
        cat = subprocess.run(
            ["nfs-cat", nfs.url("arch/x86_64/airootfs.sfs")],
            capture_output=True,
            timeout=120,
            check=False,
        )
        assert hashlib.sha256(cat.stdout).digest() == hashlib.sha256(blob).digest()
        # Read-only: libnfs's copy onto the export is refused.
        src = tmp_path / "new.txt"
        src.write_text("x")
        cp = subprocess.run(
            ["nfs-cp", str(src), nfs.url("new.txt")], capture_output=True, timeout=60, check=False
        )
        assert cp.returncode != 0
    assert not (export / "new.txt").exists()


@pytest.mark.servers
def test_a_server_that_cannot_start_says_why(tmp_path: Path) -> None:
    (tmp_path / "www").mkdir()
    with socket.socket() as taken:
        taken.bind((HOST, 0))
        taken.listen()
        port = taken.getsockname()[1]
        server = Nginx(tmp_path / "www", port=port)
        with pytest.raises(ServerError, match=r"exited with status 1 before listening") as e:
            server.start()
        server.close()
    assert "Address already in use" in str(e.value)


# --- a guest on the network -------------------------------------------------------------


@pytest.fixture(scope="module")
def labnet_initramfs() -> tuple[Kernel, Path]:
    kernel = fetch_kernel()
    image = build_initramfs(
        kernel,
        ["base", "labnet"],
        lab_dir() / "initramfs-labnet.img",
        hook_dirs=[],
        modules=["virtio_pci", "virtio_net", "nfsv4"],
    )
    return kernel, image


def run(guest: Guest, command: str, timeout: float = 60) -> str:
    """Type `command` in the guest's shell; its output (between markers the shell
    computes, so that the echo of the command does not match)."""
    guest.send(f"echo CMD-BEGIN-$((6*7)); {command}; echo CMD-END-$((6*7))-$?")
    match = guest.expect(r"CMD-BEGIN-42\n(.*?)CMD-END-42-(\d+)", timeout=timeout)
    return match.group(1)


@pytest.mark.vm
def test_guest_gets_a_lease_and_reaches_only_the_forwarded_servers(
    labnet_initramfs: tuple[Kernel, Path], tmp_path: Path
) -> None:
    kernel, initrd = labnet_initramfs
    token = f"lab-{os.getpid()}-{time.monotonic_ns()}"
    www = tmp_path / "www"
    www.mkdir()
    (www / "token.txt").write_text(f"{token}\n")
    export = tmp_path / "export"
    export.mkdir()
    (export / "token.txt").write_text(f"nfs {token}\n")
    with Nginx(www) as nginx, NfsServer(export) as nfs:
        nics = [
            Nic(lab_mac(1)),  # no forwards: a NIC that reaches nothing
            Nic(lab_mac(2), forwards=[nginx.forward(), nfs.forward()]),
        ]
        with Guest(
            "servers-dhcp", kernel=kernel, initrd=initrd, append="break=premount", nics=nics
        ) as guest:
            guest.expect(r"Pre-mount break requested", timeout=180)
            guest.expect(SHELL_PROMPT, timeout=30)
            links = run(guest, "cat /sys/class/net/eth0/address /sys/class/net/eth1/address")
            assert links.split() == [lab_mac(1), lab_mac(2)]

            lease = run(guest, "udhcpc -i eth1 -n -q -t 5 -T 3", timeout=90)
            assert f"LABNET-DHCP bound ip={GUEST_ADDR}" in lease, lease
            assert f"LABNET-DHCP bound serverid={SLIRP_HOST}" in lease
            assert f"LABNET-DHCP bound siaddr={SLIRP_HOST}" in lease
            assert "LABNET-DHCP bound done" in lease
            assert "router=" not in lease and "dns=" not in lease  # restrict=on

            fetched = run(guest, f"wget -q -O - http://{SERVER_ADDR}/token.txt")
            assert token in fetched, fetched
            refused = run(guest, f"timeout 30 wget -q -O - http://{SERVER_ADDR}:81/; echo rc=$?")
            assert "Connection refused" in refused, refused

            mount = (
                f"mkdir -p /mnt && mount -t nfs4 -o ro,vers=4.2,addr={SERVER_ADDR} "
                f"{SERVER_ADDR}:/archiso /mnt"
                " && cat /mnt/token.txt"
            )
            assert f"nfs {token}" in run(guest, mount, timeout=90)
            guest.send("poweroff -f")
            guest.wait(60)
        relayed = guest.relayed()
        requests = nginx.wait_requests(1)
    assert [(e.path, e.status, e.remote) for e in requests] == [("/token.txt", 200, "127.0.0.1")]
    ports = [int(m) for line in relayed for m in re.findall(r"connect 127\.0\.0\.1:(\d+) ok", line)]
    assert nginx.port in ports and nfs.port in ports, relayed
    assert not any("failed" in line for line in relayed), relayed


def test_forward_and_nic_values() -> None:
    nic = Nic("52:54:00:AB:CD:EF", forwards=[Forward(8080, 80)], net="10.0.3.0/24")
    assert nic.mac == "52:54:00:ab:cd:ef"
    assert (nic.host_addr, nic.server_addr, nic.guest_addr) == ("10.0.3.1", "10.0.3.2", "10.0.3.15")
    with pytest.raises(ValueError, match="unicast"):
        Nic("01:00:5e:00:00:01")
    with pytest.raises(ValueError):
        Forward(0, 80)
