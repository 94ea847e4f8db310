"""The boot loaders of a medium (build host): isolinux for BIOS, GRUB for UEFI, their
menus, and the EFI system partition an ISO carries.

What a bootable ISO holds besides the images (the 2011 layout, `syslinux/` at the top):

    <basedir>/boot/<arch>/vmlinuz, archiso.img   the kernel and initramfs of each arch
    syslinux/isolinux.bin, *.c32, syslinux.cfg   BIOS: El Torito, and the hybrid MBR
    grub/grub.cfg                                UEFI: the menu GRUB reads
    (appended partition 2, FAT)                  the EFI system partition: EFI/BOOT/
                                                 BOOTX64.EFI, BOOTIA32.EFI, grub/grub.cfg

GRUB rather than systemd-boot: GRUB reads ISO 9660 itself, so the kernels and initramfs
images stay once on the medium and the EFI partition holds only GRUB (about 1.4 MB), where
systemd-boot reads only FAT and needs copies of them all there; GRUB exists for 32-bit UEFI
in Debian and Arch alike (Debian's systemd-boot has no ia32 build); and one menu language,
with a CPU test (`cpuid -l`), serves both. Each GRUB image is made by `grub-mkimage` with
every module it needs built in and a two-line embedded configuration: find this medium's
ISO 9660 volume by its UUID (the volume's modification time, derived from
SOURCE_DATE_EPOCH), and read the menu from `grub/grub.cfg` there.

Which entry boots when nobody presses a key: on a medium with both architectures, x86_64 on
a 64-bit CPU and i686 otherwise, as archiso's menus chose since 2010 (BIOS: `ifcpu64.c32`;
UEFI: a 64-bit UEFI has a 64-bit CPU; a 32-bit UEFI runs BOOTIA32.EFI, which boots the
x86_64 kernel in mixed mode when the CPU is 64-bit and that kernel supports it).
"""

from __future__ import annotations

import re
import shutil
import time
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path

import attrs

from archiso_hook.build.bootfiles import BOOT_ARCHES
from archiso_hook.build.hosttools import Log, find_tool, packages_hint, run_tool
from archiso_hook.cmdline import cmdline_words, parse_options
from archiso_hook.errors import HookError, InputError

KERNEL_NAME = "vmlinuz"
INITRAMFS_NAME = "archiso.img"
SYSLINUX_DIR = "syslinux"
GRUB_DIR = "grub"
ESP_TYPE_GUID = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
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


# --------------------------------------------------------------------------- the loaders

#: isolinux.bin's directory, isohdpfx.bin's, and the modules': Debian and Ubuntu, Arch,
#: Fedora. One distribution's set is taken whole: isolinux.bin and ldlinux.c32 must be
#: of the same build.
SYSLINUX_LAYOUTS = (
    ("usr/lib/ISOLINUX", "usr/lib/ISOLINUX", "usr/lib/syslinux/modules/bios"),
    ("usr/lib/syslinux/bios", "usr/lib/syslinux/bios", "usr/lib/syslinux/bios"),
    ("usr/share/syslinux", "usr/share/syslinux", "usr/share/syslinux"),
)
#: What isolinux loads: itself, its core, the menu and the CPU test, and their libraries.
SYSLINUX_MODULES = ("ldlinux.c32", "menu.c32", "libutil.c32", "libcom32.c32", "ifcpu64.c32")
SYSLINUX_PACKAGES = ("isolinux and syslinux-common", "syslinux")

#: GRUB's platform for each architecture's UEFI, the loader's name there, and the packages.
GRUB_TARGETS = {
    "x86_64": ("x86_64-efi", "BOOTX64.EFI", ("grub-efi-amd64-bin", "grub")),
    "i686": ("i386-efi", "BOOTIA32.EFI", ("grub-efi-ia32-bin", "grub")),
}
#: Built into each GRUB image (none is loaded from the medium).
GRUB_MODULES = (
    *("normal", "configfile", "echo", "test", "sleep", "reboot", "halt", "minicmd", "boot"),
    *("linux", "cpuid", "gzio", "serial", "terminal", "all_video"),
    *("part_gpt", "part_msdos", "fat", "iso9660"),
    *("search", "search_fs_uuid", "search_label", "search_fs_file"),
)


@attrs.frozen
class Syslinux:
    isolinux: Path
    mbr: Path  # isohdpfx.bin: the hybrid MBR for xorriso
    modules: tuple[Path, ...]


