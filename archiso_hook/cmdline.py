"""The kernel command line: split as the kernel does, then typed once into Options
(options.py) through the PARAMETERS table here.

Only archiso's parameters are ours. Every other key is ignored; a bad value of
one of ours is an InputError naming the parameter and the accepted forms.
"""

from __future__ import annotations

import enum
import platform
import re
from collections.abc import Callable
from typing import Any

import attrs

from archiso_hook import netconf
from archiso_hook.errors import InputError
from archiso_hook.mountopts import parse_mount_options
from archiso_hook.sizes import Size, parse_size


class Arch(enum.StrEnum):
    I686 = "i686"
    X86_64 = "x86_64"

    @classmethod
    def of_machine(cls, machine: str | None = None) -> Arch:
        """The architecture whose images this machine runs (`uname -m`)."""
        machine = machine or platform.machine()
        if machine in {"i386", "i486", "i586", "i686"}:
            return cls.I686
        if machine in {"x86_64", "amd64"}:
            return cls.X86_64
        raise InputError(f"unsupported machine architecture {machine!r}: expected i686 or x86_64")


class CowMode(enum.StrEnum):
    """dm-snapshot exception store: transient, persistent, persistent with overflow."""

    N = "N"
    P = "P"
    PO = "PO"


# The kernel's isspace() in ASCII. str.isspace() also takes \x1c-\x1f, \x85, the no-break
# and other Unicode spaces, which would split `archisolabel=ARCH\u3000X` in two.
_BLANKS = frozenset(" \t\n\v\f\r")


class CopyMode(enum.StrEnum):
    """copytoram=: always (if memory allows), never, or when safe and useful."""

    Y = "y"
    N = "n"
    AUTO = "auto"


def _copytoram(value: str) -> CopyMode:
    lowered = {"yes": "y", "1": "y", "true": "y", "no": "n", "0": "n", "false": "n"}
    try:
        return CopyMode(lowered.get(value, value))
    except ValueError:
        raise InputError(f"copytoram={value} is not valid: expected y, n or auto") from None


def _http_spc(value: str) -> Size:
    return parse_size(value, what="archiso_http_spc")


def _cow_grow_max(value: str) -> Size:
    return parse_size(value, what="cow_grow_max")


def _copytoram_size(value: str) -> Size:
    return parse_size(value, what="copytoram_size")


def cmdline_words(text: str) -> list[str]:
    """The words of a command line as the kernel's next_arg() finds them, quotes kept.

    Whitespace separates words except inside double quotes; an unterminated quote runs
    to the end of the line.
    """
    words: list[str] = []
    word: list[str] = []
    in_quote = False
    for char in text:
        if char in _BLANKS and not in_quote:
            if word:
                words.append("".join(word))
                word = []
            continue
        if char == '"':
            in_quote = not in_quote
        word.append(char)
    if word:
        words.append("".join(word))
    return words


def split_cmdline(text: str) -> list[tuple[str, str | None]]:
    """Split a command line into (key, value) pairs following the kernel's next_arg().

    The quotes around a value (`archisolabel="ARCH 2011"`) or a whole word are removed.
    A bare word has the value None.
    """
    return [_split_word(word) for word in cmdline_words(text)]


def _split_word(word: str) -> tuple[str, str | None]:
    if word.startswith('"'):
        word = word[1:-1] if word.endswith('"') and len(word) > 1 else word[1:]
    key, sep, value = word.partition("=")
    if not sep:
        return key, None
    if value.startswith('"'):
        value = value[1:-1] if value.endswith('"') and len(value) > 1 else value[1:]
    return key, value


def _label(name: str, what: str) -> Callable[[str], str]:
    def parse(value: str) -> str:
        if not value:
            raise InputError(f"{name}= is empty: expected {what}")
        if value in {".", ".."}:  # /dev/disk/by-label/.. is /dev/disk
            raise InputError(f"{name}={value} is not valid: expected {what}, not . or ..")
        return value

    return parse


