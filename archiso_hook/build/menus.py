"""The boot menus of a medium (build host): what isolinux's syslinux.cfg and GRUB's grub.cfg
offer, as text, and the names the loaders and the builder share (where the kernels are,
the volume's UUID that GRUB finds the medium by).

Which entry boots when nobody presses a key: on a medium with both architectures, x86_64 on
a 64-bit CPU and i686 otherwise, as archiso's menus chose since 2010 (BIOS: `ifcpu64.c32`;
UEFI: a 64-bit UEFI has a 64-bit CPU; a 32-bit UEFI runs BOOTIA32.EFI, which boots the
x86_64 kernel in mixed mode when the CPU is 64-bit and that kernel supports it).
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence

import attrs

from archiso_hook.build.bootfiles import BOOT_ARCHES
from archiso_hook.cmdline import cmdline_words
from archiso_hook.errors import InputError
from archiso_hook.options import parse_options

KERNEL_NAME = "vmlinuz"
INITRAMFS_NAME = "archiso.img"
SYSLINUX_DIR = "syslinux"
GRUB_DIR = "grub"
#: The kernel's command line holds at most this many bytes on x86 (COMMAND_LINE_SIZE).
COMMAND_LINE_MAX = 2047
SERIAL_CONSOLE = ("console=tty0", "console=ttyS0,115200")
TIMEOUT_MAX = 600


def boot_dir(basedir: str, arch: str) -> str:
    """Where the kernel and initramfs of `arch` are on the medium, from its top."""
    return f"{basedir}/boot/{arch}"


# --------------------------------------------------------------------------- the menu


@attrs.frozen
class BootKernel:
    """A kernel on the medium, as the menus need to know it."""

    arch: str
    mixed_mode: bool = False  # an x86_64 kernel that a 32-bit UEFI can start


@attrs.frozen
class Menu:
    """What both loaders offer: for each kernel an entry and a copy-to-RAM entry, each
    with `archisobasedir= archisolabel=` and the user's parameters."""

    label: str
    basedir: str
    kernels: tuple[BootKernel, ...]  # x86_64 first
    title: str = "Live system"
    append: tuple[str, ...] = ()  # the user's kernel parameters, as words
    serial: bool = False
    timeout: int = 5  # seconds; 0 boots the default entry at once

    @property
    def arches(self) -> tuple[str, ...]:
        return tuple(k.arch for k in self.kernels)

    def kernel_path(self, arch: str) -> str:
        return f"/{boot_dir(self.basedir, arch)}/{KERNEL_NAME}"

    def initramfs_path(self, arch: str) -> str:
        return f"/{boot_dir(self.basedir, arch)}/{INITRAMFS_NAME}"

    def cmdline(self, *, copytoram: bool = False) -> list[str]:
        """The kernel parameters of an entry, as words."""
        label = f'"{self.label}"' if " " in self.label else self.label
        words = [f"archisobasedir={self.basedir}", f"archisolabel={label}"]
        if self.serial:
            words += SERIAL_CONSOLE
        words += self.append
        if copytoram:
            words.append("copytoram=y")
        return words

    def entries(self) -> list[tuple[str, str, bool]]:
        """(id, arch, copytoram) of every entry, in menu order."""
        return [
            (f"{a}{'-copytoram' if c else ''}", a, c) for a in self.arches for c in (False, True)
        ]

    def entry_title(self, arch: str, copytoram: bool) -> str:
        return f"{self.title} ({arch}){', copy to RAM' if copytoram else ''}"


_SAFE_TITLE = re.compile(r"[ -~]{1,60}")


def make_menu(
    *,
    label: str,
    basedir: str,
    kernels: Sequence[BootKernel],
    title: str = "Live system",
    append: str = "",
    serial: bool = False,
    timeout: int = 5,
) -> Menu:
    """A Menu, its inputs checked: an InputError naming the option otherwise."""
    if not kernels:
        raise InputError("a bootable medium needs a kernel")
    if '"' in label or "\\" in label:
        raise InputError(
            f"ISO volume label {label!r} cannot be written on a kernel command line "
            "(it has a double quote or a backslash): choose another --label"
        )
    if not _SAFE_TITLE.fullmatch(title) or "^" in title:
        raise InputError(
            f"--title {title!r} is not valid: expected 1 to 60 printable ASCII characters, "
            "without ^"
        )
    if not 0 <= timeout <= TIMEOUT_MAX:
        raise InputError(f"--timeout {timeout} is not valid: expected 0 to {TIMEOUT_MAX} seconds")
    if any(not c.isprintable() for c in append):
        raise InputError("--append holds a control character (a newline?): one line of parameters")
    words = tuple(cmdline_words(append))
    for word in words:
        key = word.partition("=")[0]
        if key in ("archisolabel", "archisobasedir"):
            raise InputError(
                f"--append sets {key}=, which the medium's entries set from "
                f"--{key.removeprefix('archiso')}: leave it out"
            )
    order = {arch: index for index, arch in enumerate(BOOT_ARCHES)}
    menu = Menu(
        label=label,
        basedir=basedir,
        kernels=tuple(sorted(kernels, key=lambda k: order[k.arch])),
        title=title,
        append=words,
        serial=serial,
        timeout=timeout,
    )
    for _id, _arch, copytoram in menu.entries():
        line = " ".join(menu.cmdline(copytoram=copytoram))
        try:  # what the hook would refuse at boot is refused now
            parse_options(line)
        except InputError as e:
            raise InputError(f"--append: {e}") from None
        if len(line.encode()) > COMMAND_LINE_MAX:
            raise InputError(
                f"the kernel command line of the medium's entries would be {len(line.encode())} "
                f"bytes, more than the kernel's {COMMAND_LINE_MAX}: shorten --append"
            )
    return menu