def find_syslinux(root: Path = Path("/")) -> Syslinux:
    """isolinux's files on this host (under `root`), or a HookError naming the packages."""
    for bin_dir, mbr_dir, module_dir in SYSLINUX_LAYOUTS:
        isolinux = root / bin_dir / "isolinux.bin"
        mbr = root / mbr_dir / "isohdpfx.bin"
        modules = tuple(root / module_dir / name for name in SYSLINUX_MODULES)
        if all(p.is_file() for p in (isolinux, mbr, *modules)):
            return Syslinux(isolinux, mbr, modules)
    found = [str(root / d / "isolinux.bin") for d, _, _ in SYSLINUX_LAYOUTS]
    raise HookError(
        "isolinux (the BIOS boot loader) is not installed: none of "
        f"{', '.join(found)} is there with isohdpfx.bin and {', '.join(SYSLINUX_MODULES)}",
        packages_hint(*SYSLINUX_PACKAGES).replace("package", "packages", 1),
    )


def grub_module_dir(arch: str, root: Path = Path("/")) -> Path:
    """GRUB's modules for the UEFI of `arch`, or a HookError naming the package."""
    target, _name, packages = GRUB_TARGETS[arch]
    directory = root / "usr/lib/grub" / target
    if not (directory / "linux.mod").is_file():
        raise HookError(
            f"GRUB for {target} (the UEFI boot loader of {arch} machines) is not installed: "
            f"{directory} has no modules",
            packages_hint(*packages),
        )
    return directory


def uefi_loaders(
    kernels: Sequence[BootKernel], log: Log, root: Path = Path("/")
) -> dict[str, Path]:
    """The GRUB images the EFI partition carries, by architecture, with their modules'
    directory. BOOTX64.EFI for an x86_64 kernel; BOOTIA32.EFI for an i686 kernel, and for
    an x86_64 kernel that supports mixed mode when GRUB's i386-efi is installed (64-bit
    tablets and netbooks with a 32-bit UEFI)."""
    arches = {k.arch for k in kernels}
    loaders = {arch: grub_module_dir(arch, root) for arch in BOOT_ARCHES if arch in arches}
    if "i686" not in loaders and any(k.mixed_mode for k in kernels):
        try:
            loaders["i686"] = grub_module_dir("i686", root)
        except HookError as e:
            log(f"note: no BOOTIA32.EFI, so 64-bit machines with a 32-bit UEFI will not boot "
                f"this medium: {e}")  # fmt: skip
    return loaders


#: What making a bootable ISO runs, besides xorriso.
LOADER_TOOLS = ("grub-mkimage", "mkfs.fat", "mmd", "mcopy")


@attrs.frozen
class Loaders:
    """A medium's menus, and the host's loaders that will carry them."""

    menu: Menu
    syslinux: Syslinux
    grub: Mapping[str, Path]  # architecture -> GRUB's modules for its UEFI


def find_loaders(menu: Menu, log: Log, root: Path = Path("/")) -> Loaders:
    """Everything a bootable medium needs from the host, found before hours of building
    (a HookError naming the packages of what is missing)."""
    found = Loaders(menu, find_syslinux(root), uefi_loaders(menu.kernels, log, root))
    for tool in (*LOADER_TOOLS, "xorriso"):
        find_tool(tool)
    return found


def make_grub_image(arch: str, module_dir: Path, embedded: Path, out: Path, log: Log) -> Path:
    """A standalone GRUB EFI binary for `arch`'s UEFI, its modules and configuration built in."""
    target = GRUB_TARGETS[arch][0]
    run_tool(
        ["grub-mkimage", "-O", target, "-d", str(module_dir), "-p", f"/{GRUB_DIR}",
         "-c", str(embedded), "-o", str(out), *GRUB_MODULES],
        log,
    )  # fmt: skip
    return out


