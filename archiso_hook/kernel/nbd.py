"""Attach an NBD export as /dev/nbdN: the handshake here, the rest by the kernel.

The newstyle handshake (NBD_OPT_GO, or NBD_OPT_EXPORT_NAME for old servers) runs
on a TCP socket in Python; the connected socket is then handed to the kernel with
the nbd driver's generic netlink interface (NBD_CMD_CONNECT), which keeps it: no
nbd-client process has to stay alive across switch_root. Wire formats follow the
NBD protocol document (doc/proto.md of nbd) and include/uapi/linux/nbd-netlink.h.
"""

from __future__ import annotations

import errno
import socket
import struct

import attrs

from archiso_hook.errors import HookError, KernelError
from archiso_hook.kernel.cstruct import Struct
from archiso_hook.kernel.genl import NLA_F_NESTED, GenericNetlink, attr, u32, u64

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
# What a server may state, whatever it announces: the NBD protocol caps an error's text
# at 4 KiB, and NBD_OPT_GO is answered with a few NBD_REP_INFO replies and one ACK.
MAX_OPTION_REPLY = 16 * 1024
MAX_OPTION_REPLIES = 64
MAX_EXPORT_SIZE = 1 << 60  # 1 EiB: anything larger is a lie (the kernel takes a loff_t)
MAX_BLOCK_SIZE = 65536  # the protocol's largest minimum block size

# include/uapi/linux/nbd-netlink.h
NBD_FAMILY = "nbd"
NBD_MCAST_GROUP = "nbd_mc_group"
NBD_GENL_VERSION = 1
NBD_CMD_CONNECT = 1
NBD_CMD_DISCONNECT = 2
NBD_CMD_RECONFIGURE = 3
NBD_CMD_LINK_DEAD = 4  # multicast to nbd_mc_group when a connection dies
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

# The handshake's messages (doc/proto.md of nbd), in network byte order; no C header
# declares them.
GREETING = Struct(
    "nbd_greeting",
    (
        ("nbdmagic", "8s"),  # S: 64 bits, "NBDMAGIC"
        ("ihaveopt", "8s"),  # S: 64 bits, "IHAVEOPT" (newstyle)
        ("handshake_flags", "H"),  # S: 16 bits, handshake flags
    ),
    order=">",
    uapi=False,
)
CLIENT_FLAGS = Struct(
    "nbd_client_flags",
    (("client_flags", "I"),),  # C: 32 bits, client flags
    order=">",
    uapi=False,
)
OPTION = Struct(  # followed by `length` bytes of data
    "nbd_option",
    (
        ("ihaveopt", "8s"),  # C: 64 bits, "IHAVEOPT"
        ("option", "I"),  # C: 32 bits, option
        ("length", "I"),  # C: 32 bits, length of the option data
    ),
    order=">",
    uapi=False,
)
OPTION_REPLY = Struct(  # followed by `length` bytes of data
    "nbd_option_reply",
    (
        ("magic", "Q"),  # S: 64 bits, 0x3e889045565a9
        ("option", "I"),  # S: 32 bits, the option it answers
        ("reply", "I"),  # S: 32 bits, reply type
        ("length", "I"),  # S: 32 bits, length of the reply data
    ),
    order=">",
    uapi=False,
)
INFO_TYPE = Struct(
    "nbd_info",
    (("info", "H"),),  # S: 16 bits, NBD_INFO type: the start of an NBD_REP_INFO's data
    order=">",
    uapi=False,
)
INFO_EXPORT_REPLY = Struct(
    "nbd_info_export",
    (
        ("info", "H"),  # S: 16 bits, NBD_INFO_EXPORT
        ("size", "Q"),  # S: 64 bits, size of the export in bytes
        ("transmission_flags", "H"),  # S: 16 bits, transmission flags
    ),
    order=">",
    uapi=False,
)
INFO_BLOCK_SIZE_REPLY = Struct(
    "nbd_info_block_size",
    (
        ("info", "H"),  # S: 16 bits, NBD_INFO_BLOCK_SIZE
        ("minimum", "I"),  # S: 32 bits, minimum block size
        ("preferred", "I"),  # S: 32 bits, preferred block size
        ("maximum", "I"),  # S: 32 bits, maximum block payload size
    ),
    order=">",
    uapi=False,
)
INFO_LENGTH = {INFO_EXPORT: INFO_EXPORT_REPLY.size, INFO_BLOCK_SIZE: INFO_BLOCK_SIZE_REPLY.size}
EXPORT_NAME_REPLY = Struct(  # the answer to NBD_OPT_EXPORT_NAME
    "nbd_export_name_reply",
    (
        ("size", "Q"),  # S: 64 bits, size of the export in bytes
        ("transmission_flags", "H"),  # S: 16 bits, transmission flags
        ("zeroes", "124s"),  # S: 124 bytes, zeroes (not sent with NBD_FLAG_C_NO_ZEROES)
    ),
    order=">",
    uapi=False,
)


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