def syslinux_cfg(menu: Menu) -> str:
    """isolinux's configuration: menu.c32, and on a dual medium an `auto` entry that
    ifcpu64.c32 turns into x86_64 or i686."""
    dual = len(menu.kernels) > 1
    lines = ["# The BIOS boot menu of this medium (isolinux), written by archiso-hook build."]
    if menu.serial:
        lines.append("SERIAL 0 115200")
    if menu.timeout:
        lines += ["UI menu.c32", f"MENU TITLE {menu.title}", f"TIMEOUT {menu.timeout * 10}"]
    lines += ["PROMPT 0", f"DEFAULT {'auto' if dual else menu.entries()[0][0]}"]
    if dual:
        a, b = menu.arches
        lines += [
            "",
            "LABEL auto",
            f"    MENU LABEL {menu.title} ({a} on a 64-bit CPU, else {b})",
            "    COM32 ifcpu64.c32",
            f"    APPEND {a} -- {b}",
        ]
    for entry_id, arch, copytoram in menu.entries():
        lines += [
            "",
            f"LABEL {entry_id}",
            f"    MENU LABEL {menu.entry_title(arch, copytoram)}",
            f"    LINUX {menu.kernel_path(arch)}",
            f"    INITRD {menu.initramfs_path(arch)}",
            f"    APPEND {' '.join(menu.cmdline(copytoram=copytoram))}",
        ]
    return "\n".join(lines) + "\n"


_GRUB_BARE = re.compile(r"[A-Za-z0-9_.,:=/+@%-]+")


def grub_quote(word: str) -> str:
    """One word of a GRUB script, taken literally."""
    if _GRUB_BARE.fullmatch(word):
        return word
    return "'" + word.replace("'", "'\\''") + "'"


def grub_cfg(menu: Menu, volume_uuid: str) -> str:
    """The menu GRUB reads from the ISO 9660 volume (`grub/grub.cfg`)."""
    by_arch = {k.arch: k for k in menu.kernels}
    lines = [
        "# The UEFI boot menu of this medium (GRUB), written by archiso-hook build.",
        "# BOOTX64.EFI and BOOTIA32.EFI in the EFI system partition find this ISO 9660",
        f"# volume by its UUID ({volume_uuid}) and read this file.",
    ]
    if menu.serial:
        lines += [
            "if serial --unit=0 --speed=115200; then",
            "    terminal_input --append serial",
            "    terminal_output --append serial",
            "fi",
        ]
    lines += [
        f"set timeout={menu.timeout}",
        f"set timeout_style={'menu' if menu.timeout else 'hidden'}",
    ]
    if "x86_64" in by_arch:
        lines += [
            "set archiso_x86_64=n",
            'if [ "${grub_cpu}" = x86_64 ]; then',
            "    set archiso_x86_64=y",
        ]
        if by_arch["x86_64"].mixed_mode:
            lines += [
                "elif cpuid -l; then",
                "    # a 64-bit CPU under a 32-bit UEFI: the kernel starts in mixed mode",
                "    set archiso_x86_64=y",
            ]
        lines.append("fi")
    if len(by_arch) > 1:
        lines += [
            'if [ "${archiso_x86_64}" = y ]; then',
            "    set default=x86_64",
            "else",
            "    set default=i686",
            "fi",
        ]
    else:
        lines.append(f"set default={menu.arches[0]}")
    for arch in menu.arches:
        test = '"${archiso_x86_64}" = y' if arch == "x86_64" else '"${grub_cpu}" = i386'
        lines += ["", f"if [ {test} ]; then"]
        for entry_id, entry_arch, copytoram in menu.entries():
            if entry_arch != arch:
                continue
            words = [grub_quote(w) for w in menu.cmdline(copytoram=copytoram)]
            lines += [
                f"    menuentry {grub_quote(menu.entry_title(arch, copytoram))} --id {entry_id} {{",
                "        set gfxpayload=keep",
                f"        linux {grub_quote(menu.kernel_path(arch))} {' '.join(words)}",
                f"        initrd {grub_quote(menu.initramfs_path(arch))}",
                "    }",
            ]
        lines.append("fi")
    return "\n".join(lines) + "\n"


def grub_embedded_cfg(volume_uuid: str) -> str:
    """Built into each GRUB image: find the ISO 9660 volume, and take the menu from it.
    (GRUB runs this with its rescue parser: plain commands only.) When the volume is not
    found, `root` stays the EFI partition, whose grub/grub.cfg says so."""
    return f"search.fs_uuid {volume_uuid} root\nset prefix=($root)/{GRUB_DIR}\n"


def esp_fallback_cfg(volume_uuid: str) -> str:
    return (
        "# Read only when GRUB did not find this medium's ISO 9660 volume.\n"
        f"echo 'archiso-hook: the ISO 9660 volume of this medium (UUID {volume_uuid}) was not"
        " found.'\n"
        "echo 'Boot the whole medium (the ISO, or the device it was written to), not a copy"
        " of its EFI partition.'\n"
    )


def volume_date(epoch: int) -> str:
    """The ISO 9660 volume's dates for xorriso (`--modification-date`): YYYYMMDDhhmmss00."""
    return time.strftime("%Y%m%d%H%M%S00", time.gmtime(epoch))


def volume_uuid(epoch: int) -> str:
    """What GRUB and blkid call the UUID of the ISO 9660 volume made at `epoch`: its
    modification date, `YYYY-MM-DD-hh-mm-ss-00`."""
    d = volume_date(epoch)
    return "-".join((d[:4], d[4:6], d[6:8], d[8:10], d[10:12], d[12:14], d[14:]))
