"""Network boot parameters, parsed: ip=, BOOTIF= and the three kinds of server.

Pure logic, no sockets: what to configure and where to fetch from. The syntax of
`ip=` is the kernel's (Documentation/admin-guide/nfs/nfsroot.rst), as PXELINUX's
IPAPPEND/SYSAPPEND and mkinitcpio's ipconfig read it:

    ip=<client>:<server>:<gw>:<netmask>:<hostname>:<device>:<autoconf>:<dns0>:<dns1>:<ntp0>

or a bare `ip=dhcp` (also on, any, both, bootp; off and none mean no network).
"""

from __future__ import annotations

import enum
import re
from typing import TYPE_CHECKING

import attrs

from archiso_hook.errors import InputError

if TYPE_CHECKING:  # imported where used: every boot reads this module, few use the network
    import ipaddress

PXESERVER = "${pxeserver}"
NBD_PORT = 10809


class Autoconf(enum.StrEnum):
    DHCP = "dhcp"
    STATIC = "static"
    OFF = "off"


_DYNAMIC = {"on", "any", "dhcp", "both", "bootp", "rarp"}
_OFF = {"off", "none"}
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

    @property
    def wanted(self) -> bool:
        return self.autoconf is not Autoconf.OFF


def _address(field: str, value: str, what: str) -> ipaddress.IPv4Address | None:
    if value in {"", "0.0.0.0"}:
        return None
    if not re.fullmatch(r"[0-9]{1,3}(\.[0-9]{1,3}){3}", value):
        raise InputError(f"{what} {value!r} is not an IPv4 address (field {field})")
    try:
        import ipaddress  # noqa: PLC0415

        return ipaddress.IPv4Address(value)
    except ValueError:
        raise InputError(f"{what} {value!r} is not an IPv4 address (field {field})") from None


def _prefixlen(value: str, client: ipaddress.IPv4Address | None) -> int | None:
    mask = _address("4", value, "netmask")
    if mask is None:
        if client is None:
            return None
        # The kernel's default: the class of the address (A /8, B /16, C /24).
        first = int(client) >> 24
        return 8 if first < 128 else 16 if first < 192 else 24
    try:
        import ipaddress  # noqa: PLC0415

        return ipaddress.IPv4Network(f"0.0.0.0/{mask}").prefixlen
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


def _parse_ip(value: str) -> IpConfig:
    if not value:
        raise InputError("ip= is empty: expected dhcp, or <client>:<server>:<gw>:<netmask>:...")
    if value.lower() in _DYNAMIC:
        return IpConfig(Autoconf.DHCP)
    if value.lower() in _OFF:
        return IpConfig(Autoconf.OFF)
    fields = value.split(":")
    if len(fields) > 10:
        raise InputError(
            f"ip={value} has {len(fields)} fields: expected at most 10, "
            "<client>:<server>:<gw>:<netmask>:<hostname>:<device>:<autoconf>:<dns0>:<dns1>:<ntp0>"
        )
    fields += [""] * (10 - len(fields))
    client = _address("1", fields[0], "client address")
    server = _address("2", fields[1], "server address")
    gateway = _address("3", fields[2], "gateway")
    prefixlen = _prefixlen(fields[3], client)
    hostname = fields[4] or None
    if hostname is not None and not _HOSTNAME_RE.fullmatch(hostname):
        raise InputError(f"hostname {hostname!r} is not a valid host name (field 5)")
    device = fields[5] or None
    if device is not None and (not _IFNAME_RE.fullmatch(device) or device in {".", ".."}):
        raise InputError(f"device {device!r} is not a network interface name (field 6)")
    mode = fields[6].lower()
    if mode in _DYNAMIC:
        autoconf = Autoconf.DHCP
    elif mode in _OFF:
        autoconf = Autoconf.STATIC if client else Autoconf.OFF
    elif mode == "":
        autoconf = Autoconf.STATIC if client else Autoconf.DHCP
    else:
        raise InputError(
            f"autoconf {fields[6]!r} is not valid (field 7): expected off, none, on, "
            "any, dhcp, bootp, rarp or both"
        )
    dns = tuple(
        a for n, f in ((8, fields[7]), (9, fields[8])) if (a := _address(str(n), f, "DNS server"))
    )
    _address("10", fields[9], "NTP server")  # validated, not used
    if autoconf is Autoconf.STATIC and prefixlen is None:
        raise InputError("a static address needs a netmask (field 4)")
    return IpConfig(autoconf, client, server, gateway, prefixlen, hostname, device, dns)


def parse_bootif(value: str) -> str:
    """PXELINUX's BOOTIF=01-aa-bb-cc-dd-ee-ff (01: Ethernet) as aa:bb:cc:dd:ee:ff."""
    match = re.fullmatch(r"(?:01-)?((?:[0-9A-Fa-f]{2}-){5}[0-9A-Fa-f]{2})", value)
    if not match:
        raise InputError(
            f"BOOTIF={value} is not valid: expected 01- and a MAC address, "
            "as in BOOTIF=01-52-54-00-12-34-56"
        )
    return match.group(1).replace("-", ":").lower()


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
    import urllib.parse  # noqa: PLC0415

    url = urllib.parse.urlsplit(value)
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