def handshake(sock: socket.socket, name: str, server: str = "") -> Export:
    """Negotiate `name` on a connected socket, leaving it ready for transmission.

    Whatever the server states is checked before it is used: a reply's length against
    MAX_OPTION_REPLY (read no further), the number of replies, the export's size and
    block sizes, each NBD_INFO reply's length against what its type needs."""
    who = f"the NBD server {server}" if server else "the NBD server"
    greeting = GREETING.unpack(_recv(sock, GREETING.size))
    if greeting.nbdmagic != NBDMAGIC:
        raise NbdError("the server does not speak NBD (no NBDMAGIC)")
    if greeting.ihaveopt != IHAVEOPT:
        raise NbdError("the server speaks only the old NBD protocol, without export names")
    server_flags: int = greeting.handshake_flags
    if not server_flags & FLAG_FIXED_NEWSTYLE:
        return _export_name(sock, name, server_flags, who)
    client_flags = FLAG_FIXED_NEWSTYLE | (server_flags & FLAG_NO_ZEROES)
    sock.sendall(CLIENT_FLAGS.pack(client_flags=client_flags))
    encoded = name.encode()
    # NBD_OPT_GO's data: the name's length and the name, then the NBD_INFO types asked for.
    payload = struct.pack(">I", len(encoded)) + encoded + struct.pack(">HH", 1, INFO_BLOCK_SIZE)
    sock.sendall(OPTION.pack(ihaveopt=IHAVEOPT, option=OPT_GO, length=len(payload)) + payload)
    size = flags = None
    block_size = 512
    for _ in range(MAX_OPTION_REPLIES):
        header = OPTION_REPLY.unpack(_recv(sock, OPTION_REPLY.size))
        reply, length = header.reply, header.length
        if header.magic != REPLY_MAGIC or header.option != OPT_GO:
            raise NbdError(f"{who} answered out of protocol")
        if length > MAX_OPTION_REPLY:
            raise NbdError(
                f"{who} announced an option reply of {length} bytes, more than the "
                f"{MAX_OPTION_REPLY} such a reply may have",
                hint="this is not a working NBD server: check archiso_nbd_srv=",
            )
        data = _recv(sock, length) if length else b""
        if reply == REP_ERR_UNSUP:
            return _export_name(sock, name, server_flags, who, client_flags_sent=True)
        if reply == REP_ERR_UNKNOWN:
            raise NbdError(f"the NBD server has no export named {name!r}")
        if reply & REP_FLAG_ERROR:
            detail = data.decode("utf-8", "replace") if data else f"error {reply & 0xFFFF}"
            raise NbdError(f"the NBD server refused export {name!r}: {detail}")
        if reply == REP_INFO:
            info = INFO_TYPE.unpack(data).info if len(data) >= INFO_TYPE.size else None
            need = INFO_LENGTH.get(info, INFO_TYPE.size) if info is not None else INFO_TYPE.size
            if len(data) < need:
                what = f"NBD_INFO type {info}" if info is not None else "NBD_REP_INFO"
                raise NbdError(
                    f"{who} sent an {what} reply of {len(data)} bytes, shorter than the "
                    f"{need} it needs"
                )
            if info == INFO_EXPORT:
                export = INFO_EXPORT_REPLY.unpack(data)
                size, flags = export.size, export.transmission_flags
                _check_size(export.size, who, name)
            elif info == INFO_BLOCK_SIZE:
                sizes = INFO_BLOCK_SIZE_REPLY.unpack(data)
                block_size = _block_size(sizes.minimum, sizes.preferred, who)
        elif reply == REP_ACK:
            if size is None or flags is None:
                raise NbdError(f"{who} gave no export size")
            return Export(size, flags, block_size)
    raise NbdError(
        f"{who} sent more than {MAX_OPTION_REPLIES} replies to NBD_OPT_GO without "
        "finishing the negotiation",
        hint="this is not a working NBD server: check archiso_nbd_srv=",
    )


def _power_of_two(value: int) -> bool:
    return value > 0 and value & (value - 1) == 0