def _basedir(value: str) -> str:
    parts = value.strip("/").split("/")
    if value.startswith("/") or not value or any(p in {"", ".", ".."} for p in parts):
        raise InputError(
            f"archisobasedir={value} is not valid: expected a relative directory on the "
            "medium such as arch, without '..'"
        )
    return "/".join(parts)


_TAGS = {"UUID": "by-uuid", "LABEL": "by-label", "PARTUUID": "by-partuuid",
         "PARTLABEL": "by-partlabel"}  # fmt: skip


def _device_spec(name: str) -> Callable[[str], str]:
    """A device: a /dev path, or UUID=, LABEL=, PARTUUID=, PARTLABEL= as udev links name them."""

    def parse(value: str) -> str:
        tag, sep, tagged = value.partition("=")
        if sep and tag in _TAGS and tagged not in {"", ".", ".."} and "/" not in tagged:
            return value
        parts = value.split("/")
        if value.startswith("/dev/") and not {"", ".", ".."} & set(parts[2:]):
            return value  # a device node: no empty, '.' or '..' part, no trailing '/'
        raise InputError(
            f"{name}={value} is not valid: expected a device path such as /dev/sr0, or "
            "UUID=, LABEL=, PARTUUID= or PARTLABEL= followed by the value"
        )

    return parse


def device_path(spec: str) -> str:
    """The /dev path of a device spec: tags become the links udev makes for them."""
    tag, sep, value = spec.partition("=")
    if sep and tag in _TAGS:
        return f"/dev/disk/{_TAGS[tag]}/{udev_encode(value)}"
    return spec


def _relative_path(name: str, example: str) -> Callable[[str], str]:
    """A path inside a filesystem, without '..': leading slashes are dropped."""

    def parse(value: str) -> str:
        parts = value.strip("/").split("/")
        if not value.strip("/") or any(p in {"", ".", ".."} for p in parts):
            raise InputError(
                f"{name}={value} is not valid: expected a path inside the filesystem such as "
                f"{example}, without '..'"
            )
        return "/".join(parts)

    return parse


def _mount_options(name: str) -> Callable[[str], str]:
    def parse(value: str) -> str:
        parse_mount_options(value, what=name)  # validates; mounting parses again
        return value

    return parse


def _uuid(value: str) -> str:
    if not value or "/" in value or any(c.isspace() or not c.isprintable() for c in value):
        raise InputError(f"archisosearchuuid={value} is not valid: expected a filesystem UUID")
    return value


def _arch(value: str) -> Arch:
    try:
        return Arch(value)
    except ValueError:
        raise InputError(f"arch={value} is not valid: expected i686 or x86_64") from None


def _cow_persistent(value: str) -> CowMode:
    try:
        return CowMode(value)
    except ValueError:
        raise InputError(
            f"cow_persistent={value} is not valid: expected N (transient), P (persistent) "
            "or PO (persistent, overflow keeps reads working)"
        ) from None


def _number(value: str) -> int | None:
    """Plain decimal digits: str.isdigit() also takes '²' (which int() refuses) and the
    digits of other scripts (which it reads), and int() refuses more than 4300 digits."""
    return int(value) if re.fullmatch(r"[0-9]{1,20}", value) else None


def _chunksize(value: str) -> int:
    number = _number(value)
    if number is None or not 1 <= number <= 1 << 21 or number & (number - 1):
        raise InputError(
            f"cow_chunksize={value} is not valid: expected a power of two in 512-byte "
            "sectors, 1..2097152 (8 = 4 KiB)"
        )
    return number


_DM_NAME_RE = re.compile(r"^[A-Za-z0-9_.+-]{1,64}$")


def _prefix(value: str) -> str:
    if not _DM_NAME_RE.fullmatch(value):  # `$` also matches before a trailing newline
        raise InputError(
            f"dm_snap_prefix={value} is not valid: expected 1..64 of A-Z a-z 0-9 _ . + -"
        )
    return value


def _seconds(value: str) -> int:
    number = _number(value)
    if number is None or number > 86400:
        raise InputError(f"rootdelay={value} is not valid: expected whole seconds, 0..86400")
    return number


