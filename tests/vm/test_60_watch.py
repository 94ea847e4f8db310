"""A live root that survives a full COW, and a clean shutdown, in QEMU."""

from __future__ import annotations

import re
import struct
from pathlib import Path

import pytest

from archiso_hook.boot.cowfile import SNAP_MAGIC
from tests.vm.conftest import Lab, hook_lines, status_reports
from vm.disks import Partition, ext4_needs_recovery, make_disk, make_ext4, read_file_from_ext4
from vm.media import SAMPLE_LABEL
from vm.qemu import Drive

pytestmark = pytest.mark.vm

BASE = f"archisobasedir=arch archisolabel={SAMPLE_LABEL}"
# A root filesystem with room for 200 MiB of writes (sparse: the image stays small).
BIG_ROOT = "root / x86_64 zstd ext4 512\nshare /usr/share any zstd none 0\n"


def test_a_200_mib_write_into_a_32_mib_cowspace_grows_it(lab: Lab) -> None:
    media = lab.media("big-root", aitab=BIG_ROOT)
    append = f"{BASE} cow_spacesize=32M cow_grow_max=240M lab.check=fill,status lab.fill_mib=200"
    output = lab.boot_and_pass(
        "watch-grow", append, [Drive(media.iso, kind="virtio")], verdict_timeout=560, timeout=600
    )
    assert "LAB-RESULT fill written=yes mib=200 intact=yes" in output
    hook = hook_lines(output)
    growth = [line for line in hook if line.startswith("grew the COW of arch_root from ")]
    assert growth and growth[0].startswith("grew the COW of arch_root from 32.0 MiB to ")
    assert any(line.startswith("warning: the COW of arch_root is 80% full") for line in hook)
    assert not any(line.startswith("error:") or "Invalid" in line for line in hook)
    (report,) = status_reports(output)
    (snapshot,) = report["snapshots"]
    assert snapshot["state"] == "Active" and snapshot["mode"] == "PO"
    assert snapshot["allocated_sectors"] * 512 >= 200 << 20
    assert report["watch"]["running"] and report["watch"]["rss_bytes"] < 40 << 20
    # Every step kept the COW file within the cowspace.
    (cow,) = report["cow_files"]
    space = next(m for m in report["mounts"] if m["target"] == "/run/archiso/cowspace")
    assert space["fstype"] == "tmpfs" and cow["apparent_bytes"] > 200 << 20


def test_without_growth_writes_fail_but_the_system_keeps_reading(lab: Lab) -> None:
    media = lab.media("big-root", aitab=BIG_ROOT)
    append = (
        f"{BASE} cow_spacesize=32M cow_grow=n lab.check=persist-write,fill,persist-read,"
        "files,status lab.fill_mib=64 lab.token=before-the-flood"
    )
    output = lab.boot_and_pass(
        "watch-nogrow", append, [Drive(media.iso, kind="virtio")], verdict_timeout=560, timeout=600
    )
    assert re.search(r"LAB-RESULT fill written=no mib=64 error=", output)
    assert "LAB-RESULT persist-read present=yes content=before-the-flood" in output
    assert "LAB-CHECK files ok" in output
    hook = hook_lines(output)
    # A fast writer can pass 80 % and reach full between two looks: warnings are not
    # promised here (the growth test asserts them), but any there is says why no growth.
    warnings = [line for line in hook if line.startswith("warning: the COW of arch_root is")]
    assert all("growth is off (cow_grow=n)" in line for line in warnings), warnings
    assert "error: the COW of arch_root is full: writes to it fail, reads still work" in hook
    (report,) = status_reports(output)
    assert report["snapshots"][0]["state"] == "Overflow"  # not Invalid: reads go on


def test_power_off_through_the_shutdown_path_leaves_the_cow_valid(lab: Lab, tmp_path: Path) -> None:
    media = lab.media("sample")
    part = make_ext4(None, tmp_path / "keep.part", size_mib=128, label="KEEP")
    disk = make_disk(tmp_path / "keep.img", [Partition(size_mib=128, image=part, name="keep")])
    drives = [Drive(media.iso, kind="ide-cdrom"), Drive(disk.path, kind="virtio")]
    base = f"{BASE} cow_label=KEEP"
    with lab.boot("shutdown-1", f"{base} lab.check=persist-write lab.token=kept", drives) as guest:
        guest.expect("LAB: PASS", timeout=200)
        guest.wait(120)
        output = guest.output
    hook = hook_lines(output)
    start = hook.index("shutdown (poweroff): taking the live system's storage apart")
    teardown = hook[start:]
    assert "removed /dev/mapper/arch_root" in teardown
    assert (
        teardown.index("unmounted /oldroot")
        < teardown.index("removed /dev/mapper/arch_root")
        < teardown.index("unmounted /oldrun/archiso/cowspace")
    )
    assert teardown[-1].startswith("nothing left busy")
    # On the disk: the COW filesystem was unmounted cleanly and the store is valid.
    start_byte = disk.partition(1).start
    assert not ext4_needs_recovery(disk.path, start_byte)
    cow = read_file_from_ext4(
        disk.path, f"/persistent_{SAMPLE_LABEL}/x86_64/root.cow", offset=start_byte
    )
    assert cow is not None and struct.unpack_from("<2I", cow) == (SNAP_MAGIC, 1)

    with lab.boot("shutdown-2", f"{base} lab.check=persist-read", drives) as guest:
        guest.expect(r"LAB: (PASS|FAIL)", timeout=200)
        second = guest.output
    assert "LAB-RESULT persist-read present=yes content=kept" in second
