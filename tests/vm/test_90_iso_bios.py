"""The sample ISO (`make iso`) booted as a PC with a BIOS boots it: SeaBIOS, isolinux from
El Torito or from the isohybrid MBR of a USB stick, its menu, then the kernel it loads.
No -kernel: only the ISO file is given to QEMU. Each boot passes on the live root's own
lines (`LAB: PASS`, its architecture), then the shutdown's."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.vm.conftest import assert_firmware_boot, firmware_boot, status_reports
from vm import lab_dir
from vm.demo import demo_command
from vm.qemu import Drive

pytestmark = pytest.mark.vm

ISOLINUX = "ISOLINUX 6.04"
DOWN, TAB, ENTER = "\x1b[B", "\t", "\r"


def test_qemu_with_nothing_but_the_iso_boots_the_live_system(sample_iso: Path) -> None:
    """What a user types, and what `make demo` runs: `qemu-system-x86_64 -m 1024
    -nographic -cdrom ISO` (plus -nic none and -no-reboot), QEMU's defaults otherwise:
    SeaBIOS, an IDE CD-ROM, a VGA card. The menu boots its default entry by itself."""
    command = demo_command(sample_iso)
    log = lab_dir() / "logs" / "iso-demo-command.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    try:
        proc = subprocess.run(
            command, stdin=subprocess.DEVNULL, capture_output=True, timeout=420, check=False
        )
    except subprocess.TimeoutExpired as e:
        log.write_bytes(e.stdout or b"")
        raise AssertionError(f"no power-off within 420 s; see {log}") from None
    log.write_bytes(proc.stdout)
    output = proc.stdout.decode(errors="replace").replace("\r", "")
    assert ISOLINUX in output, log
    # the menu's default entry (drawn twice on this serial port: isolinux writes to it,
    # and SeaBIOS mirrors the screen there): ifcpu64.c32 chose x86_64 on this 64-bit CPU
    assert "Kernel command line: BOOT_IMAGE=/arch/boot/x86_64/vmlinuz archisobasedir=" in output
    assert "LAB: PASS" in output, output[-3000:]
    assert "LAB-RESULT arch machine=x86_64 busybox=64 hook=64\n" in output, log
    assert "archiso-hook: nothing left busy" in output and "reboot: Power down" in output, log
    assert proc.returncode == 0, proc.stderr


def test_a_32_bit_pc_boots_the_i686_entry_by_itself(sample_iso: Path) -> None:
    """qemu-system-i386's CPU has no long mode: ifcpu64.c32 takes the i686 entry."""
    drive = Drive(sample_iso, kind="ide-cdrom")
    with firmware_boot("iso-seabios-i386", drive, arch="i686") as guest:
        guest.expect(r"LAB: (PASS|FAIL)", timeout=360)
        guest.expect(r"reboot: Power down", timeout=60)
        output = guest.output
    assert guest.command[0] == "qemu-system-i386"
    assert_firmware_boot(
        guest, output, loader=ISOLINUX, arch_line="machine=i686 busybox=32 hook=32"
    )


def test_the_copytoram_entry_from_a_usb_stick_which_is_then_pulled_out(
    sample_iso: Path, tmp_path: Path
) -> None:
    """The ISO written to a stick (as dd would) boots through its MBR. A user picks the
    copy-to-RAM entry in the menu and adds a parameter (Tab edits the command line); once
    the live root is up, the stick is pulled out, and the live root still reads every file."""
    stick = tmp_path / "stick.img"
    shutil.copyfile(sample_iso, stick)
    drive = Drive(stick, kind="usb", name="stick")
    with firmware_boot("iso-seabios-usb-copytoram", drive) as guest:
        guest.expect(r"copy to RAM", timeout=240)  # the menu is drawn
        # the menu opens on the automatic entry; the second below it is x86_64's copy to RAM
        guest.type(DOWN + DOWN + TAB)
        guest.type(" lab.check=arch,wait,files,write,status" + ENTER)
        guest.expect("LAB: waiting", timeout=300)
        guest.monitor("device_del stick-dev")
        guest.expect(r"USB disconnect", timeout=60)
        guest.send("go")
        guest.expect(r"LAB: (PASS|FAIL)", timeout=200)
        guest.expect(r"reboot: Power down", timeout=60)
        output = guest.output
    assert_firmware_boot(
        guest, output, loader=ISOLINUX, arch_line="machine=x86_64 busybox=64 hook=64"
    )
    assert "archiso-hook: copytoram=y: copying" in output
    assert "archiso-hook: released the medium: it can be removed now" in output
    (report,) = status_reports(output)
    targets = [m["target"] for m in report["mounts"]]
    assert "/run/archiso/bootmnt" not in targets and "/run/archiso/copytoram" in targets