def _check_size(size: int, who: str, name: str) -> None:
    if size == 0:
        raise NbdError(f"{who} gives export {name!r} as empty (0 bytes)")
    if size > MAX_EXPORT_SIZE:
        raise NbdError(f"{who} gives export {name!r} a size of {size} bytes, which no disk has")


def _block_size(minimum: int, preferred: int, who: str) -> int:
    """The block size for the kernel from the server's NBD_INFO_BLOCK_SIZE: at least 512
    (the kernel's smallest), the preferred one up to a page, never below the minimum."""
    for what, value in (("minimum", minimum), ("preferred", preferred)):
        if not _power_of_two(value):
            raise NbdError(f"{who} gives a {what} block size of {value} bytes, not a power of two")
    if minimum > MAX_BLOCK_SIZE:
        raise NbdError(
            f"{who} gives a minimum block size of {minimum} bytes, more than the "
            f"{MAX_BLOCK_SIZE} the NBD protocol allows"
        )
    if preferred < minimum:
        raise NbdError(
            f"{who} gives a preferred block size of {preferred} bytes, below its minimum "
            f"of {minimum}"
        )
    return max(512, min(preferred, 4096), minimum)


def _export_name(
    sock: socket.socket, name: str, server_flags: int, who: str, *, client_flags_sent: bool = False
) -> Export:
    """NBD_OPT_EXPORT_NAME: the oldest newstyle option; an unknown name closes the link."""
    no_zeroes = server_flags & FLAG_NO_ZEROES
    if not client_flags_sent:
        sock.sendall(CLIENT_FLAGS.pack(client_flags=no_zeroes))
    encoded = name.encode()
    option = OPTION.pack(ihaveopt=IHAVEOPT, option=OPT_EXPORT_NAME, length=len(encoded))
    sock.sendall(option + encoded)
    length = EXPORT_NAME_REPLY.offset("zeroes") if no_zeroes else EXPORT_NAME_REPLY.size
    try:
        reply = EXPORT_NAME_REPLY.unpack(_recv(sock, length).ljust(EXPORT_NAME_REPLY.size, b"\0"))
    except NbdError:
        raise NbdError(f"the NBD server has no export named {name!r}") from None
    _check_size(reply.size, who, name)
    return Export(reply.size, reply.transmission_flags)


def connect(
    host: str, port: int, name: str, timeout: float = CONNECT_TIMEOUT
) -> tuple[socket.socket, Export]:
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    except OSError as e:
        raise _unreachable(host, port, e) from None
    return _negotiate(sock, host, port, name)


