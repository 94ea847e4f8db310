"""Attach an NBD export as /dev/nbdN: the handshake here, the rest by the kernel.

The newstyle handshake (NBD_OPT_GO, or NBD_OPT_EXPORT_NAME for old servers) runs
on a TCP socket in Python; the connected socket is then handed to the kernel with
the nbd driver's generic netlink interface (NBD_CMD_CONNECT), which keeps it: no
nbd-client process has to stay alive across switch_root. Wire formats follow the
NBD protocol document (doc/proto.md of nbd) and include/uapi/linux/nbd-netlink.h.
"""

from __future__ import annotations

import errno
import os
import socket
import struct

import attrs

from archiso_hook.errors import HookError, KernelError

NBDMAGIC = b"NBDMAGIC"
IHAVEOPT = b"IHAVEOPT"
REPLY_MAGIC = 0x3E889045565A9
FLAG_FIXED_NEWSTYLE = 1 << 0
FLAG_NO_ZEROES = 1 << 1
OPT_EXPORT_NAME = 1
OPT_ABORT = 2
OPT_GO = 7
REP_ACK = 1
REP_INFO = 3
REP_FLAG_ERROR = 1 << 31
REP_ERR_UNSUP = REP_FLAG_ERROR | 1
REP_ERR_UNKNOWN = REP_FLAG_ERROR | 6
INFO_EXPORT = 0
INFO_BLOCK_SIZE = 3
TRANSMISSION_READ_ONLY = 1 << 1
CONNECT_TIMEOUT = 15.0

# Generic netlink (linux/netlink.h, linux/genetlink.h, linux/nbd-netlink.h).
NETLINK_GENERIC = 16
GENL_ID_CTRL = 0x10
CTRL_CMD_GETFAMILY = 3
CTRL_ATTR_FAMILY_ID = 1
CTRL_ATTR_FAMILY_NAME = 2
NLM_F_REQUEST = 0x1
NLM_F_ACK = 0x4
NLMSG_ERROR = 0x2
NLMSG_DONE = 0x3
NLA_F_NESTED = 1 << 15
NBD_FAMILY = "nbd"
NBD_GENL_VERSION = 1
NBD_CMD_CONNECT = 1
NBD_CMD_DISCONNECT = 2
NBD_ATTR_INDEX = 1
NBD_ATTR_SIZE_BYTES = 2
NBD_ATTR_BLOCK_SIZE_BYTES = 3
NBD_ATTR_TIMEOUT = 4
NBD_ATTR_SERVER_FLAGS = 5
NBD_ATTR_CLIENT_FLAGS = 6
NBD_ATTR_SOCKETS = 7
NBD_ATTR_DEAD_CONN_TIMEOUT = 8
NBD_SOCK_ITEM = 1
NBD_SOCK_FD = 1
NLMSGHDR = struct.Struct("=IHHII")  # len, type, flags, seq, pid
GENLMSGHDR = struct.Struct("=BBH")  # cmd, version, reserved
NLATTR = struct.Struct("=HH")  # len, type


class NbdError(HookError):
    pass


@attrs.frozen
class Export:
    size: int
    flags: int  # transmission flags
    block_size: int = 512


# --- the handshake (client side) ---


def _recv(sock: socket.socket, n: int) -> bytes:
    data = bytearray()
    while len(data) < n:
        part = sock.recv(n - len(data))
        if not part:
            raise NbdError("the NBD server closed the connection during the handshake")
        data += part
    return bytes(data)


