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

The menus' texts are menus.py's; here, the host's loader files and the EFI partition.
"""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path

import attrs

from archiso_hook.build.bootfiles import BOOT_ARCHES
from archiso_hook.build.hosttools import Log, find_tool, packages_hint, run_tool
from archiso_hook.build.menus import (
    GRUB_DIR,
    SYSLINUX_DIR,
    BootKernel,
    Menu,
    esp_fallback_cfg,
    grub_cfg,
    grub_embedded_cfg,
    syslinux_cfg,
    volume_uuid,
)
from archiso_hook.errors import HookError

ESP_TYPE_GUID = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"


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
