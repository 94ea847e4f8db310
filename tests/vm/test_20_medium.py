"""Every way of finding the boot medium, and every bus it comes on, in QEMU."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from tests.vm.conftest import Lab, status_reports
from vm.media import SAMPLE_LABEL, Media
from vm.qemu import Drive, DriveKind

pytestmark = pytest.mark.vm

CHECKS = "lab.check=write,files,status"


def iso_uuid(media: Media) -> str:
    """What udev (blkid) calls the ISO's UUID: its volume modification date."""
    return subprocess.run(
        ["blkid", "-p", "-o", "value", "-s", "UUID", str(media.iso)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()


def medium_device(output: str) -> str:
    (report,) = status_reports(output)
    return str(next(m["source"] for m in report["mounts"] if m["target"] == "/run/archiso/bootmnt"))


@pytest.mark.parametrize("udev", [False, True], ids=["own-coldplug", "after-udev"])
def test_a_disk_plugged_in_while_the_hook_waits(lab: Lab, udev: bool) -> None:
    """No medium at power-on: a virtio disk with the ISO plugged in once the hook waits.
    Without udev, its driver (virtio_blk) is loaded from the kernel's event for it."""
    media = lab.media("sample")
    append = f"archisobasedir=arch archisolabel={SAMPLE_LABEL} {CHECKS}"
    initrd = lab.udev_initrd if udev else None
    name = "hotplug" + ("-udev" if udev else "")
    with lab.boot(name, append, [], initrd=initrd) as guest:
        guest.expect(r"waiting up to \d+ s for the boot medium", timeout=200)
        guest.monitor(f"drive_add 0 if=none,id=hot,file={media.iso},format=raw,readonly=on")
        guest.monitor("device_add virtio-blk-pci,drive=hot,id=hot-dev")
        guest.expect(r"LAB: (PASS|FAIL)", timeout=200)
        output = guest.output
    assert "LAB: PASS" in output, output[-3000:]
    assert re.search(r"found the boot medium \S+: /dev/vda, after", output), output[-3000:]


def test_archisodevice_by_uuid_tag(lab: Lab) -> None:
    media = lab.media("sample")
    append = f"archisodevice=UUID={iso_uuid(media)} {CHECKS}"
    output = lab.boot_and_pass("device-uuid", append, [Drive(media.iso, kind="ide-cdrom")])
    assert medium_device(output) == "/dev/sr0"


def test_archisosearchuuid_finds_the_marker_file_when_no_filesystem_has_the_uuid(
    lab: Lab,
) -> None:
    marker = "3f2a7c1e-search-me"

    def add_marker(basedir: Path) -> None:
        (basedir.parent / "boot").mkdir()
        (basedir.parent / "boot" / f"{marker}.uuid").write_text("")

    media = lab.media("search-file", edit=add_marker)
    other = lab.media("sample")  # a second disk with a filesystem but without the file
    drives = [Drive(other.iso, kind="virtio"), Drive(media.iso, kind="ide-cdrom")]
    output = lab.boot_and_pass("search-file", f"archisosearchuuid={marker} {CHECKS}", drives)
    assert "archiso-hook: /dev/sr0 holds /boot/3f2a7c1e-search-me.uuid" in output
    assert medium_device(output) == "/dev/sr0"


def test_archisosearchfilename_alone_finds_the_medium_holding_the_file(lab: Lab) -> None:
    # archiso takes archisosearchfilename= without archisosearchuuid=: the devices are
    # searched for the file, each looked into read-only.
    def add_marker(basedir: Path) -> None:
        (basedir.parent / "live").mkdir()
        (basedir.parent / "live" / "marker.id").write_text("")

    media = lab.media("search-filename-alone", edit=add_marker)
    other = lab.media("sample")  # a disk with a filesystem, without the file
    drives = [Drive(other.iso, kind="virtio"), Drive(media.iso, kind="ide-cdrom")]
    append = f"archisosearchfilename=/live/marker.id {CHECKS}"
    output = lab.boot_and_pass("search-filename-alone", append, drives)
    assert "archiso-hook: /dev/sr0 holds /live/marker.id" in output
    assert medium_device(output) == "/dev/sr0"
    assert "no boot medium given" not in output


def test_a_cd_boot_takes_ip_and_bootif_for_the_live_system(lab: Lab) -> None:
    # dracut's and PXELINUX's forms, common on command lines for the live system's own
    # network: the boot from the disc neither stops, nor warns, nor waits for a network.
    media = lab.media("sample")
    append = (
        f"archisolabel={SAMPLE_LABEL} ip=eth0:dhcp BOOTIF=01-52-54-00-12-34-56 "
        f"lab.check=write,files,status,bootreport"
    )
    output = lab.boot_and_pass("cd-ip-bootif", append, [Drive(media.iso, kind="ide-cdrom")])
    assert "archiso-hook: live root ready at /new_root" in output
    assert "archiso-hook: warning:" not in output and "archiso-hook: error:" not in output
    assert "network interface" not in output and "DHCP" not in output  # none was brought up
    assert medium_device(output) == "/dev/sr0"
    (block,) = re.findall(r"LAB-BOOTREPORT-BEGIN\r?\n(.*?)LAB-BOOTREPORT-END", output, re.S)
    report = json.loads(block)
    assert report["warnings"] == []
    assert report["parameters"]["BOOTIF"] == "52:54:00:12:34:56"
    assert [ip["device"] for ip in report["parameters"]["ip"]] == ["eth0"]


def test_archisosearchuuid_prefers_the_filesystem_with_that_uuid(lab: Lab) -> None:
    media = lab.media("sample")
    append = f"archisosearchuuid={iso_uuid(media)} {CHECKS}"
    output = lab.boot_and_pass("search-uuid", append, [Drive(media.iso, kind="scsi-cd")])
    assert "holds /boot" not in output
    assert medium_device(output) == "/dev/sr0"


@pytest.mark.parametrize(("kind", "device"), [("virtio", "/dev/vda"), ("usb", "/dev/sda")])
def test_the_same_iso_written_to_a_disk_or_a_usb_stick(
    lab: Lab, kind: DriveKind, device: str
) -> None:
    media = lab.media("sample")
    append = f"archisolabel={SAMPLE_LABEL} {CHECKS}"
    output = lab.boot_and_pass(f"bus-{kind}", append, [Drive(media.iso, kind=kind)])
    assert medium_device(output) == device


def test_other_basedir_prefix_and_arch(lab: Lab) -> None:
    media = lab.media("basedir-live", basedir="live")
    append = (
        f"archisobasedir=live archisolabel={SAMPLE_LABEL} dm_snap_prefix=live arch=x86_64 {CHECKS}"
    )
    output = lab.boot_and_pass("basedir-live", append, [Drive(media.iso, kind="ide-cdrom")])
    (report,) = status_reports(output)
    assert [s["name"] for s in report["snapshots"]] == ["live_root"]
    assert report["loops"][0]["backing"] == "/run/archiso/bootmnt/live/x86_64/root.fs.sfs"
