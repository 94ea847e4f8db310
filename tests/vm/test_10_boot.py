"""Boot the live media through the frozen hook on Debian's kernel, under QEMU.

Each test passes only on positive lines from the guest: the live root's checks
(`LAB: PASS`) or the exact failure message followed by an empty leak report.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from tests.vm.conftest import Lab, fails_cleanly, hook_lines, power_off, status_reports
from vm.media import SAMPLE_LABEL, STAGE
from vm.qemu import Drive

pytestmark = pytest.mark.vm

BASE = f"archisobasedir=arch archisolabel={SAMPLE_LABEL}"


@pytest.mark.parametrize("udev", [False, True], ids=["own-coldplug", "after-udev"])
def test_iso_on_ide_cdrom_fs_sfs_root_and_sfs_share(lab: Lab, udev: bool) -> None:
    """HOOKS=(base archiso), the hook its own coldplug; and HOOKS=(base udev archiso)."""
    media = lab.media("sample")
    append = f"{BASE} lab.check=status,write,files,mounts,status,bootreport"
    initrd = lab.udev_initrd if udev else None
    name = "iso-ide-cdrom" + ("-udev" if udev else "")
    output = lab.boot_and_pass(name, append, [Drive(media.iso, kind="ide-cdrom")], initrd=initrd)
    assert "archiso-hook: live root ready at /new_root" in output
    # Without udev the hook loads the drivers itself (ata_piix, then sr_mod for the drive).
    own = re.search(r"archiso-hook: no udev: loaded (\d+) driver\(s\)", output)
    assert (own is None) == udev, output[-3000:]
    assert_boot_report(output)
    before, after = status_reports(output)
    (snapshot,) = after["snapshots"]
    assert snapshot["name"] == "arch_root" and snapshot["state"] == "Active"
    assert snapshot["table"].endswith(" snapshot 7:1 7:2 PO 8")  # PO: the default in RAM
    # The 16 MiB the `write` check wrote went to the COW, not to the read-only origin.
    grown = snapshot["allocated_sectors"] - before["snapshots"][0]["allocated_sectors"]
    assert grown * 512 >= 16 << 20, (before, after)
    mounts = {m["live_path"]: m for m in after["mounts"] if m["live_path"]}
    assert mounts["/"]["source"] == "/dev/mapper/arch_root" and not mounts["/"]["read_only"]
    assert mounts["/usr/share"]["fstype"] == "squashfs" and mounts["/usr/share"]["read_only"]
    assert all(m["present"] for m in after["mounts"])
    assert all(lo["present"] for lo in after["loops"])
    assert after["device_mapper"]["devices"] == [
        {"name": "arch_root", "devno": snapshot["devno"], "ours": True}
    ]


def assert_boot_report(output: str) -> None:
    """/run/archiso/report.json, as the live system sees it (the `bootreport` check)."""
    assert "LAB-RESULT bootreport mode=644 owner=0:0 dir_mode=755" in output
    (block,) = re.findall(r"LAB-BOOTREPORT-BEGIN\r?\n(.*?)LAB-BOOTREPORT-END", output, re.S)
    report = json.loads(block)
    assert report["version"] == 1 and report["newroot"] == "/new_root"
    assert report["parameters"]["archisolabel"] == SAMPLE_LABEL
    assert report["parameters"]["cow_persistent"] == "PO"  # the default in RAM, filled in
    assert report["medium"] == {
        "mountpoint": "/run/archiso/bootmnt",
        "found_by": "archisolabel",
        "device": "/dev/sr0",
        "fstype": "iso9660",
        "iso_file": None,
        "iso_device": None,
        "released": False,
    }
    root, share = report["images"]
    assert (root["mount"], root["type"], root["mounted"]["source"]) == (
        "/",
        "fs.sfs",
        "/dev/mapper/arch_root",
    )
    assert root["snapshot"]["mode"] == "PO" and root["cow_file"]["kept"] is False
    assert not root["copied_to_ram"]  # copytoram=auto never copies from an optical drive
    assert (share["mount"], share["mounted"]["fstype"]) == ("/usr/share", "squashfs")
    timings = report["timings"]
    assert {"startup_seconds", "mount_seconds", "hook_seconds", "uptime_seconds"} <= set(timings)
    assert 0 < timings["mount_seconds"] <= timings["hook_seconds"] < timings["uptime_seconds"]


def test_the_builder_stays_on_the_build_host(lab: Lab) -> None:
    """The staged tree has the builder's sources beside the frozen modules (the sample ISO
    is made by its `archiso-hook build`); the initramfs made from it leaves them out."""
    builder = "usr/lib/archiso-hook/_internal/archiso_hook/build"
    assert (STAGE / builder / "builder.py").is_file()
    listing = subprocess.run(
        f"zstd -dc '{lab.initrd}' | cpio -t --quiet",
        shell=True,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert "usr/lib/archiso-hook/_internal/archiso_hook/boot/attrs-methods.marshal" in listing
    assert [name for name in listing if name.startswith(builder)] == []
    # nor uuid's C part, only the builder imports uuid (and not for time-based UUIDs)
    assert not [n for n in listing if n.startswith("usr/lib/archiso-hook/") and "uuid" in n]


def test_plain_fs_image(lab: Lab) -> None:
    media = lab.media("plain-fs", aitab="root / x86_64 none ext4 64\n")
    append = f"{BASE} cow_persistent=P lab.check=write,files,status"
    output = lab.boot_and_pass("plain-fs", append, [Drive(media.iso, kind="ide-cdrom")])
    (report,) = status_reports(output)
    (snapshot,) = report["snapshots"]
    assert snapshot["origin"] == report["loops"][0]["device"]
    assert report["loops"][0]["backing"] == "/run/archiso/bootmnt/arch/x86_64/root.fs"
    assert snapshot["mode"] == "P" and snapshot["state"] == "Active"
    assert snapshot["metadata_sectors"] > 0  # a persistent store writes metadata


@pytest.mark.parametrize("udev", [False, True], ids=["own-coldplug", "after-udev"])
def test_wrong_label_fails_clearly_within_rootdelay_and_leaves_nothing(
    lab: Lab, udev: bool
) -> None:
    """The devices seen, as the hook reads them, or as udev recorded them."""
    media = lab.media("sample")
    append = "archisobasedir=arch archisolabel=NO_SUCH_LABEL rootdelay=3"
    initrd = lab.udev_initrd if udev else None
    name = "wrong-label" + ("-udev" if udev else "")
    drives = [Drive(media.iso, kind="ide-cdrom")]
    with lab.boot(name, append, drives, initrd=initrd) as guest:
        fails_cleanly(
            guest,
            r"boot medium /dev/disk/by-label/NO_SUCH_LABEL did not appear within 3 s; "
            rf"block devices seen: sr0 \(iso9660, label '{SAMPLE_LABEL}'",
            r"hint: check archisolabel=",
        )
        power_off(guest)


def test_failure_half_way_undoes_everything(lab: Lab) -> None:
    """The second image is missing: the root snapshot made before it must be taken down."""

    def list_a_missing_image(basedir: Path) -> None:
        (basedir / "aitab").write_text("root / x86_64 zstd ext4 64\nghost /srv any zstd none 0\n")

    media = lab.media("missing-image", edit=list_a_missing_image)
    # copytoram=n: with copytoram (auto by default) every image is checked before anything
    # is mounted, so the failure would come before the snapshot this test wants undone.
    with lab.boot(
        "missing-image", f"{BASE} copytoram=n", [Drive(media.iso, kind="ide-cdrom")]
    ) as guest:
        fails_cleanly(
            guest,
            r"image /run/archiso/bootmnt/arch/any/ghost.sfs \(aitab line 2\) "
            r"does not exist on the medium",
        )
        power_off(guest)
    # The error first, then everything made before it undone, in reverse order.
    hook = hook_lines(guest.output)
    failure = hook.index(
        "error: image /run/archiso/bootmnt/arch/any/ghost.sfs (aitab line 2) "
        "does not exist on the medium"
    )
    cowfile = "/run/archiso/cowspace/persistent_ARCHISO_SAMPLE/x86_64/root.cow"
    assert hook[failure + 1 :] == [
        "warning: undoing what was set up",
        "undone: unmount /new_root",
        "undone: remove /dev/mapper/arch_root",
        "undone: detach /dev/loop2",
        f"undone: remove {cowfile}",
        "undone: detach /dev/loop1",
        "undone: unmount /run/archiso/sfs/root",
        "undone: detach /dev/loop0",
        "undone: unmount /run/archiso/cowspace",
        "undone: unmount /run/archiso/bootmnt",
    ]
