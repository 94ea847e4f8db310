"""The sample ISO (`make iso`) booted by UEFI firmware (Debian's OVMF): the EFI system
partition it carries (El Torito on a CD, GPT partition 2 on a USB stick), GRUB in it,
which finds the ISO 9660 volume by its UUID and reads the menu there, then the kernel.
64-bit UEFI, 32-bit UEFI on a 32-bit CPU, and 32-bit UEFI on a 64-bit CPU (tablets): the
x86_64 kernel in mixed mode. No -kernel: only the ISO file is given to QEMU."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.vm.conftest import assert_firmware_boot, firmware_boot
from vm.qemu import OVMF, OVMF_IA32, Drive, Firmware

pytestmark = pytest.mark.vm

GRUB = "Welcome to GRUB!"
X86_64 = "machine=x86_64 busybox=64 hook=64"
I686 = "machine=i686 busybox=32 hook=32"


def _boot(name: str, drive: Drive, firmware: Firmware, arch: str = "x86_64") -> str:
    with firmware_boot(name, drive, firmware=firmware, arch=arch) as guest:
        guest.expect(r"LAB: (PASS|FAIL)", timeout=380)
        guest.expect(r"reboot: Power down", timeout=60)
        guest.wait(30)
        output = guest.output
    assert_firmware_boot(guest, output, loader=GRUB, arch_line=X86_64 if arch == "x86_64" else I686)
    return output


def test_ovmf_boots_the_iso_from_a_cdrom(sample_iso: Path) -> None:
    output = _boot("iso-ovmf-cdrom", Drive(sample_iso, kind="ide-cdrom"), OVMF)
    assert "UEFI QEMU DVD-ROM" in output  # OVMF's boot entry for the disc


def test_ovmf_boots_the_iso_written_to_a_usb_stick(sample_iso: Path, tmp_path: Path) -> None:
    stick = tmp_path / "stick.img"
    shutil.copyfile(sample_iso, stick)
    output = _boot("iso-ovmf-usb", Drive(stick, kind="usb"), OVMF)
    assert "UEFI QEMU QEMU USB HARDDRIVE" in output


def test_a_32_bit_uefi_on_a_32_bit_cpu_boots_the_i686_entry(sample_iso: Path) -> None:
    """BOOTIA32.EFI; GRUB's `cpuid -l` finds no long mode, so the default is i686."""
    _boot("iso-ovmf-ia32", Drive(sample_iso, kind="ide-cdrom"), OVMF_IA32, arch="i686")


def test_a_32_bit_uefi_on_a_64_bit_cpu_boots_x86_64_in_mixed_mode(sample_iso: Path) -> None:
    """BOOTIA32.EFI on a 64-bit CPU: Debian's amd64 kernel supports being started by a
    32-bit UEFI (EFI mixed mode), so the x86_64 entry is the default."""
    _boot("iso-ovmf-ia32-mixed", Drive(sample_iso, kind="ide-cdrom"), OVMF_IA32)
