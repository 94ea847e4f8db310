"""Property-based fuzzing of everything a user writes: the kernel command line, aitab
files, sizes and mount options, and the boot plan made from them.

The project's rule: bad input gets a clear error and never a traceback. Each parser
raises only InputError for bad input, and its message names the parameter
(`cow_spacesize=...`) or the file and line (`FILE:LINE:`). Any other exception escaping
a parser fails these tests as it is.

Inputs are arbitrary text, arbitrary bytes decoded as /proc/cmdline and aitab files are
read (UTF-8, surrogateescape), and near-valid inputs: valid command lines and aitab
tables generated from the documented forms, then mutated in one place.

`make test` runs them with the reproducible `ci` profile (tests/conftest.py); `make fuzz`
with the `fuzz` profile, over 100,000 examples.
"""

from __future__ import annotations

import enum
import functools
import ipaddress
import json
import re
import tempfile
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple, ParamSpec, cast

import attrs
import pytest
from hypothesis import example, given, note
from hypothesis import strategies as st

from archiso_hook import checksums, cmdline, netconf
from archiso_hook.aitab import ARCHES, COMPRESSIONS, FILESYSTEMS, AitabEntry, ImageType, parse_aitab
from archiso_hook.boot.state import RECORDS, State, check_record
from archiso_hook.cmdline import Arch, CowMode, split_cmdline, udev_encode
from archiso_hook.cowsize import cow_need, cow_sizes
from archiso_hook.errors import InputError
from archiso_hook.kernel import dm
from archiso_hook.mountopts import MountOptions, parse_mount_options
from archiso_hook.options import Options, parse_options
from archiso_hook.paths import DM_NAME_MAX, DM_UUID_PREFIX
from archiso_hook.plan import BootPlan, plan_boot
from archiso_hook.sizes import MiB, Size, parse_size

# --- counting examples (tests/conftest.py prints the total) --------------------------------

_P = ParamSpec("_P")
_RUN: Counter[str] = Counter()


def counted(test: Callable[_P, None]) -> Callable[_P, None]:
    """Count each example the test runs (explicit, generated and shrinking ones)."""

    @functools.wraps(test)
    def run(*args: _P.args, **kwargs: _P.kwargs) -> None:
        _RUN[test.__name__] += 1
        test(*args, **kwargs)

    return run


@pytest.fixture(scope="module", autouse=True)
def _tally(fuzz_examples: Counter[str]) -> Iterator[None]:
    yield
    fuzz_examples.update(_RUN)
    _RUN.clear()


# --- characters --------------------------------------------------------------------------

X86 = Arch.X86_64
# The kernel's isspace() in ASCII: what separates words on the command line.
BLANKS = " \t\n\v\f\r"
# Characters that break parsers: quotes and separators, blanks Python knows and the kernel
# does not, digits int() takes and [0-9] does not, the Kelvin sign (K under re.IGNORECASE),
# controls, and raw bytes as surrogateescape decodes them.
NASTY = (
    '"', "=", ",", "/", "%", "#", ".", "-", "+", "\\", "'", "<", ">",
    " ", "\t", "\n", "\r", "\v", "\f", "\x00", "\x1b", "\x1c", "\x1f", "\x7f",
    "\x85", "\xa0", "\u1680", "\u2028", "\u3000", "\ufeff", "\udc80", "\udcff",
    "²", "½", "\u0661", "\u0663", "\uff10", "\U0001d7d7", "\u212a", "\u017f", "é",
)  # fmt: skip
SURROGATES = st.integers(0xDC80, 0xDCFF).map(chr)
ANY_CHAR = st.characters() | st.sampled_from(NASTY) | SURROGATES
ANY_TEXT = st.text(ANY_CHAR, max_size=60)


def chars_except(excluded: str) -> st.SearchStrategy[str]:
    return st.characters(exclude_characters=excluded) | st.sampled_from(
        [c for c in NASTY if c not in excluded]
    )


def surrogateescaped(data: bytes) -> str:
    return data.decode("utf-8", errors="surrogateescape")


# Python reprs of our objects, or of exceptions: never part of a message for a user.
INTERNAL_REPR = re.compile(
    r"object at 0x|Traceback|\b(?:Size|Arch|CowMode|MountOptions|Options|Parameter|AitabEntry"
    r"|ImageType|[A-Za-z]*Error)\(|<(?:Arch|CowMode|ImageType|enum|function|class|bound)\b"
    r"| at 0x[0-9a-f]+>"
)


def assert_no_internal_repr(message: str, *user_text: str) -> None:
    for text in sorted(user_text, key=len, reverse=True):  # what the user wrote may be anything
        if text:
            message = message.replace(text, "")
    assert not INTERNAL_REPR.search(message), message


# --- the kernel command line -------------------------------------------------------------

NAMES = tuple(p.name for p in cmdline.PARAMETERS)
BY_NAME = {p.name: p for p in cmdline.PARAMETERS}
DEFAULTS = Options(arch=X86)
TAG_LINKS = {
    "UUID": "by-uuid", "LABEL": "by-label", "PARTUUID": "by-partuuid", "PARTLABEL": "by-partlabel",
}  # fmt: skip
SUFFIXES = {
    "": 1,
    "k": 1 << 10,
    "m": 1 << 20,
    "g": 1 << 30,
    "t": 1 << 40,
    "p": 1 << 50,
    "e": 1 << 60,
}
FLAG_WORDS = {"y": True, "yes": True, "1": True, "true": True, "on": True,
              "n": False, "no": False, "0": False, "false": False, "off": False}  # fmt: skip
PARAMETER_NAMED = re.compile(r"\b(?:" + "|".join(map(re.escape, NAMES)) + r")=")

SAFE = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-"
COMPONENT = st.text(SAFE + ".", min_size=1, max_size=10).filter(lambda c: c not in {".", ".."})
RELATIVE = st.lists(COMPONENT, min_size=1, max_size=4).map("/".join)
SLASHES = st.sampled_from(["", "/", "//"])
# Not . or ..: /dev/disk/by-label/.. would be /dev/disk.
LABEL = (
    st.text(chars_except('"'), min_size=1, max_size=16)
    | st.sampled_from(["ARCH_202611", "ARCH 2011", "y", "UUID=x", "a/b", "-", "...", ".a"])
).filter(lambda label: label not in {".", ".."})
DEVICE = st.builds(
    lambda tag, value: f"{tag}={value}", st.sampled_from(sorted(TAG_LINKS)),
    st.text(chars_except('"/'), min_size=1, max_size=16).filter(lambda v: v not in {".", ".."}),
) | RELATIVE.map(lambda path: "/dev/" + path)  # fmt: skip
UUID = st.text("0123456789abcdefABCDEF-", min_size=1, max_size=36)
MOUNT_WORDS = (
    "ro", "rw", "noatime", "relatime", "nosuid", "nodev", "noexec", "sync", "lazytime",
    "defaults", "noauto", "nofail", "x-systemd.automount", "subvol=@cow", "uid=0",
    "mode=0700", "compress=zstd:3", "errors=remount-ro", "discard",
)  # fmt: skip
MOUNT_OPTIONS = st.lists(st.sampled_from(MOUNT_WORDS), min_size=1, max_size=5).map(",".join)
DM_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.+-"
# Long ones with long image names make device-mapper names over 127 bytes.
PREFIX = st.text(DM_CHARS, min_size=1, max_size=8) | st.text(DM_CHARS, min_size=60, max_size=64)


def _same(values: st.SearchStrategy[str]) -> st.SearchStrategy[tuple[str | None, object]]:
    return values.map(lambda v: (v, v))


def _path(
    values: st.SearchStrategy[str], lead: bool
) -> st.SearchStrategy[tuple[str | None, object]]:
    """A path written with extra slashes around it; the parsed value is without them."""
    return st.builds(
        lambda a, p, b: (a + p + b, p), SLASHES if lead else st.just(""), values, SLASHES
    )


def _size(number: int, suffix: str) -> tuple[str | None, object]:
    return f"{number}{suffix}", Size(number * SUFFIXES[suffix.lower()])


