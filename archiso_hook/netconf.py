"""Network boot parameters, parsed: ip=, BOOTIF= and the three kinds of server.

Pure logic, no sockets: what to configure and where to fetch from. The syntax of
`ip=` is the kernel's (Documentation/admin-guide/nfs/nfsroot.rst), as PXELINUX's
IPAPPEND/SYSAPPEND and mkinitcpio's ipconfig read it:

    ip=<client>:<server>:<gw>:<netmask>:<hostname>:<device>:<autoconf>:<dns0>:<dns1>:<ntp0>

or a bare `ip=dhcp` (also on, any, both, bootp; off and none mean no network). The
forms dracut and systemd document (dracut.cmdline(7), systemd-network-generator) are
read too, because command lines carry them for the live system's own network:

    ip={dhcp6|auto6|either6|link6|link-local|ibft|single-dhcp}
    ip=<interface>:<method>[:[<mtu>][:<macaddr>]]
    ip=<client>:[<peer>]:<gw>:<netmask>:<hostname>:<interface>:<method>[:[<mtu>][:<macaddr>]]

with IPv6 addresses in brackets. The hook itself configures IPv4 only, by DHCP or
statically; what else a value asks for is kept in `IpConfig.unsupported`: such a value
is for the live system, and only a network boot that has nothing else to go by stops.
"""

from __future__ import annotations

import enum
import re
from typing import TYPE_CHECKING

import attrs

from archiso_hook.errors import InputError
from archiso_hook.lazy import function

if TYPE_CHECKING:  # imported where used: every boot reads this module, few use the network
    import ipaddress

PXESERVER = "${pxeserver}"
NBD_PORT = 10809


class Autoconf(enum.StrEnum):
    DHCP = "dhcp"
    STATIC = "static"
    OFF = "off"
    OTHER = "other"  # IPv6, iBFT, link-local: for the live system, not done by the hook


_DYNAMIC = {"on", "any", "dhcp", "both", "bootp", "rarp", "single-dhcp"}
_OFF = {"off", "none"}
# dracut's and systemd's methods the hook cannot carry out, and what each asks for.
_OTHER = {
    "dhcp6": "DHCPv6",
    "auto6": "IPv6 autoconfiguration",
    "either6": "IPv6 autoconfiguration or DHCPv6",
    "link6": "IPv6 link-local addressing",
    "link-local": "link-local addressing",
    "ibft": "the iBFT's settings",
}
_METHODS = (
    "off, none, on, any, dhcp, bootp, rarp, both, dhcp6, auto6, either6, link6, link-local or ibft"
)
_IFNAME_RE = re.compile(r"[A-Za-z0-9_.:@-]{1,15}")  # the kernel's dev_valid_name, ASCII
_HOSTNAME_RE = re.compile(r"[A-Za-z0-9]([A-Za-z0-9.-]{0,252})?")


@attrs.frozen
class IpConfig:
    """What ip= asks for; fields it leaves empty are None (DHCP fills them)."""

    autoconf: Autoconf
    client: ipaddress.IPv4Address | None = None
    server: ipaddress.IPv4Address | None = None
    gateway: ipaddress.IPv4Address | None = None
    prefixlen: int | None = None
    hostname: str | None = None
    device: str | None = None
    dns: tuple[ipaddress.IPv4Address, ...] = ()
    # What the value asks for that the hook cannot do (DHCPv6, an IPv6 address, an MTU).
    unsupported: tuple[str, ...] = ()
    text: str = attrs.field(default="", eq=False)  # the value as written, for messages

    @property
    def wanted(self) -> bool:
        return self.autoconf is not Autoconf.OFF

    @property
    def usable(self) -> bool:
        """The hook can configure the network as this value says (or leave it off)."""
        return not self.unsupported


def _address(
    field: str, value: str, what: str, unsupported: list[str] | None = None
) -> ipaddress.IPv4Address | None:
    if value in {"", "0.0.0.0"}:
        return None
    if unsupported is not None and value.startswith("[") and value.endswith("]"):
        try:
            function("ipaddress:IPv6Address")(value[1:-1])
        except ValueError:
            raise InputError(f"{what} {value!r} is not an IPv6 address (field {field})") from None
        unsupported.append(f"the IPv6 {what} {value}")
        return None
    if not re.fullmatch(r"[0-9]{1,3}(\.[0-9]{1,3}){3}", value):
        raise InputError(f"{what} {value!r} is not an IPv4 address (field {field})")
    try:
        address: ipaddress.IPv4Address = function("ipaddress:IPv4Address")(value)
        return address
    except ValueError:
        raise InputError(f"{what} {value!r} is not an IPv4 address (field {field})") from None