def _flag(name: str) -> Callable[[str], bool]:
    def parse(value: str) -> bool:
        if value in {"y", "yes", "1", "true", "on"}:
            return True
        if value in {"n", "no", "0", "false", "off"}:
            return False
        raise InputError(f"{name}={value} is not valid: expected y or n")

    return parse


def _cow_spacesize(value: str) -> Size:
    return parse_size(value, what="cow_spacesize")


@attrs.frozen
class Parameter:
    """One archiso kernel parameter: how to read it, and what the reference says of it.

    The reference (README's table, `mkinitcpio -H archiso`, `archiso-hook parameters`)
    is generated from these fields by archiso_hook/paramdoc.py: edit them here.
    """

    name: str
    field: str
    parse: Callable[[str], Any]
    accepted: str
    meaning: str
    # Only a network boot needs it: a bad value stops only such a boot (on any other
    # it is a warning), and every value given is kept, in order (ip=, as dracut's).
    network: bool = False
    # What holds when it is not given, in words ("" for nothing), and when archiso's
    # own hook got it (archlinux/archiso's history; "new": archiso never had it).
    default: str = ""
    since: str = ""


P = Parameter
_FLAG = "bare word, y or n"
# fmt: off
PARAMETERS: tuple[Parameter, ...] = (
    P("archisobasedir", "basedir", _basedir, "a relative path, no ..",
      "directory on the medium holding aitab and the images",
      default="arch", since="≤ 2011"),
    P("archisolabel", "label", _label("archisolabel", "the boot medium's filesystem label"),
      "a filesystem label",
      "label of the boot medium's filesystem",
      since="≤ 2011"),
    P("archisodevice", "device", _device_spec("archisodevice"),
      "a /dev/... path, or UUID=, LABEL=, PARTUUID=, PARTLABEL= and the value",
      "device of the boot medium; tags name the /dev/disk/by-* links udev makes (a space "
      "is \\x20, as udev encodes it); without udev the hook reads each device's label, "
      "UUID, PARTUUID and PARTLABEL itself and finds the device the link would name",
      default="/dev/disk/by-label/<archisolabel>", since="≤ 2011; the tags 2023 (6fe2c48)"),
    P("archisosearchuuid", "search_uuid", _uuid, "a filesystem UUID",
      "boot from the device with this filesystem UUID, or else from the first device "
      "holding archisosearchfilename (removable devices first; each is looked into "
      "read-only, without replaying its journal, nothing written)",
      since="2024 (4627022)"),
    P("archisosearchfilename", "search_filename",
      _relative_path("archisosearchfilename", "/boot/<uuid>.uuid"), "a path, no ..",
      "the file that marks the medium; given alone, the boot is from the first device "
      "holding it, searched as for archisosearchuuid",
      default="/boot/<archisosearchuuid>.uuid with archisosearchuuid",
      since="2024 (4627022)"),
    P("img_dev", "img_dev", _device_spec("img_dev"), "as archisodevice",
      "device holding an ISO file to boot from (mounted read-only, without replaying "
      "its journal, nothing written)",
      since="≤ 2011 (archiso_loop_mnt)"),
    P("img_label", "img_label", _label("img_label", "the filesystem label of that device"),
      "a filesystem label",
      "the same by label (wins over img_dev)",
      since="2011 (908551e)"),
    P("img_loop", "img_loop", _relative_path("img_loop", "/iso/archlinux.iso"),
      "a path, no ..",
      "path of the ISO file on that device; needs img_dev or img_label",
      since="≤ 2011 (archiso_loop_mnt)"),
    P("img_flags", "img_flags", _mount_options("img_flags"), "mount options",
      "options for mounting that device (always read-only, without journal replay)",
      default="defaults", since="2016 (5725183)"),
    P("arch", "arch", _arch, "i686 or x86_64",
      "which architecture's images to mount (those marked any too)",
      default="the running machine", since="≤ 2011"),
    P("cow_spacesize", "cow_spacesize", _cow_spacesize,
      "a size (256M, 1G) or 1%..100% of RAM",
      "size of the tmpfs that holds the copy-on-write files",
      default="256M", since="2015 (9322a0d; before it cowspace_size, cowfile_size)"),
    P("cow_label", "cow_label", _label("cow_label", "the filesystem label for the COW files"),
      "a filesystem label",
      "keep the COW files on this filesystem, across boots (wins over cow_device); it is "
      "written, so a dirty journal on it is replayed",
      since="2011 (e205583)"),
    P("cow_device", "cow_device", _device_spec("cow_device"), "as archisodevice",
      "the same by device",
      since="2011"),
    P("cow_directory", "cow_directory", _relative_path("cow_directory", "persistent/x86_64"),
      "a path, no ..",
      "directory of the COW files in the cowspace (made with mode 0700)",
      default="persistent_<archisolabel>/<arch>", since="2011"),
    P("cow_flags", "cow_flags", _mount_options("cow_flags"), "mount options, not ro",
      "options for mounting the COW device",
      default="defaults", since="2015 (03c296c)"),
    P("cow_persistent", "cow_persistent", _cow_persistent, "N, P or PO",
      "dm-snapshot exception store: transient, persistent, persistent with overflow (a "
      "full COW fails writes, reads go on); PO falls back to N on a kernel without it",
      default="P with a COW device, PO in RAM", since="2011 (PO: new)"),
    P("cow_grow", "cow_grow", _flag("cow_grow"), _FLAG,
      "let the watchdog (archiso-hook watch) grow a COW in RAM before it fills",
      default="y in RAM, n on a COW device", since="new"),
    P("cow_grow_max", "cow_grow_max", _cow_grow_max, "a size or 1%..100% of RAM",
      "the most the cowspace may grow to",
      default="50%", since="new"),
    P("cow_reset", "cow_reset", _flag("cow_reset"), _FLAG,
      "start the persistent COW files over: the changes kept in them are discarded",
      default="n", since="new"),
    P("cow_chunksize", "cow_chunksize", _chunksize,
      "a power of two, 1..2097152 (512-byte sectors)",
      "dm-snapshot chunk size (a reused persistent store keeps its own)",
      default="8", since="2015 (156b9a6; a fixed 8 before)"),
    P("copytoram", "copytoram", _copytoram, "y, n or auto (a bare word is y)",
      "copy the images to RAM, then release the medium; auto: only when safe and useful "
      "(not from an optical drive, at most 4 GiB, and MemAvailable at least their size "
      "+ 2 GiB)",
      default="auto; y from NBD or NFS", since="≤ 2011; auto 2022 (2e6dfe5)"),
    P("copytoram_size", "copytoram_size", _copytoram_size,
      "a size (4G) or 1%..100% of RAM",
      "size of the tmpfs at /run/archiso/copytoram that holds the copies",
      default="75%", since="≤ 2011"),
    P("checksum", "checksum", _flag("checksum"), _FLAG,
      "verify every image (and the aitab, when listed) against its checksum file before "
      "anything is mounted from it: <img>.sha512, <stem>.sha512 or .md5, "
      "checksum.<arch>.md5 or checksum.md5",
      default="n", since="2011 (90cfe3c)"),
    P("verify", "verify", _flag("verify"), _FLAG,
      "check each image's GPG signature, <img>.sig, with gpgv and the keys built into "
      "the initramfs (ARCHISO_GNUPG_FD), before anything is mounted from it",
      default="n", since="2016 (1a59eb3), airootfs.sfs only"),
    P("cms_verify", "cms_verify", _flag("cms_verify"), _FLAG,
      "check each image's CMS signature, <img>.cms.sig, with openssl and the certificate "
      "built into the initramfs (ARCHISO_TLS_FD, ARCHISO_TLSCA_FD)",
      default="n", since="2022 (v64), airootfs.* only"),
    P("dm_snap_prefix", "dm_snap_prefix", _prefix, "1..64 of A-Z a-z 0-9 _ . + -",
      "the snapshots are /dev/mapper/<prefix>_<image>",
      default="arch", since="2011 (57d2ea1)"),
    P("rootdelay", "rootdelay", _seconds, "whole seconds, 0..86400",
      "how long to wait for the medium (and the COW and ISO devices)",
      default="30", since="mkinitcpio-archiso (a fixed 30 s before)"),
    P("quiet", "quiet", _flag("quiet"), _FLAG,
      "show only warnings and errors on the console",
      default="n", since="mkinitcpio's own"),
    P("ip", "ip", netconf.parse_ip,
      "dhcp, off, <interface>:dhcp, or the kernel's "
      "<client>:<server>:<gw>:<netmask>:<hostname>:<device>:<autoconf>:... (DNS servers "
      "after); dracut's and systemd's forms too; repeatable",
      "the network for a boot from a server (IPv4: DHCP or static); forms it cannot "
      "carry out (dhcp6, auto6, ...) are left to the live system",
      network=True, default="dhcp when a server is given",
      since="2011 (archiso_pxe_common)"),
    P("BOOTIF", "bootif", netconf.parse_bootif,
      "01-aa-bb-cc-dd-ee-ff, aa-bb-cc-dd-ee-ff or aa:bb:cc:dd:ee:ff",
      "the interface to configure, by MAC address (PXELINUX's IPAPPEND 2)",
      network=True, default="ip='s device, else the first Ethernet interface",
      since="2011"),
    P("copy_resolvconf", "copy_resolvconf", _flag("copy_resolvconf"), _FLAG,
      "write the DNS servers into the live root's /etc/resolv.conf (unless that is a "
      "link)",
      default="y", since="2012 (0b39407)"),
    P("archiso_http_srv", "http_srv", netconf.parse_http_server,
      "http://host[:port]/path/ or https://...",
      "download <URL><archisobasedir>/aitab and the images into RAM",
      since="2011 (dceb5a0, was archiso_curl_url)"),
    P("archiso_http_spc", "http_spc", _http_spc, "a size or 1%..100% of RAM",
      "size of the tmpfs the downloads go into",
      default="75%", since="2011"),
    P("archiso_nbd_srv", "nbd_srv", netconf.parse_nbd_server,
      "host[:port] (port 10809 if not given)",
      "boot from this NBD server's export, attached as /dev/nbd0",
      since="2011"),
    P("archiso_nbd_name", "nbd_name", netconf.parse_nbd_name, "the export's name",
      "the NBD export to attach",
      default="archiso", since="2011 (41dd5bf)"),
    P("archiso_nfs_srv", "nfs_srv", netconf.parse_nfs_server, "host:/path",
      "boot from this NFS export",
      since="2011"),
    P("archiso_nfs_opt", "nfs_opt", _mount_options("archiso_nfs_opt"),
      "NFS mount options (vers=3, port=2049, proto=tcp, ...)",
      "options for the NFS mount (always read-only)",
      since="2011"),
)
# fmt: on

