"""What the property tests (tests/unit/test_fuzz_*.py) draw from, and what they check
with: every documented form of the kernel command line's parameters, ip= and the
servers, aitab tables, mutations a person, a boot loader or a broken medium might make,
and the checks of a parse that the command-line, plan and size tests share.

The project's rule: bad input gets a clear error and never a traceback. Each parser
raises only InputError for bad input, and its message names the parameter
(`cow_spacesize=...`) or the file and line (`FILE:LINE:`); a bad ip= or BOOTIF= is a
warning instead, naming the word, unless a network boot needs it. Any other exception
escaping a parser fails the tests as it is.

Inputs are arbitrary text, arbitrary bytes decoded as /proc/cmdline and aitab files are
read (UTF-8, surrogateescape), and near-valid inputs: valid command lines and aitab
tables generated from the documented forms, then mutated in one place.

`make test` runs them with the reproducible `ci` profile (tests/conftest.py); `make fuzz`
with the `fuzz` profile, over 100,000 examples. A test module of properties says
`pytestmark = pytest.mark.usefixtures("fuzz_tally")` and decorates its properties with
`counted`: the summary then prints how many examples ran.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from collections import Counter
from collections.abc import Callable
from typing import NamedTuple, ParamSpec

import attrs
from hypothesis import note
from hypothesis import strategies as st

from archiso_hook import cmdline, netconf
from archiso_hook.aitab import ARCHES, COMPRESSIONS, FILESYSTEMS, AitabEntry
from archiso_hook.cmdline import Arch, CowMode, split_cmdline
from archiso_hook.errors import InputError
from archiso_hook.mountopts import parse_mount_options
from archiso_hook.options import Options, parse_options
from archiso_hook.sizes import MiB, Size

# --- counting examples (tests/conftest.py prints the total) --------------------------------

_P = ParamSpec("_P")
#: Examples run, by property; tests/conftest.py's fuzz_tally takes them after each module.
EXAMPLES_RUN: Counter[str] = Counter()


def counted(test: Callable[_P, None]) -> Callable[_P, None]:
    """Count each example the test runs (explicit, generated and shrinking ones)."""

    @functools.wraps(test)
    def run(*args: _P.args, **kwargs: _P.kwargs) -> None:
        EXAMPLES_RUN[test.__name__] += 1
        test(*args, **kwargs)

    return run


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


# --- mutations --------------------------------------------------------------------------

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


# --- checks of a parse ------------------------------------------------------------------


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
    """Every accepted value is one README's table accepts, and the last one given wins;
    every ip= is kept, in order; a bad one is a warning, an error on a network boot."""
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


# --- aitab tables -----------------------------------------------------------------------

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


def trim_mount(mount: str) -> str:
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
        mount=trim_mount(mount),
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
    points = draw(st.lists(mounts, unique_by=trim_mount, min_size=len(names), max_size=len(names)))
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