def _prefixlen(value: str, client: ipaddress.IPv4Address | None) -> int | None:
    if re.fullmatch(r"[0-9]{1,3}", value):  # dracut takes a prefix length too
        limit = 32 if client is not None else 128  # (IPv6's, for the live system)
        if int(value) > limit:
            raise InputError(f"netmask {value!r} is not a prefix length, 0..{limit} (field 4)")
        return int(value) if client is not None else None
    mask = _address("4", value, "netmask")
    if mask is None:
        if client is None:
            return None
        # The kernel's default: the class of the address (A /8, B /16, C /24).
        first = int(client) >> 24
        return 8 if first < 128 else 16 if first < 192 else 24
    try:
        prefixlen: int = function("ipaddress:IPv4Network")(f"0.0.0.0/{mask}").prefixlen
        return prefixlen
    except ValueError:
        raise InputError(f"netmask {value!r} is not a contiguous mask (field 4)") from None


def parse_ip(value: str) -> IpConfig:
    """ip= as the kernel reads it. Errors name the value and the field."""
    try:
        return _parse_ip(value)
    except InputError as e:
        if e.message.startswith("ip="):
            raise
        raise InputError(f"ip={value}: {e.message}", e.hint) from None


def _split_fields(value: str) -> list[str]:
    """Fields separated by ':', except inside the brackets of an IPv6 address."""
    fields: list[str] = []
    field: list[str] = []
    depth = 0
    for char in value:
        if char == ":" and depth == 0:
            fields.append("".join(field))
            field = []
            continue
        depth += {"[": 1, "]": -1}.get(char, 0)
        field.append(char)
    fields.append("".join(field))
    return fields


def _method(word: str, field: str, client: bool, unsupported: list[str]) -> Autoconf:
    """The autoconf field; empty is the kernel's default (static with an address)."""
    mode = word.lower()
    if mode in _DYNAMIC:
        return Autoconf.DHCP
    if mode in _OFF:
        return Autoconf.STATIC if client else Autoconf.OFF
    if mode in _OTHER:
        unsupported.append(f"{_OTHER[mode]} ({mode})")
        return Autoconf.OTHER
    if mode == "" and field == "7":
        return Autoconf.STATIC if client else Autoconf.DHCP
    raise InputError(f"autoconf {word!r} is not valid (field {field}): expected {_METHODS}")


_MAC_PAIR = re.compile(r"[0-9A-Fa-f]{2}")


def _mtu_and_mac(tail: list[str], first: int, unsupported: list[str]) -> bool:
    """dracut's `[:[<mtu>][:<macaddr>]]` after the method, if that is what `tail` is
    (noted as unsupported: the hook keeps the interface's own); False if it is not."""
    mtu, mac = (tail[0] if tail else ""), tail[1:]
    if len(mac) == 1:
        mac = mac[0].split("-")
    if not re.fullmatch(r"[0-9]{0,5}", mtu) or (
        mac and not (len(mac) == 6 and all(_MAC_PAIR.fullmatch(pair) for pair in mac))
    ):
        return False
    if mtu and not 68 <= int(mtu) <= 65535:
        raise InputError(f"MTU {mtu!r} is not 68..65535 (field {first})")
    if mtu:
        unsupported.append(f"the MTU {int(mtu)}")
    if mac:
        unsupported.append(f"the MAC address {':'.join(mac).lower()}")
    return True