# Nothing archiso accepted is dropped silently. Parameters this version does not act on
# yet, said out loud:
NOT_YET_SUPPORTED: frozenset[str] = frozenset()
# Old names whose meaning changed with the new name: a warning names the new one.
RENAMED = {"cowspace_size": "cow_spacesize", "cowfile_size": "cow_spacesize"}
# Old names of parameters that mean the same today: honoured, with a warning to rename.
ALIASES = {"archiso_curl_url": "archiso_http_srv", "curlspace_size": "archiso_http_spc"}
# Old parameters with no counterpart: a warning says what to do instead.
OBSOLETE = {
    "aitab": "the aitab is read from <archisobasedir>/aitab; move it there, or point "
    "archisobasedir= at its directory",
    "archisoflags": "the medium is always mounted read-only; img_flags= sets the options "
    "of a disk holding an ISO file",
}


# udev's encode_devnode_name(): bytes outside this set become \xNN in /dev/disk/by-* names.
_UDEV_SAFE = frozenset(b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz#+-.:=@_")


def udev_encode(name: str) -> str:
    """Encode a label the way udev names its /dev/disk/by-label/ links."""
    out = []
    for char in name:
        if char.isascii():
            out.append(char if ord(char) in _UDEV_SAFE else f"\\x{ord(char):02x}")
        elif "\udc80" <= char <= "\udcff":  # an invalid byte (surrogateescape)
            out.append(f"\\x{ord(char) - 0xDC00:02x}")
        else:  # valid UTF-8 sequences are kept as they are
            out.append(char)
    return "".join(out)