def make_esp(files: Mapping[str, Path], out: Path, epoch: int, log: Log) -> Path:
    """A FAT image holding `files` (path in the image -> file), sized to them, made with
    mkfs.fat and mtools: no root, no mount, and the same bytes for the same files and
    epoch (mkfs.fat --invariant, mtools' SOURCE_DATE_EPOCH)."""
    total = sum(src.stat().st_size for src in files.values())
    # FAT tables, directories and cluster slack: 512 KiB is ample for a few files.
    kib = -(-(total // 1024 + 512) // 1024) * 1024
    env = {"SOURCE_DATE_EPOCH": str(epoch)}
    out.unlink(missing_ok=True)
    volume_id = uuid.uuid5(uuid.NAMESPACE_OID, f"archiso-hook-esp@{epoch}").hex[:8]
    run_tool(
        ["mkfs.fat", "-C", "--invariant", "-i", volume_id, "-n", "ARCHISO_EFI", str(out),
         str(kib)],
        log,
        env=env,
        stdout=False,
    )  # fmt: skip
    dirs = sorted({d for name in files for d in _parents(name)})
    if dirs:
        run_tool(["mmd", "-i", str(out), *(f"::/{d}" for d in dirs)], log, env=env)
    for name, src in sorted(files.items()):
        run_tool(["mcopy", "-i", str(out), str(src), f"::/{name}"], log, env=env)
    return out


def _parents(name: str) -> list[str]:
    parts = name.split("/")[:-1]
    return ["/".join(parts[: i + 1]) for i in range(len(parts))]


# --------------------------------------------------------------------------- on a medium


@attrs.frozen
class BootSetup:
    """The boot loaders written into a medium's tree, and what xorriso needs of them."""

    esp: Path  # the EFI system partition's image (outside the tree)
    mbr: Path  # isolinux's isohdpfx.bin

    def xorriso_args(self) -> list[str]:
        """`xorriso -as mkisofs` options: El Torito for BIOS (isolinux) and UEFI (the EFI
        partition, appended as partition 2), the isohybrid MBR so that the same file
        boots from a USB stick, and a GPT entry for the EFI partition."""
        return [
            "-eltorito-boot", f"{SYSLINUX_DIR}/isolinux.bin",
            "-eltorito-catalog", f"{SYSLINUX_DIR}/boot.cat",
            "-no-emul-boot", "-boot-load-size", "4", "-boot-info-table",
            "-isohybrid-mbr", str(self.mbr),
            "--mbr-force-bootable",
            # The ISO 9660 volume again at 32 KiB: partition 1 starts there, so that
            # partition tools see a valid table and the partition is mountable.
            "-partition_offset", "16",
            "-append_partition", "2", ESP_TYPE_GUID, str(self.esp),
            # before -e: the EFI partition's type is EFI in the GPT too
            "-isohybrid-gpt-basdat",
            "-eltorito-alt-boot",
            "-e", "--interval:appended_partition_2:all::",
            "-no-emul-boot",
        ]  # fmt: skip


def write_loaders(
    tree: Path, loaders: Loaders, *, epoch: int, scratch: Path, log: Log
) -> BootSetup:
    """Write isolinux and the menus into `tree`, and make the EFI partition in `scratch`."""
    menu, syslinux = loaders.menu, loaders.syslinux
    uuid_ = volume_uuid(epoch)

    sysdir = tree / SYSLINUX_DIR
    sysdir.mkdir(parents=True, exist_ok=True)
    for src in (syslinux.isolinux, *syslinux.modules):
        shutil.copyfile(src, sysdir / src.name)
    (sysdir / "syslinux.cfg").write_text(syslinux_cfg(menu), encoding="ascii")
    grubdir = tree / GRUB_DIR
    grubdir.mkdir(parents=True, exist_ok=True)
    (grubdir / "grub.cfg").write_text(grub_cfg(menu, uuid_), encoding="ascii")
    log(f"wrote {sysdir}/syslinux.cfg and {grubdir}/grub.cfg ({', '.join(menu.arches)})")

    embedded = scratch / "grub-embedded.cfg"
    embedded.write_text(grub_embedded_cfg(uuid_), encoding="ascii")
    fallback = scratch / "grub-fallback.cfg"
    fallback.write_text(esp_fallback_cfg(uuid_), encoding="ascii")
    files = {f"{GRUB_DIR}/grub.cfg": fallback}
    for arch, module_dir in loaders.grub.items():
        name = GRUB_TARGETS[arch][1]
        files[f"EFI/BOOT/{name}"] = make_grub_image(arch, module_dir, embedded, scratch / name, log)
    esp = make_esp(files, scratch / "efiboot.img", epoch, log)
    log(f"EFI system partition: {', '.join(sorted(files))}")
    return BootSetup(esp, syslinux.mbr)