def _parse_ip(value: str) -> IpConfig:
    if not value:
        raise InputError(f"ip= is empty: expected dhcp, or {_FORMS}")
    unsupported: list[str] = []
    fields = _split_fields(value)
    looks_like_address = re.compile(r"[0-9.]*|\[.*\]")
    if len(fields) == 1 and not looks_like_address.fullmatch(value):
        autoconf = _method(value, "1", False, unsupported)
        return IpConfig(autoconf, unsupported=tuple(unsupported), text=value)
    first = fields[0]
    if len(fields) > 1 and first and not looks_like_address.fullmatch(first):
        # dracut's <interface>:<method>[:[<mtu>][:<macaddr>]]
        interface = _device(first, "1")
        autoconf = _method(fields[1], "2", False, unsupported)
        if len(fields) > 2 and not _mtu_and_mac(fields[2:], 3, unsupported):
            raise InputError(
                f"{':'.join(fields[2:])!r} after the method is not an MTU and a MAC address "
                "(fields 3 and on)"
            )
        return IpConfig(autoconf, device=interface, unsupported=tuple(unsupported), text=value)
    tail = fields[7:]
    mtu_mac = bool(tail) and _mtu_and_mac(tail, 8, unsupported)
    if len(fields) > 10 and not mtu_mac:
        raise InputError(f"ip={value} has {len(fields)} fields: expected at most 10, {_FORMS}")
    fields += [""] * (10 - len(fields))
    v6_client = fields[0].startswith("[")
    client = _address("1", fields[0], "client address", unsupported)
    server = _address("2", fields[1], "server address", unsupported)
    gateway = _address("3", fields[2], "gateway", unsupported)
    prefixlen = _prefixlen(fields[3], client)
    hostname = fields[4] or None
    if hostname is not None and not _HOSTNAME_RE.fullmatch(hostname):
        raise InputError(f"hostname {hostname!r} is not a valid host name (field 5)")
    device = _device(fields[5], "6") if fields[5] else None
    autoconf = _method(fields[6], "7", client is not None or v6_client, unsupported)
    if v6_client and autoconf is Autoconf.STATIC:
        autoconf = Autoconf.OTHER
    dns: tuple[ipaddress.IPv4Address, ...] = ()
    if not mtu_mac:
        found = (_address(str(n), f, "DNS server", unsupported)
                 for n, f in ((8, fields[7]), (9, fields[8])))  # fmt: skip
        dns = tuple(a for a in found if a)
        _address("10", fields[9], "NTP server", unsupported)  # validated, not used
    if autoconf is Autoconf.STATIC and prefixlen is None:
        raise InputError("a static address needs a netmask (field 4)")
    return IpConfig(
        autoconf, client, server, gateway, prefixlen, hostname, device, dns,
        tuple(unsupported), value,
    )  # fmt: skip


_FORMS = "<client>:<server>:<gw>:<netmask>:<hostname>:<device>:<autoconf>:<dns0>:<dns1>:<ntp0>"


def _device(name: str, field: str) -> str:
    if not _IFNAME_RE.fullmatch(name) or name in {".", ".."}:
        raise InputError(f"device {name!r} is not a network interface name (field {field})")
    return name


def parse_bootif(value: str) -> str:
    """BOOTIF= as aa:bb:cc:dd:ee:ff: PXELINUX's 01-aa-bb-cc-dd-ee-ff (01: Ethernet's ARP
    type, as IPAPPEND 2 writes it), or a MAC address with '-' or ':' (dracut's)."""
    match = re.fullmatch(r"(?:01([-:]))?((?:[0-9A-Fa-f]{2}([-:])){5}[0-9A-Fa-f]{2})", value)
    if not match or match.group(2).count(match.group(3)) != 5:
        raise InputError(
            f"BOOTIF={value} is not valid: expected a MAC address, as in "
            "BOOTIF=01-52-54-00-12-34-56 or BOOTIF=52:54:00:12:34:56"
        )
    return match.group(2).replace("-", ":").lower()


def boot_config(configs: tuple[IpConfig, ...], server: str) -> IpConfig:
    """What a network boot (from `server`=) configures: the last ip= the hook can carry
    out (the others are left to the live system), or DHCP when no ip= is given."""
    if not configs:
        return IpConfig(Autoconf.DHCP)
    usable = [config for config in configs if config.usable]
    if not usable:
        last = configs[-1]
        wants = ", ".join(last.unsupported)
        raise InputError(
            f"ip={last.text} asks for {wants}, which archiso-hook cannot set up to reach {server}=",
            hint="add ip=dhcp or a static IPv4 ip= for the boot; the live system's own "
            "network setup still reads the other ip=",
        )
    config = usable[-1]
    if not config.wanted:
        raise InputError(
            f"{server}= needs the network, but ip={config.text} turns it off",
            hint="drop that ip=, or give ip=dhcp",
        )
    return config


# --- servers: checked when read, ${pxeserver} put in when the network is up ---

_HOST_RE = re.compile(r"[A-Za-z0-9]([A-Za-z0-9.-]{0,252})?|\$\{pxeserver\}")


def _host(name: str, value: str, host: str) -> str:
    if not _HOST_RE.fullmatch(host):
        raise InputError(
            f"{name}={value} is not valid: {host!r} is not a host name, an IPv4 address "
            f"or {PXESERVER}"
        )
    return host