# Sizes the kernel's 64-bit arithmetic holds (parse_size refuses 1 << 63 and above): the
# number's range depends on the suffix, or 10**12 E would be drawn and expected valid.
SIZE = st.sampled_from([*SUFFIXES, *"KMGTPE"]).flatmap(
    lambda suffix: st.builds(
        _size, st.integers(1, min(10**12, ((1 << 63) - 1) // SUFFIXES[suffix.lower()])),
        st.just(suffix),
    )
) | (st.integers(1, 100).map(lambda n: (f"{n}%", Size(n, percent=True))))  # fmt: skip
COPY_WORDS = {"y": "y", "yes": "y", "1": "y", "true": "y", "n": "n", "no": "n", "0": "n",
              "false": "n", "auto": "auto"}  # fmt: skip

IPV4 = (
    st.tuples(*[st.integers(0, 255)] * 4)
    .map(lambda t: ".".join(map(str, t)))
    .filter(lambda a: a != "0.0.0.0")
)
HOST = (
    IPV4
    | st.from_regex(r"[a-z][a-z0-9-]{0,10}(\.[a-z]{2,4}){0,2}", fullmatch=True)
    | st.just(netconf.PXESERVER)
)
PORT = st.integers(1, 65535)
URL_PATH = st.lists(st.text("abcxyz019_-.", min_size=1, max_size=6).filter(
    lambda p: p not in {".", ".."}), max_size=3)  # fmt: skip
DHCP_WORDS = ("dhcp", "on", "any", "both", "bootp", "rarp", "DHCP", "single-dhcp")
IFNAME = st.from_regex(r"[a-z][a-z0-9]{0,10}", fullmatch=True)


@st.composite
def static_ip(draw: st.DrawFn) -> tuple[str | None, object]:
    client, server, gateway = draw(IPV4), draw(IPV4 | st.just("")), draw(IPV4 | st.just(""))
    prefix = draw(st.integers(1, 32))
    mask = str(ipaddress.IPv4Network(f"0.0.0.0/{prefix}").netmask)
    host = draw(st.from_regex(r"[a-z][a-z0-9-]{0,10}", fullmatch=True) | st.just(""))
    device = draw(IFNAME | st.just(""))
    auto = draw(st.sampled_from(["", "off", "none", *DHCP_WORDS]))
    dns = draw(st.lists(IPV4, max_size=2))
    text = ":".join([client, server, gateway, mask, host, device, auto, *dns])
    expected = netconf.IpConfig(
        netconf.Autoconf.DHCP if auto.lower() in netconf._DYNAMIC else netconf.Autoconf.STATIC,
        ipaddress.IPv4Address(client),
        ipaddress.IPv4Address(server) if server else None,
        ipaddress.IPv4Address(gateway) if gateway else None,
        prefix,
        host or None,
        device or None,
        tuple(map(ipaddress.IPv4Address, dns)),
    )
    return text, expected


MAC = st.lists(st.integers(0, 255), min_size=6, max_size=6)
# dracut's and systemd's methods the hook leaves to the live system, with what it notes.
OTHER_WORDS = {"dhcp6": "DHCPv6 (dhcp6)", "auto6": "IPv6 autoconfiguration (auto6)",
               "either6": "IPv6 autoconfiguration or DHCPv6 (either6)",
               "link6": "IPv6 link-local addressing (link6)",
               "link-local": "link-local addressing (link-local)",
               "ibft": "the iBFT's settings (ibft)"}  # fmt: skip


@st.composite
def mtu_and_mac(draw: st.DrawFn) -> tuple[str, tuple[str, ...]]:
    """dracut's `:[<mtu>][:<macaddr>]` (or nothing), and what the hook notes of it."""
    mtu = draw(st.none() | st.integers(68, 65535))
    mac = draw(st.none() | MAC)
    if mtu is None and mac is None:
        return draw(st.sampled_from(["", ":"])), ()
    text = ":" + ("" if mtu is None else str(mtu))
    notes: tuple[str, ...] = () if mtu is None else (f"the MTU {mtu}",)
    if mac is not None:
        sep = draw(st.sampled_from([":", "-"]))
        text += ":" + sep.join(f"{b:02x}" for b in mac)
        notes += (f"the MAC address {':'.join(f'{b:02x}' for b in mac)}",)
    return text, notes


@st.composite
def interface_ip(draw: st.DrawFn) -> tuple[str | None, object]:
    """dracut's ip=<interface>:<method>[:[<mtu>][:<macaddr>]]."""
    device = draw(IFNAME.filter(lambda n: not re.fullmatch(r"[0-9.]*", n)))
    method = draw(st.sampled_from([*DHCP_WORDS, "off", "none", *OTHER_WORDS]))
    tail, notes = draw(mtu_and_mac())
    if method in OTHER_WORDS:
        autoconf, notes = netconf.Autoconf.OTHER, (OTHER_WORDS[method], *notes)
    elif method in {"off", "none"}:
        autoconf = netconf.Autoconf.OFF
    else:
        autoconf = netconf.Autoconf.DHCP
    text = f"{device}:{method}{tail}"
    return text, netconf.IpConfig(autoconf, device=device, unsupported=notes)


@st.composite
def ipv6_ip(draw: st.DrawFn) -> tuple[str | None, object]:
    """dracut's full form with IPv6 addresses in brackets: for the live system."""
    client = str(ipaddress.IPv6Address(draw(st.integers(1, (1 << 128) - 1))))
    gateway = draw(st.sampled_from(["", "[2001:db8::1]"]))
    device = draw(IFNAME)
    tail, notes = draw(mtu_and_mac())
    text = f"[{client}]::{gateway}:64:live:{device}:none{tail}"
    notes = (*notes, f"the IPv6 client address [{client}]") + (
        (f"the IPv6 gateway {gateway}",) if gateway else ()
    )
    expected = netconf.IpConfig(netconf.Autoconf.OTHER, prefixlen=None, hostname="live",
                                device=device, unsupported=notes)  # fmt: skip
    return text, expected


IP = (
    st.sampled_from(DHCP_WORDS).map(lambda w: (w, netconf.IpConfig(netconf.Autoconf.DHCP)))
    | st.sampled_from(["off", "none"]).map(lambda w: (w, netconf.IpConfig(netconf.Autoconf.OFF)))
    | st.sampled_from(sorted(OTHER_WORDS)).map(
        lambda w: (w, netconf.IpConfig(netconf.Autoconf.OTHER, unsupported=(OTHER_WORDS[w],)))
    )
    | static_ip()
    | interface_ip()
    | ipv6_ip()
)
BOOTIF = st.builds(
    lambda m, prefix, sep: (prefix.replace("-", sep) + sep.join(f"{b:02X}" for b in m),
                            ":".join(f"{b:02x}" for b in m)),
    MAC, st.sampled_from(["01-", ""]), st.sampled_from(["-", ":"]),
)  # fmt: skip
HTTP_SRV = st.builds(
    lambda scheme, host, port, path, slash: (
        url := f"{scheme}://{host}{port}/{'/'.join(path)}{slash}",
        url if url.endswith("/") else url + "/",
    ),
    st.sampled_from(["http", "https"]),
    HOST,
    st.just("") | PORT.map(lambda p: f":{p}"),
    URL_PATH,
    st.sampled_from(["", "/"]),
)
NBD_SRV = st.builds(
    lambda host, port: (host, netconf.NbdServer(host)) if port is None else (
        f"{host}:{port}", netconf.NbdServer(host, port)),
    HOST, st.none() | PORT,
)  # fmt: skip
NFS_SRV = st.builds(
    lambda host, path: (f"{host}:/{'/'.join(path)}", netconf.NfsExport(host, "/" + "/".join(path))),
    HOST,
    URL_PATH,
)
NBD_NAME = st.text(st.characters(codec="ascii", categories=["L", "N", "P"]), min_size=1,
                   max_size=20).filter(lambda t: '"' not in t)  # fmt: skip

# Every parameter's valid values as written, with what parse_options makes of them.
VALID: dict[str, st.SearchStrategy[tuple[str | None, object]]] = {
    "archisobasedir": _path(RELATIVE, lead=False),
    "archisolabel": _same(LABEL),
    "archisodevice": _same(DEVICE),
    "archisosearchuuid": _same(UUID),
    "archisosearchfilename": _path(RELATIVE, lead=True),
    "img_dev": _same(DEVICE),
    "img_label": _same(LABEL),
    "img_loop": _path(RELATIVE, lead=True),
    "img_flags": _same(MOUNT_OPTIONS),
    "arch": st.sampled_from(list(Arch)).map(lambda a: (str(a), a)),
    "cow_spacesize": SIZE,
    "cow_label": _same(LABEL),
    "cow_device": _same(DEVICE),
    "cow_directory": _path(RELATIVE, lead=True),
    "cow_flags": _same(MOUNT_OPTIONS),
    "cow_persistent": st.sampled_from(list(CowMode)).map(lambda m: (str(m), m)),
    "cow_reset": st.sampled_from([(None, True), *FLAG_WORDS.items()]),
    "cow_grow": st.sampled_from([(None, True), *FLAG_WORDS.items()]),
    "cow_grow_max": SIZE,
    "cow_chunksize": st.integers(0, 21).map(lambda k: (str(1 << k), 1 << k)),
    "copytoram": st.sampled_from([(None, "y"), *COPY_WORDS.items()]).map(
        lambda w: (w[0], cmdline.CopyMode(w[1]))
    ),
    "copytoram_size": SIZE,
    "checksum": st.sampled_from([(None, True), *FLAG_WORDS.items()]),
    "verify": st.sampled_from([(None, True), *FLAG_WORDS.items()]),
    "cms_verify": st.sampled_from([(None, True), *FLAG_WORDS.items()]),
    "dm_snap_prefix": _same(PREFIX),
    "rootdelay": st.integers(0, 86400).map(lambda n: (str(n), n)),
    "quiet": st.sampled_from([(None, True), *FLAG_WORDS.items()]),
    "ip": IP,
    "BOOTIF": BOOTIF,
    "copy_resolvconf": st.sampled_from([(None, True), *FLAG_WORDS.items()]),
    "archiso_http_srv": HTTP_SRV,
    "archiso_http_spc": SIZE,
    "archiso_nbd_srv": NBD_SRV,
    "archiso_nbd_name": _same(NBD_NAME),
    "archiso_nfs_srv": NFS_SRV,
    "archiso_nfs_opt": _same(MOUNT_OPTIONS),
}  # fmt: skip
# Words that are not archiso parameters (or not ones this version acts on).
FOREIGN = tuple(word for word in (
    "BOOT_IMAGE=/arch/boot/x86_64/vmlinuz-linux", "initrd=\\arch\\initramfs.img",
    "root=/dev/sda1", "console=ttyS0,115200", "rd.debug", "nomodeset",
    "cowspace_size=1G", "cowfile_size=50%", "vga=791", "--", "=", "ARCH=i686", "Quiet",
    "rootdelay_=x", 'foo="a b"', *sorted(cmdline.NOT_YET_SUPPORTED), "aitab=aitab.x86_64",
    "archisoflags=noatime",
) if word.partition("=")[0] not in BY_NAME)  # fmt: skip


class Word(NamedTuple):
    key: str
    raw: str | None  # the value as parsed (None: a bare word)
    expected: object  # what parse_options makes of it (archiso parameters only)
    text: str  # as written on the command line


@st.composite
def rendered(draw: st.DrawFn, key: str, raw: str | None) -> str:
    """`key=value`, `key="value"` or `"key=value"`; blanks are always quoted."""
    if raw is None:
        return key
    styles = ['{k}="{v}"', '"{k}={v}"'] + ([] if any(c in BLANKS for c in raw) else ["{k}={v}"])
    return draw(st.sampled_from(styles)).format(k=key, v=raw)


@st.composite
def archiso_words(draw: st.DrawFn) -> Word:
    key = draw(st.sampled_from(NAMES))
    raw, expected = draw(VALID[key])
    return Word(key, raw, expected, draw(rendered(key, raw)))


def foreign_word(text: str) -> Word:
    key, sep, value = text.partition("=")
    return Word(key, value.strip('"') if sep else None, None, text)


@st.composite
def joined(draw: st.DrawFn, words: list[str]) -> str:
    """Words separated by blanks, with blanks (or none) before and after."""
    seps = draw(
        st.lists(st.text(BLANKS, min_size=1, max_size=3), min_size=len(words), max_size=len(words))
    )
    text = "".join(sep + word for sep, word in zip(seps, words, strict=False))
    return (
        draw(st.text(BLANKS, max_size=2)) + text.lstrip(BLANKS) + draw(st.text(BLANKS, max_size=2))
    )


@st.composite
def command_lines(draw: st.DrawFn) -> tuple[list[Word], str]:
    """A valid command line: archiso parameters (some repeated) among other words."""
    words = draw(
        st.lists(
            archiso_words() | st.sampled_from(FOREIGN).map(foreign_word), min_size=1, max_size=12
        ).filter(lambda ws: any(w.key in BY_NAME for w in ws))
    )
    # One server to boot from (two are refused: test_two_servers_are_refused).
    servers = {w.key for w in words if w.key in SERVERS}
    words = [w for w in words if w.key not in SERVERS or w.key == min(servers)]
    return words, draw(joined([w.text for w in words]))


SERVERS = {"archiso_http_srv", "archiso_nbd_srv", "archiso_nfs_srv"}


def test_two_servers_are_refused() -> None:
    with pytest.raises(InputError, match="archiso_nbd_srv= and archiso_nfs_srv= are both given"):
        parse_options("archiso_nfs_srv=h:/x archiso_nbd_srv=h", machine_arch=Arch.X86_64)


# Decimal digits of other scripts (int() reads them), and superscripts (it does not).
DIGIT_SETS = tuple("".join(chr(zero + i) for i in range(10)) for zero in (0x660, 0xFF10, 0x1D7CE))
DIGIT_SETS += ("\u2070\u00b9\u00b2\u00b3\u2074\u2075\u2076\u2077\u2078\u2079",)
HUGE = st.integers(19, 6000).map(lambda n: "9" * n) | st.integers(1, 100).map(
    lambda n: "1" + "0" * n
)
MUTATIONS = (
    "delete", "insert", "replace", "truncate", "quote", "huge", "unicode digits", "empty",
    "bare", "sign", "blank", "repeat", "case", "slash", "newline", "text", "other value",
)  # fmt: skip


@st.composite
def mutated(draw: st.DrawFn, value: str) -> str | None:
    """`value` changed in one way a person, a boot loader or a broken medium might."""
    how = draw(st.sampled_from(MUTATIONS))
    at = draw(st.integers(0, len(value)))
    char = draw(ANY_CHAR)
    note(f"mutation: {how} at {at} ({char!r})")
    if how == "delete":
        return value[:at] + value[at + 1 :]
    if how == "insert":
        return value[:at] + char + value[at:]
    if how == "replace":
        return value[:at] + char + value[at + 1 :]
    if how == "truncate":
        return value[:at]
    if how == "quote":
        return draw(st.sampled_from(['"' + value, value + '"', f'"{value}"', f'""{value}']))
    if how == "huge":
        return draw(HUGE) + draw(st.sampled_from(["", "M", "k", "%", "E"]))
    if how == "unicode digits":
        digits = draw(st.sampled_from(DIGIT_SETS))
        changed = value.translate(str.maketrans("0123456789", digits))
        return changed if changed != value else value[:at] + digits[draw(st.integers(0, 9))]
    if how == "empty":
        return ""
    if how == "bare":
        return None
    if how == "sign":
        return draw(st.sampled_from(["-", "+", " ", "0x", "0"])) + value
    if how == "blank":
        blank: str = draw(st.sampled_from([*BLANKS, "\xa0", "\u3000", "\x85"]))
        return value[:at] + blank + value[at:]
    if how == "repeat":
        return value + draw(st.sampled_from(["", ",", "/", "=", "%"])) + value
    if how == "case":
        return value.swapcase()
    if how == "slash":
        return (
            value[:at] + draw(st.sampled_from(["/", "..", "/..", "./", "//", "../"])) + value[at:]
        )
    if how == "newline":
        return value + draw(st.sampled_from(["\n", "\r\n", "\x00", "\t"]))
    if how == "text":
        return draw(ANY_TEXT)
    # a valid value of another parameter
    other: tuple[str | None, object] = draw(st.sampled_from(NAMES).flatmap(VALID.__getitem__))
    return other[0]


@st.composite
def mutated_command_lines(draw: st.DrawFn) -> str:
    """A valid command line with one archiso parameter's value (or key) changed."""
    words, _ = draw(command_lines())
    ours = [i for i, w in enumerate(words) if w.key in BY_NAME]
    i = draw(st.sampled_from(ours))
    word = words[i]
    value = draw(mutated(word.raw or ""))
    if value is None:
        text = word.key
    else:
        quoting = draw(st.sampled_from(["{k}={v}", '{k}="{v}"', '"{k}={v}"', "{k}={v}{v}"]))
        text = quoting.format(k=word.key, v=value)
    note(f"mutated word: {word.text!r} -> {text!r}")
    return draw(joined([w.text if j != i else text for j, w in enumerate(words)]))


@st.composite
def token_soup(draw: st.DrawFn) -> str:
    """Our keys, `=`, quotes, blanks and odd values in any order."""
    tokens = st.sampled_from([*NAMES, *NAMES]).map(lambda n: n + "=") | st.sampled_from(
        ['"', "=", " ", "\t", "\n", "y", "0", "99999999999999999999999", "256M", "%", "/", ".."]
    ) | ANY_TEXT | HUGE  # fmt: skip
    return "".join(draw(st.lists(tokens, max_size=20)))


def _outcome(text: str) -> Options | InputError:
    try:
        return parse_options(text, machine_arch=X86)
    except InputError as e:
        return e


def check_parse(text: str) -> Options | None:
    """The parse of any text: Options that keep the documented promises, or an InputError
    naming the parameter; the same both times."""
    first, second = _outcome(text), _outcome(text)
    if isinstance(first, InputError):
        assert isinstance(second, InputError) and str(first) == str(second)
        check_cmdline_error(first, text)
        return None
    assert first == second
    check_options(first, text)
    return first


def check_cmdline_error(error: InputError, text: str) -> None:
    message = str(error)
    given = [(k, "y" if v is None else v) for k, v in split_cmdline(text)
             if k in BY_NAME or k in cmdline.ALIASES]  # fmt: skip
    assert any(message.startswith(f"{k}={v}") for k, v in given), (message, given)
    assert_no_internal_repr(message, *(v for _, v in given))


def _decimal_is(text: str, number: int) -> bool:
    """`text` is plain ASCII decimal digits (leading zeros allowed) writing `number`."""
    return re.fullmatch(r"[0-9]+", text) is not None and text.lstrip("0") == (
        str(number) if number else ""
    )


def _is_relative(path: str) -> bool:
    return bool(path) and all(p not in {"", ".", ".."} for p in path.split("/"))


def _is_device(spec: str) -> bool:
    tag, sep, value = spec.partition("=")
    if sep and tag in TAG_LINKS:
        return value not in {"", ".", ".."} and "/" not in value
    return spec.startswith("/dev/") and all(p not in {".", ".."} for p in spec.split("/"))


def check_options(options: Options, text: str) -> None:
    """Every accepted value is one README's table accepts, and the last one given wins."""
    words = [(cmdline.ALIASES.get(k, k), "y" if v is None else v) for k, v in split_cmdline(text)]
    last = {k: v for k, v in words if k in BY_NAME}
    ips = [v for k, v in words if k == "ip"]
    for name, param in BY_NAME.items():
        value = getattr(options, param.field)
        if name not in last:
            assert value == getattr(DEFAULTS, param.field), name
            continue
        raw = last[name]
        if name == "ip":  # every ip= counts; a bad one is a warning (no server: no error)
            assert [c.text for c in value] == [v for v in ips if v in {c.text for c in value}]
            for config in value:
                check_ip(config.text, config)
            refused = [w for w in options.warnings if w.startswith("ip=")]
            assert len(value) + len(refused) == len(ips)
            assert not refused or options.network_source is None
            continue
        if name == "BOOTIF" and value is None:  # a bad one: a warning, if no server
            assert any(w.startswith(f"BOOTIF={raw} ") for w in options.warnings), raw
            assert options.network_source is None
            continue
        if name == "archisobasedir":
            assert not raw.startswith("/") and _is_relative(value) and value == raw.strip("/")
        elif name in {"archisosearchfilename", "img_loop", "cow_directory"}:
            assert _is_relative(value) and value == raw.strip("/"), name
        elif name in {"archisodevice", "img_dev", "cow_device"}:
            assert _is_device(raw) and value == raw, name
        elif name in {"archisolabel", "img_label", "cow_label"}:
            assert raw not in {"", ".", ".."} and value == raw, name
        elif name == "archisosearchuuid":
            assert raw and "/" not in raw and value == raw
            assert all(c.isprintable() and not c.isspace() for c in raw)
        elif name in {"img_flags", "cow_flags", "archiso_nfs_opt"}:
            assert value == raw
            parse_mount_options(raw, what=name)
        elif name == "arch":
            assert raw in {"i686", "x86_64"} and value == Arch(raw)
        elif name in {"cow_spacesize", "copytoram_size", "cow_grow_max", "archiso_http_spc"}:
            check_size(raw, value, max_percent=100)
        elif name == "copytoram":
            assert raw in COPY_WORDS and value == cmdline.CopyMode(COPY_WORDS[raw])
        elif name == "cow_persistent":
            assert raw in {"N", "P", "PO"} and value == CowMode(raw)
        elif name in {"cow_reset", "quiet", "checksum", "verify", "cms_verify", "cow_grow",
                      "copy_resolvconf"}:  # fmt: skip
            assert raw in FLAG_WORDS and value is FLAG_WORDS[raw], name
        elif name == "cow_chunksize":
            assert _decimal_is(raw, value) and 1 <= value <= 1 << 21 and value & (value - 1) == 0
        elif name == "dm_snap_prefix":
            assert re.fullmatch(r"[A-Za-z0-9_.+-]{1,64}", raw) and value == raw
        elif name == "rootdelay":
            assert _decimal_is(raw, value) and 0 <= value <= 86400
        elif name == "ip":
            check_ip(raw, value)
        elif name == "BOOTIF":
            mac = r"(01[-:])?[0-9A-Fa-f]{2}([-:])([0-9A-Fa-f]{2}\2){4}[0-9A-Fa-f]{2}"
            assert re.fullmatch(mac, raw), raw
            assert value == raw[-17:].replace("-", ":").lower()
        elif name == "archiso_http_srv":
            assert re.match(r"https?://[^/?#@]+(/|$)", raw) and value.startswith(raw)
            assert ".." not in raw.split("/") and value.endswith("/")
        elif name in {"archiso_nbd_srv", "archiso_nfs_srv"}:
            host = value.host
            assert re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9.-]*|\$\{pxeserver\}", host), raw
            if name == "archiso_nfs_srv":
                assert raw == value.source and "," not in raw and ".." not in raw.split("/")
            else:
                assert 0 < value.port < 65536
        elif name == "archiso_nbd_name":
            assert value == raw and raw.isprintable()
        else:  # a new parameter: say here what it accepts
            raise AssertionError(f"no contract for {name}")


def check_ip(text: str, config: netconf.IpConfig) -> None:
    """ip= is one of the kernel's, dracut's or systemd's words, or fields of which every
    address is an address; what the hook cannot do is noted, and only that is."""
    assert config.text == text
    assert config.usable == (config.unsupported == ())
    assert (config.autoconf is netconf.Autoconf.OTHER) <= (not config.usable)
    if ":" not in text and not re.fullmatch(r"[0-9.]*", text):
        words = netconf._DYNAMIC | netconf._OFF | set(OTHER_WORDS)
        assert text.lower() in words, text
        assert config.usable == (text.lower() not in OTHER_WORDS)
        return
    fields = re.sub(r"\[[^]]*\]", "[]", text).split(":")  # IPv6 addresses: one field each
    assert len(fields) <= 14
    for address in (config.client, config.server, config.gateway, *config.dns):
        assert address is None or str(address) in fields
    if config.autoconf is netconf.Autoconf.STATIC:
        assert config.client is not None and config.prefixlen is not None
    for wanted in config.unsupported:
        assert re.match(r"the (MTU|MAC address|IPv6 )|.* \(([a-z0-9-]+)\)$", wanted), wanted


@given(st.one_of(ANY_TEXT, IP.map(lambda v: str(v[0])).flatmap(mutated).map(lambda m: m or "")))
@counted
def test_parse_ip_on_any_text(text: str) -> None:
    """ip= alone: anything gives a configuration or an error naming ip= (and the field)."""
    try:
        config = netconf.parse_ip(text)
    except InputError as error:
        assert str(error).startswith("ip=")
        return
    check_ip(text, config)


def check_size(text: str, size: Size, *, max_percent: int) -> None:
    """`text` is a size as documented (digits and a k/m/g/t/p/e suffix, or N%) for `size`."""
    if size.percent:
        assert re.fullmatch(r"[0-9]+%", text), text
        assert 1 <= size.value <= max_percent and _decimal_is(text[:-1], size.value)
        return
    match = re.fullmatch(r"([0-9]+)([kmgtpeKMGTPE]?)", text)
    assert match, text
    unit = SUFFIXES[match[2].lower()]
    assert size.value >= 1 and size.value % unit == 0 and _decimal_is(match[1], size.value // unit)


def test_every_parameter_has_a_generator() -> None:
    """A new parameter needs valid values here (and a contract in check_options)."""
    assert set(VALID) == set(NAMES)


@given(ANY_TEXT)
@example("rootdelay=²")  # str.isdigit() says yes, int() says no
@example("cow_chunksize=\U0001d7d6")  # int() reads it as 8, but it is not what README accepts
@example("cow_spacesize=1\u212a")  # the Kelvin sign is a k under re.IGNORECASE
@example('dm_snap_prefix="arch\n"')  # `$` matches before a trailing newline
@example("archisolabel=ARCH\xa02011")  # one word for the kernel (no-break space)
@example("img_label=")  # named archisolabel= in the error
@example('cow_spacesize="1%\n"')  # found by fuzzing: `$` matches before a newline
@example("archisolabel=..")  # the medium would be /dev/disk/by-label/.., a directory
@example("cow_device=LABEL=.")
@counted
def test_parse_options_on_any_text(text: str) -> None:
    check_parse(text)


@given(st.binary(max_size=80).map(surrogateescaped))
@example(b"rootdelay=\xff\xfe".decode("utf-8", errors="surrogateescape"))
@counted
def test_parse_options_on_any_bytes(text: str) -> None:
    check_parse(text)


@given(token_soup())
@example("cow_chunksize=" + "9" * 5000)  # int() refuses more than 4300 digits
@example("cow_spacesize=" + "9" * 5000 + "M")
@counted
def test_parse_options_on_our_keys_in_any_order(text: str) -> None:
    check_parse(text)


@given(mutated_command_lines())
@counted
def test_parse_options_on_mutated_command_lines(text: str) -> None:
    check_parse(text)


# What as_parameters() shows in effect rather than as given.
DERIVED = {"archisodevice", "img_dev", "cow_device", "cow_directory", "cow_persistent",
           "archisosearchfilename", "cow_grow", "copytoram", "ip", "archiso_nbd_srv",
           "archiso_nfs_srv"}  # fmt: skip


def _device_path(spec: str) -> str:
    tag, _, value = spec.partition("=")
    return f"/dev/disk/{TAG_LINKS[tag]}/{udev_encode(value)}" if tag in TAG_LINKS else spec


@given(command_lines())
@example(([Word("archisolabel", "ARCH\u3000X", "ARCH\u3000X", "archisolabel=ARCH\u3000X")],
          "archisolabel=ARCH\u3000X"))  # fmt: skip
@counted
def test_valid_command_lines_parse_to_what_they_say(line: tuple[list[Word], str]) -> None:
    words, text = line
    options = check_parse(text)
    assert options is not None
    last = {w.key: w for w in words if w.key in BY_NAME}
    for name, word in last.items():
        if name != "ip":
            assert getattr(options, BY_NAME[name].field) == word.expected, name
    ips = tuple(cast(netconf.IpConfig, w.expected) for w in words if w.key == "ip")
    assert options.ip == ips  # every ip=, in order

    def value_of(name: str) -> Any:
        return last[name].expected if name in last else None

    shown = options.as_parameters()
    assert set(shown) == set(NAMES)
    for name, param in BY_NAME.items():
        if name not in DERIVED:
            value = value_of(name) if name in last else getattr(DEFAULTS, param.field)
            assert shown[name] == (str(value) if isinstance(value, Size | enum.Enum) else value)
    label, device = value_of("archisolabel"), value_of("archisodevice")
    assert shown["archisodevice"] == (
        _device_path(device) if device else _device_path(f"LABEL={label}") if label else None
    )
    img_label, img_dev = value_of("img_label"), value_of("img_dev")
    assert shown["img_dev"] == (
        _device_path(f"LABEL={img_label}")
        if img_label
        else _device_path(img_dev)
        if img_dev
        else None
    )
    cow_label, cow_device = value_of("cow_label"), value_of("cow_device")
    cow_path = (
        _device_path(f"LABEL={cow_label}")
        if cow_label
        else _device_path(cow_device)
        if cow_device
        else None
    )
    assert shown["cow_device"] == cow_path
    arch = value_of("arch") or X86
    assert shown["cow_directory"] == (
        value_of("cow_directory") or f"persistent_{(label or '').replace('/', '_')}/{arch}"
    )
    assert shown["cow_persistent"] == str(value_of("cow_persistent") or ("P" if cow_path else "PO"))
    grow = value_of("cow_grow")
    assert shown["cow_grow"] == (grow if grow is not None else cow_path is None)
    source = next((k.split("_")[1] for k in sorted(SERVERS) if k in last), None)
    copy = value_of("copytoram")
    assert shown["copytoram"] == (
        "n" if source == "http" else str(copy) if copy else "y" if source else "auto"
    )
    assert options.network_source == source
    usable = [ip for ip in ips if not ip.unsupported]  # the last of them configures
    assert (options.network is None) == (
        source is None or (bool(ips) and (not usable or not usable[-1].wanted))
    )
    if source and ips and usable and usable[-1].wanted:
        assert options.network == usable[-1]
    uuid, filename = value_of("archisosearchuuid"), value_of("archisosearchfilename")
    assert shown["archisosearchfilename"] == (
        "/" + (filename or f"boot/{uuid}.uuid") if uuid or filename else None
    )
    assert options.debug == any(w.key == "rd.debug" for w in words)
    old_names = cmdline.NOT_YET_SUPPORTED | set(cmdline.RENAMED) | set(cmdline.OBSOLETE)
    told = [w.key for w in words if w.key in old_names]
    assert [m.partition("=")[0] for m in options.warnings] == list(dict.fromkeys(told))


KEYS = st.text(chars_except(BLANKS + '"='), min_size=1, max_size=12)


@st.composite
def plain_words(draw: st.DrawFn) -> tuple[tuple[str, str | None], str]:
    """A (key, value) pair and how it is written: bare, k=v, or with a quoted value."""
    key = draw(KEYS)
    style = draw(st.sampled_from(["bare", "plain", "quoted"]))
    if style == "bare":
        return (key, None), key
    if style == "plain":
        value = draw(st.text(chars_except(BLANKS + '"'), max_size=12))
        return (key, value), f"{key}={value}"
    value = draw(st.text(chars_except('"'), max_size=12))
    return (key, value), f'{key}="{value}"'


@given(st.lists(plain_words(), max_size=8).flatmap(
    lambda ws: st.tuples(st.just([p for p, _ in ws]), joined([t for _, t in ws]))
))  # fmt: skip
@example(([("archisolabel", "A\xa0B")], "archisolabel=A\xa0B"))
@example(([("a", "x\x1cy")], "a=x\x1cy"))
@example(([("\x1f", None)], "\x1f"))  # found by fuzzing: str.isspace() took it for a blank
@counted
def test_split_cmdline_round_trips_words(case: tuple[list[tuple[str, str | None]], str]) -> None:
    pairs, text = case
    assert split_cmdline(text) == pairs


@given(st.text(chars_except('"'), max_size=60) | st.binary(max_size=60).map(surrogateescaped))
@example("a=1\u2028b=2")
@example("\x85")  # found by fuzzing
@counted
def test_split_cmdline_splits_on_the_kernels_blanks_only(text: str) -> None:
    """Without quotes, the words are exactly what lies between the kernel's blanks."""
    if '"' in text:  # from the bytes
        text = text.replace('"', "")
    words = [w for w in re.split(f"[{re.escape(BLANKS)}]+", text) if w]
    assert [k if v is None else f"{k}={v}" for k, v in split_cmdline(text)] == words


# --- aitab -------------------------------------------------------------------------------

SOURCE = "FILE"
NAME_FIRST = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_+-"
IMAGE_NAME = st.builds(
    lambda first, rest: first + rest,
    st.sampled_from(NAME_FIRST),
    st.text(NAME_FIRST + ".", max_size=12) | st.text(NAME_FIRST + ".", min_size=59, max_size=63),
)
MOUNT = st.just("/") | st.builds(lambda p, s: "/" + p + s, RELATIVE, st.sampled_from(["", "/"]))
FS_SIZE = st.integers(1, 1 << 24).map(lambda n: (str(n), Size(n * MiB))) | st.integers(1, 99).map(
    lambda n: (f"{n}%", Size(n, percent=True))
)
SEPARATOR = st.text(" \t", min_size=1, max_size=3)
# Comments may hold anything but a newline: also \f, \x1c, \x85, \u2028, which
# str.splitlines() takes for line breaks and no editor does.
COMMENT = st.text(chars_except("\n\r"), max_size=20).map(lambda t: "#" + t)
FILLER = (
    st.text(" \t", max_size=3)
    | COMMENT
    | st.builds(lambda a, c: a + c, st.text(" \t\f\v\x1c\u3000", max_size=3), COMMENT)
)


def _trim(mount: str) -> str:
    return mount.rstrip("/") or "/"


@st.composite
def image_lines(draw: st.DrawFn, name: str, mount: str) -> tuple[list[str], AitabEntry]:
    """The fields of one valid aitab line, and the entry it stands for (line 0)."""
    arch = draw(st.sampled_from(ARCHES))
    comp, fs_type = draw(
        st.tuples(
            st.sampled_from((*COMPRESSIONS, "none")), st.sampled_from((*FILESYSTEMS, "none"))
        ).filter(lambda t: t != ("none", "none"))
    )
    fields = [name, mount, arch, comp, fs_type]
    size = None
    if fs_type == "none":
        written = draw(st.sampled_from([None, "0", "-"]) | FS_SIZE.map(lambda s: s[0]))
    else:
        written, size = draw(FS_SIZE)
    if written is not None:
        fields.append(written)
    entry = AitabEntry(
        name=name,
        mount=_trim(mount),
        arch=arch,
        sfs_comp=None if comp == "none" else comp,
        fs_type=None if fs_type == "none" else fs_type,
        fs_size=size,
        line=0,
    )
    return fields, entry


class Table(NamedTuple):
    lines: list[str]  # without line breaks
    rows: list[int]  # the index in lines of each entry
    entries: list[AitabEntry]
    newline: str
    text: str


def _render_fields(draw: st.DrawFn, fields: list[str]) -> str:
    seps = draw(st.lists(SEPARATOR, min_size=len(fields), max_size=len(fields)))
    line = draw(st.text(" \t", max_size=2)) + "".join(
        (sep if i else "") + field for i, (sep, field) in enumerate(zip(seps, fields, strict=True))
    )
    if draw(st.booleans()):
        line += draw(SEPARATOR) + draw(COMMENT)
    return line + draw(st.text(" \t", max_size=2))


@st.composite
def aitab_tables(
    draw: st.DrawFn, mounts: st.SearchStrategy[str] = MOUNT, max_images: int = 6
) -> Table:
    """A valid aitab: unique names and mount points, blank lines, comments, CRLF or LF."""
    names = draw(st.lists(IMAGE_NAME, unique=True, max_size=max_images))
    points = draw(st.lists(mounts, unique_by=_trim, min_size=len(names), max_size=len(names)))
    lines: list[str] = []
    rows: list[int] = []
    entries: list[AitabEntry] = []
    for name, mount in zip(names, points, strict=False):
        lines += draw(st.lists(FILLER, max_size=2))
        fields, entry = draw(image_lines(name, mount))
        rows.append(len(lines))
        lines.append(_render_fields(draw, fields))
        entries.append(attrs.evolve(entry, line=len(lines)))
    lines += draw(st.lists(FILLER, max_size=2))
    newline = draw(st.sampled_from(["\n", "\r\n"]))
    text = newline.join(lines) + draw(st.sampled_from(["", newline]))
    return Table(lines, rows, entries, newline, text)


def _words(line: str) -> list[str]:
    words = line.split()
    for i, word in enumerate(words):
        if word.startswith("#"):
            return words[:i]
    return words


AITAB_ERROR = re.compile(
    r"(?:field (?:img|mnt|arch|sfs_comp|fs_type|fs_size): |missing field|\d+ fields, expected 6"
    r"|sfs_comp and fs_type are both none)"
)


def check_aitab(text: str, lines: range | None = None) -> list[AitabEntry] | None:
    """parse_aitab: entries consistent with their files, or an InputError at a real line
    (within `lines`, 1-based, when only those were changed), naming a field."""
    try:
        entries = parse_aitab(text, SOURCE)
    except InputError as e:
        message = str(e)
        match = re.match(rf"{SOURCE}:([0-9]+): (.*)", message, re.DOTALL)
        assert match, message
        number = int(match[1])
        text_lines = text.split("\n")
        assert 1 <= number <= len(text_lines), message
        assert _words(text_lines[number - 1]), (message, text_lines[number - 1])
        assert AITAB_ERROR.match(match[2]), message
        assert_no_internal_repr(message, *text.split())
        if lines is not None:
            cited = [number] + [int(n) for n in re.findall(r"of line ([0-9]+)", message)]
            assert any(n in lines for n in cited), (message, lines)
        return None
    text_lines = text.split("\n")
    for entry in entries:
        assert 1 <= entry.line <= len(text_lines), entry
        words = _words(text_lines[entry.line - 1])
        assert words[0] == entry.name and _trim(words[1]) == entry.mount, (entry, words)
        suffix = {ImageType.SFS: "sfs", ImageType.FS: "fs", ImageType.FS_SFS: "fs.sfs"}
        assert entry.filename == f"{entry.name}.{suffix[entry.type]}"
        assert (entry.type is ImageType.SFS) == (entry.fs_type is None)
        assert (entry.type is ImageType.FS) == (entry.sfs_comp is None)
        assert entry.type.snapshot == (entry.fs_type is not None)
        assert (entry.fs_size is None) == (entry.fs_type is None)
    for i, entry in enumerate(entries):  # one boot: one arch and `any`
        for other in entries[i + 1 :]:
            if "any" in (entry.arch, other.arch) or entry.arch == other.arch:
                assert entry.name != other.name and entry.mount != other.mount, (entry, other)
    return entries


ROOT_AT_2 = AitabEntry("root", "/", "x86_64", "xz", "ext4", Size(50, percent=True), line=2)


@given(aitab_tables())
@example(Table([], [], [ROOT_AT_2], "\n", "# a comment\x0c\nroot / x86_64 xz ext4 50%\n"))
@counted
def test_valid_aitab_tables_parse_to_their_entries(table: Table) -> None:
    assert check_aitab(table.text) == table.entries


@given(ANY_TEXT | st.binary(max_size=120).map(surrogateescaped))
@example("root / x86_64 xz ext4 ²%")  # str.isdigit() says yes, int() says no
@example("root / x86_64 xz ext4 " + "9" * 5000)
@example("# comment\u2028\nroot / x86_64 xz ext4 0")  # the error is on line 2, not 3
@example("\x0b\x00")  # found by fuzzing: an error on line 2 of a one-line file
@counted
def test_parse_aitab_on_any_text(text: str) -> None:
    check_aitab(text)


AITAB_TOKENS = st.sampled_from(
    [*ARCHES, *COMPRESSIONS, *FILESYSTEMS, "none", "/", "/usr", "root", "50%", "0", "-", "64",
     "#", " ", "\t", "\n", "\r\n", "\x0c", "\u2028", "\x85", "..", "//", "%", "²"]
) | ANY_TEXT  # fmt: skip


@given(st.lists(AITAB_TOKENS, max_size=40).map("".join))
@counted
def test_parse_aitab_on_its_words_in_any_order(text: str) -> None:
    check_aitab(text)


def _field_garbage(index: int) -> st.SearchStrategy[str]:
    near = [
        # img
        [".hidden", "a/b", "x" * 65, "é", "a\udcff", "-", "#x", "root-image.fs"],
        # mnt
        ["/a/../b", "//a", "/a//b", "/.", "/a/.", "a", "/..", "/a\x00", "/é", "/a\x7f", "~"],
        ["amd64", "ANY", "i386", "x86-64"],
        ["xz2", "XZ", "bzip2", "none ", "lzma"],
        ["ext9", "EXT4", "vfat", "squashfs"],
        ["0%", "100%", "-1", "1e3", "16777217", "50%%", "%", "0", "-", "١٢", "²", "0x10"],
    ][min(index, 5)]
    return st.sampled_from(near) | HUGE | ANY_TEXT.filter(bool)


AITAB_MUTATIONS = ("field", "drop", "add", "char", "hash", "none none", "duplicate", "steal",
                   "join", "size")  # fmt: skip


@st.composite
def mutated_aitabs(draw: st.DrawFn) -> tuple[str, range]:
    """A valid table with one image line changed; the (1-based) lines that changed."""
    table = draw(aitab_tables().filter(lambda t: bool(t.rows)))
    i = draw(st.integers(0, len(table.rows) - 1))
    row = table.rows[i]
    line = table.lines[row]
    fields = _words(line)
    how = draw(st.sampled_from(AITAB_MUTATIONS))
    at = draw(st.integers(0, len(fields) - 1))
    note(f"mutation: {how} of field {at} of {line!r}")
    stop = row + 1
    if how == "field":
        fields[at] = draw(_field_garbage(at))
        new = [" ".join(fields)]
    elif how == "drop":
        new = [" ".join(fields[:at] + fields[at + 1 :])]
    elif how == "add":
        new = [" ".join([*fields[:at], draw(_field_garbage(at)), *fields[at:]])]
    elif how == "char":
        pos = draw(st.integers(0, len(line)))
        new = (line[:pos] + draw(ANY_CHAR) + line[pos + draw(st.integers(0, 1)) :]).split("\n")
    elif how == "hash":
        pos = draw(st.integers(0, len(fields[at])))
        fields[at] = fields[at][:pos] + "#" + fields[at][pos:]
        new = [" ".join(fields)]
    elif how == "none none":
        new = [" ".join([*fields[:3], "none", "none", *fields[5:]])]
    elif how == "duplicate":
        new = [line, line]
    elif how == "steal":  # the name or mount point of another line
        other = _words(table.lines[draw(st.sampled_from(table.rows))])
        fields[at % 2] = other[at % 2]
        new = [" ".join(fields)]
    elif how == "join":  # a line break the aitab format does not know
        sep = draw(st.sampled_from([" ", "\t", "\x0c", "\v", "\x1c", "\x1e", "\x85", "\u2028"]))
        stop = min(row + 2, len(table.lines))
        new = [sep.join(table.lines[row:stop])]
    else:  # size
        new = [" ".join([*fields[:5], draw(_field_garbage(5))])]
    new = [piece for text in new for piece in text.split("\n")]
    lines = table.lines[:row] + new + table.lines[stop:]
    text = table.newline.join(lines) + table.newline
    return text, range(row + 1, row + 1 + len(new))


@given(mutated_aitabs())
@counted
def test_parse_aitab_on_mutated_tables(case: tuple[str, range]) -> None:
    text, changed = case
    check_aitab(text, changed)


# --- the boot plan -----------------------------------------------------------------------

PLAN_MOUNTS = st.sampled_from(
    ["/", "/usr", "/usr/share", "/usr/share/doc", "/srv", "/opt/x", "/var"]
)


def _paths(plan: BootPlan) -> Iterator[tuple[str, str]]:
    """(what, path) for every absolute path in the plan."""
    for image in plan.images:
        for field in ("path", "target", "fs_image", "container", "cow_file"):
            if path := getattr(image, field):
                yield field, path
    for step in plan.steps:
        for field, value in attrs.asdict(step, recurse=False).items():
            for item in value if isinstance(value, tuple) else (value,):
                if isinstance(item, str) and item.startswith("/"):
                    yield field, item


def check_plan(options: Options, entries: list[AitabEntry]) -> None:
    aitab = f"/run/archiso/bootmnt/{options.basedir}/aitab"
    try:
        plan = plan_boot(options, entries)
    except InputError as e:
        message = str(e)
        assert message.startswith(aitab + ":") or PARAMETER_NAMED.search(message), message
        assert_no_internal_repr(message, aitab, *(p for p in _option_texts(options)))
        return
    arch = str(options.arch)
    assert [i.entry for i in plan.images] == [e for e in entries if e.arch in (arch, "any")]
    base = f"/run/archiso/bootmnt/{options.basedir}/"
    for image in plan.images:
        entry = image.entry
        assert image.target == "/new_root" + ("" if entry.mount == "/" else entry.mount)
        assert image.path == f"{base}{entry.arch}/{entry.filename}"
        if entry.type is ImageType.FS_SFS:
            assert image.container == f"/run/archiso/sfs/{entry.name}"
        if entry.type.snapshot:
            # The name and its uuid ARCHISO-<name> fit struct dm_ioctl, as the boot packs them.
            assert image.dm_name is not None and len(image.dm_name.encode()) <= DM_NAME_MAX
            dm.pack_ioctl(data_size=0, name=image.dm_name, uuid=DM_UUID_PREFIX + image.dm_name)
            assert image.cow_file is not None
            assert image.cow_file.startswith("/run/archiso/cowspace/")
        else:
            assert image.dm_name is None and image.cow_file is None
    # `plan --json` writes every plan the boot would run.
    assert json.loads(json.dumps(plan.to_json()))["newroot"] == "/new_root"
    dm_names = [i.dm_name for i in plan.images if i.dm_name]
    assert len(dm_names) == len(set(dm_names))
    for field, path in _paths(plan):
        assert ".." not in path.split("/"), (field, path)
        if field != "live_path":  # where the live system sees a mount, after switch_root
            assert path.startswith(("/run/archiso/", "/new_root", "/dev/")), (field, path)


def _option_texts(options: Options) -> Iterator[str]:
    for value in attrs.asdict(options, recurse=False).values():
        if isinstance(value, str):
            yield value


@given(command_lines(), aitab_tables(mounts=PLAN_MOUNTS | MOUNT, max_images=5))
@example(  # a device-mapper name of 128 bytes
    (
        [Word("dm_snap_prefix", "p" * 64, "p" * 64, "dm_snap_prefix=" + "p" * 64)],
        "archisolabel=A dm_snap_prefix=" + "p" * 64,
    ),
    Table([], [], [], "\n", "r" * 63 + " / x86_64 xz ext4 1"),
)
@example(  # the medium was /dev/disk/by-label/.., that is /dev/disk
    ([Word("archisolabel", "..", "..", "archisolabel=..")], "archisolabel=.."),
    Table(["A / x86_64 gzip ext4 1"], [0], [], "\n", "A / x86_64 gzip ext4 1"),
)
@counted
def test_plan_boot_on_parsed_inputs(line: tuple[list[Word], str], table: Table) -> None:
    options = check_parse(line[1])
    if options is not None:  # (the pinned example no longer parses)
        check_plan(options, parse_aitab(table.text, SOURCE))


@st.composite
def cow_cases(draw: st.DrawFn) -> tuple[list[int], int, CowMode, int]:
    """Origin sizes, a cowspace (often a little less than they need), a mode, a chunk."""
    origins = draw(
        st.lists(st.integers(0, 1 << 44) | st.sampled_from([0, 1, 511, 512, MiB - 1]), max_size=8)
    )
    mode = draw(st.sampled_from(list(CowMode)))
    chunk_sectors = draw(st.integers(0, 21).map(lambda k: 1 << k))
    total = sum(cow_need(origin, mode, chunk_sectors) for origin in origins)
    capacity = draw(
        st.integers(0, 1 << 46)
        | st.integers(0, 64 * MiB)
        | st.integers(max(total // 2, total - 64 * MiB), total + 1).filter(lambda c: c >= 0)
    )
    return origins, capacity, mode, chunk_sectors


@given(cow_cases())
@counted
def test_cow_sizes_never_exceed_the_space(case: tuple[list[int], int, CowMode, int]) -> None:
    origins, capacity, mode, chunk_sectors = case
    chunk = chunk_sectors * 512
    needs = [cow_need(origin, mode, chunk_sectors) for origin in origins]
    for origin, need in zip(origins, needs, strict=True):
        data = -(-origin // chunk)
        assert need % chunk == 0 and need >= origin
        if mode is CowMode.N:
            assert need == data * chunk
        else:  # a header chunk, then metadata chunks of chunk/16 exceptions each
            metadata = need // chunk - 1 - data
            assert metadata * (chunk // 16) >= data > (metadata - 1) * (chunk // 16)
    try:
        sizes = cow_sizes(origins, capacity, mode, chunk_sectors)
    except InputError as e:
        assert "cow_spacesize=" in str(e) and sum(needs) > capacity
        return
    assert len(sizes) == len(origins) and sum(sizes) <= capacity
    if sum(needs) <= capacity:
        assert sizes == needs
    else:
        for size, need in zip(sizes, needs, strict=True):
            assert max(MiB, 3 * chunk) <= size <= need and size % chunk == 0


# --- sizes and mount options -------------------------------------------------------------

SIZE_TEXT = (
    ANY_TEXT
    | st.builds(lambda n, s: f"{n}{s}", st.integers(0, 10**20), st.sampled_from([*SUFFIXES, "%"]))
    | st.builds(lambda n, s: f"{n}{s}", HUGE, st.sampled_from([*SUFFIXES, "%", "M"]))
    | st.sampled_from(["256M", "1G", "50%", "4096", "0", "0%", "101%"]).flatmap(mutated).map(
        lambda v: v or ""
    )
)  # fmt: skip


@given(SIZE_TEXT, st.sampled_from(["cow_spacesize", "copytoram_size"]), st.booleans(),
       st.integers(1, 100))  # fmt: skip
@example("1\u212a", "cow_spacesize", True, 100)  # Kelvin sign: a k only to re.IGNORECASE
@example("256M\n", "cow_spacesize", True, 100)
@example("50%\n", "cow_spacesize", True, 100)
@example("9" * 5000, "cow_spacesize", True, 100)
@counted
def test_parse_size(text: str, what: str, allow_percent: bool, max_percent: int) -> None:
    try:
        size = parse_size(text, what=what, allow_percent=allow_percent, max_percent=max_percent)
    except InputError as e:
        assert str(e).startswith(f"{what}={text} is not valid: expected a size such as 256M")
        assert_no_internal_repr(str(e), text)
        return
    assert allow_percent or not size.percent
    check_size(text, size, max_percent=max_percent)
    again = parse_size(str(size), what=what, allow_percent=allow_percent, max_percent=max_percent)
    assert again == size, str(size)


@given(st.integers(1, (1 << 63) - 1) | st.integers(1, 100).map(lambda n: -n))
@counted
def test_sizes_round_trip_through_str(value: int) -> None:
    size = Size(-value, percent=True) if value < 0 else Size(value)
    assert parse_size(str(size), what="cow_spacesize") == size


@given(st.integers(1 << 63, 1 << 70))
@counted
def test_sizes_the_kernel_cannot_hold_are_refused(value: int) -> None:
    with pytest.raises(InputError, match=r"^cow_spacesize=\d+ is not valid"):
        parse_size(str(value), what="cow_spacesize")


FLAGS = {"ro": 1, "rw": 1, "nosuid": 2, "suid": 2, "nodev": 4, "dev": 4, "noexec": 8, "exec": 8,
         "sync": 16, "async": 16, "dirsync": 128, "noatime": 1024, "atime": 1024,
         "nodiratime": 2048, "diratime": 2048, "relatime": 1 << 21, "norelatime": 1 << 21,
         "strictatime": 1 << 24, "nostrictatime": 1 << 24, "lazytime": 1 << 25,
         "nolazytime": 1 << 25}  # fmt: skip
IGNORED = {"defaults", "auto", "noauto", "user", "nouser", "users", "nofail", "_netdev", "owner",
           "group"}  # fmt: skip
REFUSED = {"remount", "bind", "rbind", "move", "make-private", "make-shared"}
OPTION_WORD = st.sampled_from(sorted(FLAGS.keys() | IGNORED | REFUSED)) | st.sampled_from(
    ["x-gvfs-show", "subvol=@cow", "uid=0", "", "a b", "a\tb", "é=ü", "x\x00", "data=ordered"]
) | st.text(chars_except(","), max_size=8)  # fmt: skip


@given(st.none() | ANY_TEXT | st.lists(OPTION_WORD, max_size=6).map(",".join),
       st.sampled_from(["cow_flags", "img_flags"]))  # fmt: skip
@example(",".join(sorted(FLAGS)), "cow_flags")  # every flag word once
@example(",".join(sorted(IGNORED)) + ",x-systemd.automount", "img_flags")
@counted
def test_parse_mount_options(text: str | None, what: str) -> None:
    try:
        options = parse_mount_options(text, what=what)
    except InputError as e:
        assert text and str(e).startswith(f"{what}={text} is not valid: "), str(e)
        assert_no_internal_repr(str(e), text)
        return
    if not text:
        assert options == MountOptions()
        return
    words = text.split(",")
    assert all(words) and not REFUSED & set(words)
    last_ro_rw = [w for w in words if w in {"ro", "rw"}][-1:]
    assert options.read_only == (last_ro_rw == ["ro"])
    kept = [w for w in words if w not in FLAGS and w not in IGNORED and not w.startswith("x-")]
    assert (options.data or None) == (",".join(kept) or None)
    assert all(c.isprintable() and not c.isspace() for c in options.data or "")
    assert options.flags & ~functools.reduce(int.__or__, FLAGS.values()) == 0


# --- files the hook reads back: the state file, checksum files -------------------------

STATE_PATH = "/run/archiso/state.json"


def _record_value(check_name: str) -> st.SearchStrategy[Any]:
    # As the hook writes: any text but NUL; names that are not UTF-8 surrogateescaped.
    chars = (
        st.characters(min_codepoint=1, max_codepoint=0xD7FF)
        | st.characters(min_codepoint=0xE000)
        | SURROGATES
    )
    text = st.text(chars, max_size=12)
    return {
        "_text": text,
        "_path": text.map(lambda s: "/" + s),
        "_count": st.integers(0, 1 << 40),
        "_flag": st.booleans(),
        "_dm_name": st.from_regex(r"[A-Za-z0-9_.+-]{1,16}", fullmatch=True),  # as plan makes
        "_devno": st.tuples(st.integers(0, 511), st.integers(0, 1 << 20)).map(
            lambda d: f"{d[0]}:{d[1]}"
        ),
        "_path_or_none": st.none() | text.map(lambda s: "/" + s),
    }.get(check_name, st.integers(0, 9).map(lambda n: f"/dev/{check_name}{n}"))


@st.composite
def records(draw: st.DrawFn) -> dict[str, Any]:
    kind = draw(st.sampled_from(sorted(RECORDS)))
    record: dict[str, Any] = {"kind": kind}
    for name, check in RECORDS[kind].items():
        label = getattr(check, "__name__", "")
        if label == "<lambda>":  # _device(prefix): /dev/<prefix>N
            label = {"device": "loop" if kind in ("loop", "dm") else "nbd"}.get(name, "loop")
        record[name] = draw(_record_value(label))
    return record


@st.composite
def state_files(draw: st.DrawFn) -> str:
    """A state as the hook writes it: a saved document, then appended changes."""
    head = {
        "version": 1,
        "newroot": "/new_root",
        "resources": draw(st.lists(records(), max_size=4)),
        "complete": draw(st.booleans()),
    }
    lines = [json.dumps(head)]
    for _ in range(draw(st.integers(0, 4))):
        if draw(st.booleans()):
            lines.append(json.dumps({"add": draw(records())}))
        else:
            lines.append(json.dumps({"remove": ["loop", "device", "/dev/loop0"]}))
    return "\n".join(lines) + "\n"


@st.composite
def damaged_state_files(draw: st.DrawFn) -> bytes:
    """A state file, then one damage: cut short, bytes replaced, or a line inserted."""
    data = draw(state_files()).encode()
    at = draw(st.integers(0, len(data)))
    how = draw(st.sampled_from(["cut", "replace", "insert"]))
    if how == "cut":
        return data[:at]
    junk = draw(st.binary(max_size=12) | st.sampled_from([b"\n", b'"', b"{", b"}", b"null"]))
    if how == "replace":
        return data[:at] + junk + data[at + len(junk) :]
    return data[:at] + junk + data[at:]


def check_state_read(data: bytes, tmp: Path) -> None:
    path = tmp / "state.json"
    path.write_bytes(data)
    try:
        state, problems = State.read(str(path))
    except ValueError as e:
        assert str(e).startswith(f"{path} is not a state file"), e
        return
    # Whatever it kept, every reader may use as RECORDS says, and a save reads back the same.
    for record in state.every_record():
        assert check_record(record) is None, record
    for problem in problems:
        assert problem.startswith(f"{path}: ") and "\n" not in problem, problem
    state.save(str(path))
    assert State.read(str(path)) == (state, [])


@given(damaged_state_files() | st.binary(max_size=200))
@example(b'{"newroot": "/r", "resources": [{"kind": "loop", "device": "/dev/loop0"}]}')
@example(b'{"newroot": "/r"}\n{"remove": ["loop"]}\n{"add": []}\n')
@example(b'{"newroot": "/r", "cow": {"space": 1}}')
@example(b'{"newroot": "/r"}\n\xff\xfe\n')
@counted
def test_state_read_on_damaged_files(data: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        check_state_read(data, Path(tmp))


@given(state_files())
@counted
def test_state_files_read_back_whole(text: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "state.json"
        path.write_text(text)
        _, problems = State.read(str(path))
        assert problems == []


CHECKSUM_LINE = st.tuples(
    st.sampled_from([32, 128, 31, 129, 0]).flatmap(
        lambda n: st.text("0123456789abcdefABCDEF", min_size=n, max_size=n)
    ),
    st.sampled_from(["  ", " *", " ", "\t"]),
    st.sampled_from(["root.fs.sfs", "./root.fs.sfs", "../root.fs.sfs", "x/root.fs.sfs", ".", ""])
    | st.text(ANY_CHAR, max_size=12),
).map("".join)


@given(
    st.lists(CHECKSUM_LINE | ANY_TEXT, max_size=5).map("\n".join) | ANY_TEXT,
    st.sampled_from(["sha512", "md5"]),
)
@counted
def test_checksum_files_give_a_digest_or_one_clear_error(text: str, algorithm: str) -> None:
    path = f"/run/archiso/bootmnt/arch/x86_64/root.fs.sfs.{algorithm}"
    try:
        expected = checksums.parse(text, path, "root.fs.sfs")
    except InputError as e:
        assert str(e).startswith(path + ":") or str(e).startswith(path + " "), e
        assert_no_internal_repr(str(e), text)
        return
    assert expected.algorithm == algorithm
    assert len(expected.digest) == dict(checksums.ALGORITHMS)[algorithm]
    assert expected.digest == expected.digest.lower()
    assert any(
        line.lower().startswith(expected.digest) and line.rstrip("\r").endswith("root.fs.sfs")
        for line in text.splitlines()
    )