def handshake(sock: socket.socket, name: str) -> Export:
    """Negotiate `name` on a connected socket, leaving it ready for transmission."""
    head = _recv(sock, 18)
    if head[:8] != NBDMAGIC:
        raise NbdError("the server does not speak NBD (no NBDMAGIC)")
    if head[8:16] != IHAVEOPT:
        raise NbdError("the server speaks only the old NBD protocol, without export names")
    (server_flags,) = struct.unpack(">H", head[16:18])
    if not server_flags & FLAG_FIXED_NEWSTYLE:
        return _export_name(sock, name, server_flags)
    client_flags = FLAG_FIXED_NEWSTYLE | (server_flags & FLAG_NO_ZEROES)
    sock.sendall(struct.pack(">I", client_flags))
    encoded = name.encode()
    payload = struct.pack(">I", len(encoded)) + encoded + struct.pack(">HH", 1, INFO_BLOCK_SIZE)
    sock.sendall(IHAVEOPT + struct.pack(">II", OPT_GO, len(payload)) + payload)
    size = flags = None
    block_size = 512
    while True:
        magic, option, reply, length = struct.unpack(">QIII", _recv(sock, 20))
        data = _recv(sock, length) if length else b""
        if magic != REPLY_MAGIC or option != OPT_GO:
            raise NbdError("the NBD server answered out of protocol")
        if reply == REP_ERR_UNSUP:
            return _export_name(sock, name, server_flags, client_flags_sent=True)
        if reply == REP_ERR_UNKNOWN:
            raise NbdError(f"the NBD server has no export named {name!r}")
        if reply & REP_FLAG_ERROR:
            detail = data.decode("utf-8", "replace") if data else f"error {reply & 0xFFFF}"
            raise NbdError(f"the NBD server refused export {name!r}: {detail}")
        if reply == REP_INFO and len(data) >= 2:
            (info,) = struct.unpack(">H", data[:2])
            if info == INFO_EXPORT and len(data) >= 12:
                size, flags = struct.unpack(">QH", data[2:12])
            elif info == INFO_BLOCK_SIZE and len(data) >= 14:
                minimum, preferred, _ = struct.unpack(">III", data[2:14])
                block_size = max(512, min(preferred, 4096), minimum)
        elif reply == REP_ACK:
            if size is None or flags is None:
                raise NbdError("the NBD server gave no export size")
            return Export(size, flags, block_size)


def _export_name(
    sock: socket.socket, name: str, server_flags: int, *, client_flags_sent: bool = False
) -> Export:
    """NBD_OPT_EXPORT_NAME: the oldest newstyle option; an unknown name closes the link."""
    no_zeroes = server_flags & FLAG_NO_ZEROES
    if not client_flags_sent:
        sock.sendall(struct.pack(">I", no_zeroes))
    encoded = name.encode()
    sock.sendall(IHAVEOPT + struct.pack(">II", OPT_EXPORT_NAME, len(encoded)) + encoded)
    try:
        reply = _recv(sock, 10 if no_zeroes else 134)
    except NbdError:
        raise NbdError(f"the NBD server has no export named {name!r}") from None
    size, flags = struct.unpack(">QH", reply[:10])
    return Export(size, flags)


def connect(host: str, port: int, name: str) -> tuple[socket.socket, Export]:
    try:
        sock = socket.create_connection((host, port), timeout=CONNECT_TIMEOUT)
    except OSError as e:
        reason = e.strerror or str(e)
        raise NbdError(
            f"cannot connect to the NBD server {host}:{port}: {reason}",
            hint="check archiso_nbd_srv= and that nbd-server runs there",
        ) from None
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        export = handshake(sock, name)
    except (OSError, NbdError) as e:
        sock.close()
        if isinstance(e, NbdError):
            raise
        raise NbdError(f"NBD handshake with {host}:{port} failed: {e.strerror or e}") from None
    sock.settimeout(None)  # the kernel has its own (NBD_ATTR_TIMEOUT)
    return sock, export


# --- generic netlink ---


def _attr(kind: int, payload: bytes) -> bytes:
    length = NLATTR.size + len(payload)
    return NLATTR.pack(length, kind) + payload + b"\0" * (-length % 4)


def _u32(kind: int, value: int) -> bytes:
    return _attr(kind, struct.pack("=I", value))


def _u64(kind: int, value: int) -> bytes:
    return _attr(kind, struct.pack("=Q", value))


def parse_attrs(data: bytes) -> dict[int, bytes]:
    out = {}
    offset = 0
    while offset + NLATTR.size <= len(data):
        length, kind = NLATTR.unpack_from(data, offset)
        if length < NLATTR.size:
            break
        out[kind & ~NLA_F_NESTED] = data[offset + NLATTR.size : offset + length]
        offset += (length + 3) & ~3
    return out


