"""Persistent COW on a disk, and an ISO file kept on a disk, in QEMU.

The disks are made on the host without root (vm.disks) and read back after the
guest powered off, so the tests see what a user's disk really holds.
"""

from __future__ import annotations

import shutil
import struct
from pathlib import Path

import pytest

from archiso_hook.boot.cowfile import SNAP_MAGIC
from tests.vm.conftest import Lab, fails_cleanly, power_off, status_reports
from vm.disks import DiskLayout, Partition, make_disk, make_ext4, make_vfat, read_file_from_ext4
from vm.media import SAMPLE_LABEL
from vm.qemu import Drive

pytestmark = pytest.mark.vm

COWDIR = f"persistent_{SAMPLE_LABEL}/x86_64"
COWFILE = f"/run/archiso/cowspace/{COWDIR}/root.cow"


def disk_with(
    tmp: Path, name: str, fs: str, *, size_mib: int, label: str, tree: Path | None = None
) -> DiskLayout:
    """A GPT disk with one filesystem partition."""
    part = tmp / f"{name}.part"
    if fs == "vfat":
        make_vfat(tree, part, size_mib=size_mib, label=label)
    else:
        make_ext4(tree, part, size_mib=size_mib, label=label)
    return make_disk(tmp / f"{name}.img", [Partition(size_mib=size_mib, image=part, name=name)])


def test_changes_persist_across_boots_until_cow_reset(lab: Lab, tmp_path: Path) -> None:
    media = lab.media("sample")
    disk = disk_with(tmp_path, "keep", "ext4", size_mib=256, label="KEEP")
    drives = [Drive(media.iso, kind="ide-cdrom"), Drive(disk.path, kind="virtio")]
    base = f"archisolabel={SAMPLE_LABEL} cow_label=KEEP"

    append = f"{base} lab.check=persist-write,status lab.token=kept-1"
    first = lab.boot_and_pass("persist-1", append, drives, power_off=True)
    (report,) = status_reports(first)
    (snapshot,) = report["snapshots"]
    assert snapshot["mode"] == "P" and snapshot["state"] == "Active"
    cowspace = next(m for m in report["mounts"] if m["target"] == "/run/archiso/cowspace")
    assert cowspace["source"] == "/dev/vda1" and cowspace["fstype"] == "ext4"
    assert "archiso-hook: remounted /run/archiso/cowspace read-write" in first
    # On the disk, after power-off: a valid persistent store.
    start = disk.partition(1).start
    cow = read_file_from_ext4(disk.path, f"/{COWDIR}/root.cow", offset=start)
    assert cow is not None
    assert struct.unpack_from("<2I", cow) == (SNAP_MAGIC, 1)

    second = lab.boot_and_pass(
        "persist-2", f"{base} lab.check=persist-read", drives, power_off=True
    )
    assert "LAB-RESULT persist-read present=yes content=kept-1" in second
    assert f"archiso-hook: reusing the persistent COW file {COWFILE}" in second

    third = lab.boot_and_pass(
        "persist-3", f"{base} cow_reset=y lab.check=persist-read", drives, power_off=True
    )
    assert "LAB-RESULT persist-read present=no" in third
    assert f"archiso-hook: starting {COWFILE} over: cow_reset=y" in third


def test_an_invalidated_store_is_refused_plainly_and_kept(lab: Lab, tmp_path: Path) -> None:
    media = lab.media("sample")
    tree = tmp_path / "tree"
    (tree / COWDIR).mkdir(parents=True)
    header = struct.pack("<4I", SNAP_MAGIC, 0, 1, 8) + b"\0" * 4080  # valid = 0: overflowed
    (tree / COWDIR / "root.cow").write_bytes(header)
    disk = disk_with(tmp_path, "broken", "ext4", size_mib=64, label="KEEP", tree=tree)
    drives = [Drive(media.iso, kind="ide-cdrom"), Drive(disk.path, kind="virtio")]
    with lab.boot(
        "persist-invalid", f"archisolabel={SAMPLE_LABEL} cow_label=KEEP", drives
    ) as guest:
        fails_cleanly(
            guest,
            f"the persistent COW file {COWFILE} is marked invalid: it overflowed, or "
            "a write to it failed, in an earlier boot",
            "hint: boot once with cow_reset=y to start over",
        )
        power_off(guest)
    # The user's file was not touched: only what this boot created is ever removed.
    kept = read_file_from_ext4(disk.path, f"/{COWDIR}/root.cow", offset=disk.partition(1).start)
    assert kept == header