def connect_address(
    address: str, port: int, name: str, timeout: float = CONNECT_TIMEOUT
) -> tuple[socket.socket, Export]:
    """connect() to a numeric address, with no name lookup: in the live system that would
    read /etc from the live root, which may be on this very export."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        sock.settimeout(timeout)
        sock.connect((address, port))
    except OSError as e:
        sock.close()
        raise _unreachable(address, port, e) from None
    return _negotiate(sock, address, port, name)


def _unreachable(host: str, port: int, e: OSError) -> NbdError:
    reason = e.strerror or str(e)
    return NbdError(
        f"cannot connect to the NBD server {host}:{port}: {reason}",
        hint="check archiso_nbd_srv= and that nbd-server runs there",
    )


def _negotiate(
    sock: socket.socket, host: str, port: int, name: str
) -> tuple[socket.socket, Export]:
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        export = handshake(sock, name, f"{host}:{port}")
    except (OSError, NbdError) as e:
        sock.close()
        if isinstance(e, NbdError):
            raise
        raise NbdError(f"NBD handshake with {host}:{port} failed: {e.strerror or e}") from None
    sock.settimeout(None)  # the kernel has its own (NBD_ATTR_TIMEOUT)
    return sock, export


# --- the kernel's side: the nbd generic netlink family ---


def connect_message(fd: int, export: Export, index: int, timeout: int) -> bytes:
    """The attributes of NBD_CMD_CONNECT for one socket (packing, unit-tested)."""
    item = attr(NBD_SOCK_ITEM | NLA_F_NESTED, u32(NBD_SOCK_FD, fd))
    return (
        u32(NBD_ATTR_INDEX, index)
        + u64(NBD_ATTR_SIZE_BYTES, export.size)
        + u64(NBD_ATTR_BLOCK_SIZE_BYTES, export.block_size)
        + u64(NBD_ATTR_SERVER_FLAGS, export.flags)
        + u64(NBD_ATTR_TIMEOUT, timeout)
        + u64(NBD_ATTR_DEAD_CONN_TIMEOUT, timeout)
        + attr(NBD_ATTR_SOCKETS | NLA_F_NESTED, item)
    )


def reconfigure_message(fd: int, index: int) -> bytes:
    """The attributes of NBD_CMD_RECONFIGURE giving /dev/nbd<index> one new socket, which
    the kernel puts in place of a dead one (packing, unit-tested)."""
    item = attr(NBD_SOCK_ITEM | NLA_F_NESTED, u32(NBD_SOCK_FD, fd))
    return u32(NBD_ATTR_INDEX, index) + attr(NBD_ATTR_SOCKETS | NLA_F_NESTED, item)


@attrs.frozen
class Attached:
    device: str
    address: str  # the server's numeric address, as connected
    export: Export


def attach(host: str, port: int, name: str, index: int = 0, timeout: int = 60) -> Attached:
    """Connect to the export and give the socket to /dev/nbd<index>."""
    sock, export = connect(host, port, name)
    address = str(sock.getpeername()[0])
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
    return Attached(f"/dev/nbd{index}", address, export)


def detach(index: int = 0) -> None:
    nl = GenericNetlink()
    try:
        family = nl.family_id(NBD_FAMILY)
        nl.request(family, NBD_CMD_DISCONNECT, NBD_GENL_VERSION, u32(NBD_ATTR_INDEX, index))
    finally:
        nl.close()


# --- reconnecting (`archiso-hook watch`) ---


class LinkAliveError(NbdError):
    """The kernel still had a live connection, and kept it (no reconnection was due)."""


@attrs.frozen
class Link:
    """What reconnecting /dev/nbd<index> needs, as the boot recorded it."""

    index: int
    address: str  # numeric: no name lookup in the live system
    port: int
    name: str
    size: int
    timeout: int  # NBD_ATTR_DEAD_CONN_TIMEOUT: how long reads wait for a connection

    @property
    def device(self) -> str:
        return f"/dev/nbd{self.index}"

    @property
    def server(self) -> str:
        return (
            f"[{self.address}]:{self.port}"
            if ":" in self.address
            else (f"{self.address}:{self.port}")
        )


def _proc_hex(address: str) -> str:
    """An address as /proc/net/tcp{,6} prints it: 32-bit words in host byte order."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    packed = socket.inet_pton(family, address)
    words = struct.unpack(f"={len(packed) // 4}I", packed)
    return "".join(f"{word:08X}" for word in words)


def tcp_established(remote: tuple[str, int], local: tuple[str, int] | None = None) -> bool:
    """Whether a TCP connection to `remote` (from `local`) is established on this
    machine, kernel-owned sockets included (/proc/net/tcp, tcp6)."""
    want_remote = f"{_proc_hex(remote[0])}:{remote[1]:04X}"
    want_local = f"{_proc_hex(local[0])}:{local[1]:04X}" if local else None
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table, encoding="ascii") as f:
                lines = f.readlines()[1:]
        except FileNotFoundError:
            if table.endswith("6"):  # a kernel without IPv6; without /proc: unknown
                continue
            raise
        for line in lines:
            fields = line.split()
            if (
                len(fields) > 3
                and fields[2] == want_remote
                and fields[3] == "01"
                and (want_local is None or fields[1] == want_local)
            ):
                return True
    return False


def reconnect(link: Link, nl: GenericNetlink, family: int, timeout: float = 10.0) -> Export:
    """A new connection to the same export, negotiated here and handed to the kernel in
    place of its dead one (NBD_CMD_RECONFIGURE). An export of another size is refused:
    the device would read another disk. LinkAliveError when the kernel had no dead
    connection to replace (it then drops the new one, and says nothing)."""
    sock, export = connect_address(link.address, link.port, link.name, timeout)
    try:
        if export.size != link.size:
            raise NbdError(
                f"the NBD server {link.server} now gives export {link.name!r} as "
                f"{export.size} bytes, not {link.size} as at boot: refusing to reconnect "
                f"{link.device} to another disk",
                hint="serve the file the system booted from again",
            )
        local = sock.getsockname()
        message = reconfigure_message(sock.fileno(), link.index)
        try:
            nl.request(family, NBD_CMD_RECONFIGURE, NBD_GENL_VERSION, message)
        except OSError as e:
            raise KernelError(
                f"the kernel refused the new connection for {link.device}: {e.strerror}",
                e.errno or 0,
            ) from None
    finally:
        sock.close()  # the kernel holds its own reference, if it took it
    if not tcp_established((link.address, link.port), (str(local[0]), int(local[1]))):
        raise LinkAliveError(f"{link.device} still had a live connection to {link.server}")
    return export