def parse_http_server(value: str) -> str:
    """archiso_http_srv=http://host[:port]/path/ : the base URL, ending in '/'."""
    url = function("urllib.parse:urlsplit")(value)
    if url.scheme not in {"http", "https"} or not url.netloc:
        raise InputError(
            f"archiso_http_srv={value} is not valid: expected a URL such as "
            "http://10.0.2.2/archiso/ (http or https)"
        )
    if url.query or url.fragment or "@" in url.netloc:
        raise InputError(f"archiso_http_srv={value} is not valid: no query, fragment or user")
    host, _, port = url.netloc.partition(":")  # IPv4 and names: ip= is IPv4 only
    _host("archiso_http_srv", value, host)
    if port and not (port.isascii() and port.isdigit() and 0 < int(port) < 65536):
        raise InputError(f"archiso_http_srv={value} is not valid: port {port!r}")
    if ".." in url.path.split("/"):
        raise InputError(f"archiso_http_srv={value} is not valid: no '..' in the path")
    return value if value.endswith("/") else value + "/"


@attrs.frozen
class NbdServer:
    host: str
    port: int = NBD_PORT


def parse_nbd_server(value: str) -> NbdServer:
    """archiso_nbd_srv=host[:port] (port 10809 by default)."""
    host, sep, port = value.rpartition(":") if value.count(":") == 1 else (value, "", "")
    _host("archiso_nbd_srv", value, host)
    if sep and not (port.isascii() and port.isdigit() and 0 < int(port) < 65536):
        raise InputError(f"archiso_nbd_srv={value} is not valid: port {port!r}")
    return NbdServer(host, int(port) if sep else NBD_PORT)


def parse_nbd_name(value: str) -> str:
    if not value or len(value.encode()) > 4096 or not value.isprintable():
        raise InputError(
            f"archiso_nbd_name={value} is not valid: expected the export's name, printable"
        )
    return value


@attrs.frozen
class NfsExport:
    host: str
    path: str

    @property
    def source(self) -> str:
        return f"{self.host}:{self.path}"


def parse_nfs_server(value: str) -> NfsExport:
    """archiso_nfs_srv=host:/path. No ',' anywhere: the kernel reads options after it."""
    host, sep, path = value.partition(":/")
    if not sep or "," in value or not value.isprintable() or " " in value:
        raise InputError(
            f"archiso_nfs_srv={value} is not valid: expected host:/path, such as "
            f"10.0.2.2:/srv/archiso or {PXESERVER}:/srv/archiso"
        )
    _host("archiso_nfs_srv", value, host)
    parts = path.split("/")
    if ".." in parts:
        raise InputError(f"archiso_nfs_srv={value} is not valid: no '..' in the path")
    return NfsExport(host, "/" + path)


_LABEL = r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?"
_DNS_NAME_RE = re.compile(rf"{_LABEL}(?:\.{_LABEL})*\.?")
MAX_SEARCH = 6  # names on resolv.conf's search line, as glibc before 2.26 reads it


def dhcp_names(value: object, what: str) -> tuple[str | None, str | None]:
    """A DHCP server's host or domain name(s) (options 12 and 15), checked before it
    reaches resolv.conf or a log line: (the names, space-separated, or None; why it was
    refused, or None). A name is DNS labels of 1..63 letters, digits, '-' or '_', 253
    bytes at most; a domain option may list up to MAX_SEARCH of them."""
    if value is None or value == "":
        return None, None
    if not isinstance(value, str):
        return None, f"the server's {what} is not text ({type(value).__name__})"
    if any(c < " " or c == "\x7f" for c in value):  # a newline would start a resolv.conf line
        return None, f"the server's {what} {printable_short(value)} is not a DNS name"
    names = value.split(" ")
    names = [name for name in names if name]
    limit = MAX_SEARCH if what == "domain name" else 1
    if not names or len(names) > limit:
        return None, f"the server's {what} {printable_short(value)} is not {limit} name(s)"
    for name in names:
        if len(name) > 253 or not _DNS_NAME_RE.fullmatch(name):
            return None, f"the server's {what} {printable_short(value)} is not a DNS name"
    return " ".join(names), None


def printable_short(value: str, limit: int = 80) -> str:
    """A server's text for a log line: quoted, escaped, cut."""
    text = repr(value[:limit])
    return text + ("..." if len(value) > limit else "")


def with_server(text: str, server: ipaddress.IPv4Address | None, name: str) -> str:
    """Put the boot server's address in place of ${pxeserver}: plain text replacement,
    never a shell's expansion."""
    if PXESERVER not in text:
        return text
    if server is None:
        raise InputError(
            f"{name} uses {PXESERVER}, but no server address is known: DHCP named none, "
            "and ip= gave none (its second field)"
        )
    return text.replace(PXESERVER, str(server))