def test_a_cow_file_that_is_a_symlink_is_refused(lab: Lab, tmp_path: Path) -> None:
    """root.cow on the COW device is a link to another disk, blank as a new store is:
    the snapshot would write over that disk. The boot refuses it, leaves nothing, and the
    other disk is as it was."""
    media = lab.media("sample")
    tree = tmp_path / "tree"
    (tree / COWDIR).mkdir(parents=True)
    (tree / COWDIR / "root.cow").symlink_to("/dev/vdb")
    disk = disk_with(tmp_path, "linked", "ext4", size_mib=64, label="KEEP", tree=tree)
    victim = tmp_path / "victim.img"
    victim.write_bytes(bytes(16 << 20))
    drives = [
        Drive(media.iso, kind="ide-cdrom"),
        Drive(disk.path, kind="virtio"),
        Drive(victim, kind="virtio"),
    ]
    with lab.boot("persist-symlink", f"archisolabel={SAMPLE_LABEL} cow_label=KEEP", drives) as g:
        fails_cleanly(
            g,
            f"the persistent COW file {COWFILE} is a symbolic link to /dev/vdb: refusing to "
            "write through it",
            "hint: remove it from the COW device, or boot once with cow_reset=y",
        )
        power_off(g)
    assert victim.read_bytes() == bytes(16 << 20)


def test_iso_file_on_an_ext4_partition(lab: Lab, tmp_path: Path) -> None:
    media = lab.media("sample")
    tree = tmp_path / "store"
    (tree / "iso").mkdir(parents=True)
    shutil.copyfile(media.iso, tree / "iso" / "live.iso")
    size = media.iso.stat().st_size // (1 << 20) + 32
    disk = disk_with(tmp_path, "isostore", "ext4", size_mib=size, label="ISOSTORE", tree=tree)
    append = "img_label=ISOSTORE img_loop=/iso/live.iso lab.check=write,files,status"
    output = lab.boot_and_pass(
        "iso-file", append, [Drive(disk.path, kind="virtio")], power_off=True
    )
    (report,) = status_reports(output)
    mounts = {m["target"]: m for m in report["mounts"]}
    assert mounts["/run/archiso/img_dev"]["source"] == "/dev/vda1"
    assert mounts["/run/archiso/img_dev"]["read_only"]
    iso_loop = report["loops"][0]
    assert iso_loop["backing"] == "/run/archiso/img_dev/iso/live.iso"
    assert mounts["/run/archiso/bootmnt"]["source"] == iso_loop["device"]
    assert mounts["/run/archiso/bootmnt"]["fstype"] == "iso9660"


def test_a_vfat_cow_device_smaller_than_the_image(lab: Lab, tmp_path: Path) -> None:
    media = lab.media("sample")
    disk = disk_with(tmp_path, "fat", "vfat", size_mib=40, label="KEEPFAT")
    drives = [Drive(media.iso, kind="ide-cdrom"), Drive(disk.path, kind="virtio")]
    append = f"archisolabel={SAMPLE_LABEL} cow_label=KEEPFAT lab.check=write,status"
    output = lab.boot_and_pass("persist-vfat", append, drives, power_off=True)
    assert "archiso-hook: warning: vfat has no sparse files: the new COW files take" in output
    (report,) = status_reports(output)
    (cow,) = report["cow_files"]
    assert cow["apparent_bytes"] <= 40 << 20
    assert cow["allocated_bytes"] >= cow["apparent_bytes"] - 65536  # taken at once on vfat
    (snapshot,) = report["snapshots"]
    assert snapshot["state"] == "Active" and snapshot["mode"] == "P"