class GenericNetlink:
    """One NETLINK_GENERIC socket: request, then the reply or the kernel's errno."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_GENERIC)
        self.sock.bind((0, 0))
        self.seq = 0

    def close(self) -> None:
        self.sock.close()

    def request(self, family: int, cmd: int, version: int, attrs_: bytes) -> dict[int, bytes]:
        self.seq += 1
        body = GENLMSGHDR.pack(cmd, version, 0) + attrs_
        header = NLMSGHDR.pack(NLMSGHDR.size + len(body), family, NLM_F_REQUEST | NLM_F_ACK,
                               self.seq, 0)  # fmt: skip
        self.sock.sendall(header + body)
        reply: dict[int, bytes] = {}
        while True:
            data = self.sock.recv(65536)
            offset = 0
            while offset + NLMSGHDR.size <= len(data):
                length, kind, _, seq, _ = NLMSGHDR.unpack_from(data, offset)
                payload = data[offset + NLMSGHDR.size : offset + length]
                offset += (length + 3) & ~3
                if seq != self.seq:
                    continue
                if kind == NLMSG_ERROR:
                    (code,) = struct.unpack_from("=i", payload)
                    if code:
                        raise OSError(-code, os.strerror(-code))
                    return reply
                if kind == NLMSG_DONE:
                    return reply
                reply = parse_attrs(payload[GENLMSGHDR.size :])

    def family_id(self, name: str) -> int:
        try:
            reply = self.request(
                GENL_ID_CTRL,
                CTRL_CMD_GETFAMILY,
                1,
                _attr(CTRL_ATTR_FAMILY_NAME, name.encode() + b"\0"),
            )
        except OSError as e:
            if e.errno == errno.ENOENT:
                raise KernelError(
                    f"the kernel has no {name!r} generic netlink family: is the {name} module "
                    "loaded?",
                    e.errno,
                ) from None
            raise
        family: int = struct.unpack("=H", reply[CTRL_ATTR_FAMILY_ID][:2])[0]
        return family


def connect_message(fd: int, export: Export, index: int, timeout: int) -> bytes:
    """The attributes of NBD_CMD_CONNECT for one socket (packing, unit-tested)."""
    item = _attr(NBD_SOCK_ITEM | NLA_F_NESTED, _u32(NBD_SOCK_FD, fd))
    return (
        _u32(NBD_ATTR_INDEX, index)
        + _u64(NBD_ATTR_SIZE_BYTES, export.size)
        + _u64(NBD_ATTR_BLOCK_SIZE_BYTES, export.block_size)
        + _u64(NBD_ATTR_SERVER_FLAGS, export.flags)
        + _u64(NBD_ATTR_TIMEOUT, timeout)
        + _u64(NBD_ATTR_DEAD_CONN_TIMEOUT, timeout)
        + _attr(NBD_ATTR_SOCKETS | NLA_F_NESTED, item)
    )


def attach(host: str, port: int, name: str, index: int = 0, timeout: int = 60) -> str:
    """Connect to the export and give the socket to /dev/nbd<index>; its path."""
    sock, export = connect(host, port, name)
    nl = GenericNetlink()
    try:
        family = nl.family_id(NBD_FAMILY)
        message = connect_message(sock.fileno(), export, index, timeout)
        try:
            nl.request(family, NBD_CMD_CONNECT, NBD_GENL_VERSION, message)
        except OSError as e:
            raise KernelError(
                f"cannot attach the NBD export {name!r} to /dev/nbd{index}: {e.strerror}",
                e.errno or 0,
                hint="is /dev/nbd0 already in use?" if e.errno == errno.EBUSY else None,
            ) from None
    finally:
        nl.close()
        sock.close()  # the kernel holds its own reference now
    return f"/dev/nbd{index}"


def detach(index: int = 0) -> None:
    nl = GenericNetlink()
    try:
        family = nl.family_id(NBD_FAMILY)
        nl.request(family, NBD_CMD_DISCONNECT, NBD_GENL_VERSION, _u32(NBD_ATTR_INDEX, index))
    finally:
        nl.close()
