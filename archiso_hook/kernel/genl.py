"""Generic netlink (linux/netlink.h, linux/genetlink.h): one socket, requests answered by
the kernel's reply or errno, families looked up by name, multicast events."""

from __future__ import annotations

import errno
import os
import socket
import struct

from archiso_hook.errors import KernelError
from archiso_hook.kernel.cstruct import Struct

NETLINK_GENERIC = 16
GENL_ID_CTRL = 0x10
CTRL_CMD_GETFAMILY = 3
CTRL_ATTR_FAMILY_ID = 1
CTRL_ATTR_FAMILY_NAME = 2
CTRL_ATTR_MCAST_GROUPS = 7
CTRL_ATTR_MCAST_GRP_NAME = 1
CTRL_ATTR_MCAST_GRP_ID = 2
SOL_NETLINK = 270
NETLINK_ADD_MEMBERSHIP = 1
NLM_F_REQUEST = 0x1
NLM_F_ACK = 0x4
NLMSG_ERROR = 0x2
NLMSG_DONE = 0x3
NLA_F_NESTED = 1 << 15

NLMSGHDR = Struct(
    "nlmsghdr",
    (
        ("nlmsg_len", "I"),  # __u32 nlmsg_len;  (with this header)
        ("nlmsg_type", "H"),  # __u16 nlmsg_type;
        ("nlmsg_flags", "H"),  # __u16 nlmsg_flags;
        ("nlmsg_seq", "I"),  # __u32 nlmsg_seq;
        ("nlmsg_pid", "I"),  # __u32 nlmsg_pid;
    ),
)
GENLMSGHDR = Struct(
    "genlmsghdr",
    (
        ("cmd", "B"),  # __u8 cmd;
        ("version", "B"),  # __u8 version;
        ("reserved", "H"),  # __u16 reserved;
    ),
)
# Followed by its payload, the whole padded to 4 bytes.
NLATTR = Struct(
    "nlattr",
    (
        ("nla_len", "H"),  # __u16 nla_len;  (with this header, without the padding)
        ("nla_type", "H"),  # __u16 nla_type;
    ),
)
# The payload of an NLMSG_ERROR message (an acknowledgement when error is 0).
NLMSGERR = Struct(
    "nlmsgerr",
    (
        ("error", "i"),  # int error;  (a negative errno)
        ("msg", NLMSGHDR),  # struct nlmsghdr msg;
    ),
)


def attr(kind: int, payload: bytes) -> bytes:
    length = NLATTR.size + len(payload)
    return NLATTR.pack(nla_len=length, nla_type=kind) + payload + b"\0" * (-length % 4)


def u32(kind: int, value: int) -> bytes:
    return attr(kind, struct.pack("=I", value))


def u64(kind: int, value: int) -> bytes:
    return attr(kind, struct.pack("=Q", value))


def parse_attrs(data: bytes) -> dict[int, bytes]:
    out = {}
    offset = 0
    while offset + NLATTR.size <= len(data):
        header = NLATTR.unpack(data, offset)
        if header.nla_len < NLATTR.size:
            break
        out[header.nla_type & ~NLA_F_NESTED] = data[offset + NLATTR.size : offset + header.nla_len]
        offset += (header.nla_len + 3) & ~3
    return out


def _messages(data: bytes) -> list[tuple[int, int, bytes]]:
    """The (type, seq, payload) of each message in one datagram from the kernel."""
    found = []
    offset = 0
    while offset + NLMSGHDR.size <= len(data):
        header = NLMSGHDR.unpack(data, offset)
        if header.nlmsg_len < NLMSGHDR.size:
            break
        payload = data[offset + NLMSGHDR.size : offset + header.nlmsg_len]
        offset += (header.nlmsg_len + 3) & ~3
        found.append((header.nlmsg_type, header.nlmsg_seq, payload))
    return found


class GenericNetlink:
    """One NETLINK_GENERIC socket: request, then the reply or the kernel's errno."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_GENERIC)
        self.sock.bind((0, 0))
        self.seq = 0

    def close(self) -> None:
        self.sock.close()

    def request(self, family: int, cmd: int, version: int, attrs_: bytes) -> dict[int, bytes]:
        """Send one request; the attributes of the reply, or OSError with the kernel's errno."""
        self.seq += 1
        body = GENLMSGHDR.pack(cmd=cmd, version=version) + attrs_
        header = NLMSGHDR.pack(
            nlmsg_len=NLMSGHDR.size + len(body),
            nlmsg_type=family,
            nlmsg_flags=NLM_F_REQUEST | NLM_F_ACK,
            nlmsg_seq=self.seq,
        )
        self.sock.sendall(header + body)
        reply: dict[int, bytes] = {}
        while True:
            for kind, seq, payload in _messages(self.sock.recv(65536)):
                if seq != self.seq:
                    continue
                if kind == NLMSG_ERROR:
                    code = -NLMSGERR.unpack(payload.ljust(NLMSGERR.size, b"\0")).error
                    if code:
                        raise OSError(code, os.strerror(code))
                    return reply
                if kind == NLMSG_DONE:
                    return reply
                reply = parse_attrs(payload[GENLMSGHDR.size :])

    def family(self, name: str) -> tuple[int, dict[str, int]]:
        """The family's id, and its multicast groups by name."""
        try:
            reply = self.request(
                GENL_ID_CTRL,
                CTRL_CMD_GETFAMILY,
                1,
                attr(CTRL_ATTR_FAMILY_NAME, name.encode() + b"\0"),
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
        return family, mcast_groups(reply.get(CTRL_ATTR_MCAST_GROUPS, b""))

    def family_id(self, name: str) -> int:
        return self.family(name)[0]

    def subscribe(self, group: int) -> None:
        """Receive the kernel's messages to this multicast group on this socket."""
        self.sock.setsockopt(SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, group)

    def events(self, timeout: float | None) -> list[tuple[int, dict[int, bytes]]]:
        """The (command, attributes) of the messages that came within `timeout`
        seconds (none when nothing did)."""
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(65536)
        except TimeoutError:
            return []
        finally:
            self.sock.settimeout(None)
        return [
            (GENLMSGHDR.unpack(payload).cmd, parse_attrs(payload[GENLMSGHDR.size :]))
            for kind, _, payload in _messages(data)
            if kind >= GENL_ID_CTRL and len(payload) >= GENLMSGHDR.size
        ]


def mcast_groups(data: bytes) -> dict[str, int]:
    """CTRL_ATTR_MCAST_GROUPS: nested items, each with a name and an id."""
    groups = {}
    for item in parse_attrs(data).values():
        fields = parse_attrs(item)
        if CTRL_ATTR_MCAST_GRP_NAME in fields and CTRL_ATTR_MCAST_GRP_ID in fields:
            group_name = fields[CTRL_ATTR_MCAST_GRP_NAME].split(b"\0")[0].decode()
            groups[group_name] = struct.unpack("=I", fields[CTRL_ATTR_MCAST_GRP_ID][:4])[0]
    return groups
