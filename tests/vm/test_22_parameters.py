"""archiso's parameters that were only parsed, now booted: the COW device by path and
by tag with its directory, mount options, chunk size and a transient store; an ISO file
on a disk named by path with its mount options; a copytoram_size too small; the medium
by LABEL=, PARTUUID= and PARTLABEL=; quiet."""

from __future__ import annotations

import json
import re
import struct
from pathlib import Path

import pytest

from archiso_hook.boot.cowfile import SNAP_MAGIC
from tests.vm.conftest import Lab, hook_lines, status_reports
from vm.disks import Partition, make_disk, make_ext4, read_file_from_ext4
from vm.media import SAMPLE_LABEL
from vm.qemu import Drive

pytestmark = pytest.mark.vm

BASE = f"archisobasedir=arch archisolabel={SAMPLE_LABEL}"


def mountinfo(output: str, target: str) -> str:
    """The live system's /proc/self/mountinfo line of `target` (lab.check=mounts)."""
    pattern = rf"LAB-RESULT mounts (\S+ \S+ \S+ \S+ {re.escape(target)} .*?)\r?$"
    lines: list[str] = re.findall(pattern, output, re.M)
    assert lines, f"{target} is not mounted"
    return lines[-1]


def test_cow_device_by_path_with_its_directory_options_and_chunk_size(
    lab: Lab, tmp_path: Path
) -> None:
    media = lab.media("sample")
    part = make_ext4(None, tmp_path / "cow.part", size_mib=128, label="COWDISK")
    disk = make_disk(tmp_path / "cow.img", [Partition(size_mib=128, image=part, name="cow")])
    drives = [Drive(media.iso, kind="ide-cdrom"), Drive(disk.path, kind="virtio")]
    append = (
        f"{BASE} cow_device=/dev/vda1 cow_directory=mine/x86 cow_flags=noatime "
        "cow_chunksize=16 lab.check=write,mounts,status"
    )
    output = lab.boot_and_pass(
        "param-cow-device", append, drives, verdict_timeout=240, power_off=True
    )
    (report,) = status_reports(output)
    (snapshot,) = report["snapshots"]
    assert re.fullmatch(r"0 \d+ snapshot \d+:\d+ \d+:\d+ P 16", snapshot["table"])
    assert snapshot["cow_file"] == "/run/archiso/cowspace/mine/x86/root.cow"
    cowspace = mountinfo(output, "/run/archiso/cowspace")
    assert "noatime" in cowspace.split()[5].split(",") and " - ext4 /dev/vda1 " in cowspace
    # On the disk after the power-off: the store, persistent by default on a device.
    cow = read_file_from_ext4(disk.path, "/mine/x86/root.cow", offset=disk.partition(1).start)
    assert cow is not None and struct.unpack_from("<2I", cow) == (SNAP_MAGIC, 1)


def test_cow_device_by_tag_with_a_transient_store(lab: Lab, tmp_path: Path) -> None:
    media = lab.media("sample")
    part = make_ext4(None, tmp_path / "cow.part", size_mib=128, label="COWTAG")
    disk = make_disk(tmp_path / "tag.img", [Partition(size_mib=128, image=part, name="cowpart")])
    drives = [Drive(media.iso, kind="ide-cdrom"), Drive(disk.path, kind="virtio")]
    append = f"{BASE} cow_device=PARTLABEL=cowpart cow_persistent=N lab.check=write,status"
    output = lab.boot_and_pass("param-cow-tag", append, drives, verdict_timeout=240, power_off=True)
    (report,) = status_reports(output)
    (snapshot,) = report["snapshots"]
    assert re.fullmatch(r"0 \d+ snapshot \d+:\d+ \d+:\d+ N 8", snapshot["table"])
    mounts = {m["target"]: m for m in report["mounts"]}
    assert mounts["/run/archiso/cowspace"]["source"] == "/dev/vda1"  # what the tag named


def test_an_iso_file_on_a_disk_by_path_with_img_flags(lab: Lab, tmp_path: Path) -> None:
    media = lab.media("sample")
    tree = tmp_path / "store"
    (tree / "iso").mkdir(parents=True)
    (tree / "iso" / "live.iso").write_bytes(media.iso.read_bytes())
    size = media.iso.stat().st_size // (1 << 20) + 32
    part = make_ext4(tree, tmp_path / "store.part", size_mib=size, label="STORE")
    disk = make_disk(tmp_path / "store.img", [Partition(size_mib=size, image=part)])
    append = "img_dev=/dev/vda1 img_loop=/iso/live.iso img_flags=noatime lab.check=files,mounts"
    output = lab.boot_and_pass(
        "param-img-dev",
        append,
        [Drive(disk.path, kind="virtio")],
        verdict_timeout=240,
        power_off=True,
    )
    img_dev = mountinfo(output, "/run/archiso/img_dev")
    options = img_dev.split()[5].split(",")
    assert "ro" in options and "noatime" in options, img_dev


def test_copytoram_size_too_small_boots_from_the_medium(lab: Lab) -> None:
    media = lab.media("sample")
    append = f"{BASE} copytoram=y copytoram_size=1M lab.check=files,status"
    output = lab.boot_and_pass(
        "param-copy-size",
        append,
        [Drive(media.iso, kind="virtio")],
        verdict_timeout=240,
        power_off=True,
    )
    assert re.search(
        r"archiso-hook: warning: copytoram=y: not copying to RAM: the images need [0-9.]+ MiB, "
        r"more than copytoram_size= allows \(1\.0 MiB\)",
        output,
    ), output[-3000:]
    (report,) = status_reports(output)
    assert "/run/archiso/copytoram" not in {m["target"] for m in report["mounts"]}


@pytest.mark.parametrize("tag", ["LABEL", "PARTUUID", "PARTLABEL"])
def test_archisodevice_by_tag(lab: Lab, tmp_path: Path, tag: str) -> None:
    """The medium's files on an ext4 partition of a GPT disk, named by each tag."""
    media = lab.media("sample")
    part = make_ext4(media.tree, tmp_path / "medium.part", size_mib=160, label="LIVEDISK")
    disk = make_disk(tmp_path / "medium.img", [Partition(size_mib=160, image=part, name="live")])
    value = {"LABEL": "LIVEDISK", "PARTUUID": disk.partition(1).partuuid, "PARTLABEL": "live"}
    append = f"archisobasedir=arch archisodevice={tag}={value[tag]} lab.check=files,bootreport"
    output = lab.boot_and_pass(
        f"param-device-{tag.lower()}",
        append,
        [Drive(disk.path, kind="virtio")],
        verdict_timeout=240,
        power_off=True,
    )
    (block,) = re.findall(r"LAB-BOOTREPORT-BEGIN\r?\n(.*?)LAB-BOOTREPORT-END", output, re.S)
    report = json.loads(block)
    link = {"LABEL": "by-label/LIVEDISK", "PARTUUID": f"by-partuuid/{value['PARTUUID']}",
            "PARTLABEL": "by-partlabel/live"}[tag]  # fmt: skip
    assert report["parameters"]["archisodevice"] == f"/dev/disk/{link}"
    assert "archiso-hook: mounted /dev/vda1 (ext4) read-only at /run/archiso/bootmnt" in output


def test_quiet_keeps_the_console_to_warnings_and_errors(lab: Lab) -> None:
    media = lab.media("sample")
    append = f"{BASE} quiet copytoram=y copytoram_size=1M lab.check=files,bootreport"
    output = lab.boot_and_pass(
        "param-quiet",
        append,
        [Drive(media.iso, kind="ide-cdrom")],
        verdict_timeout=240,
        power_off=True,
    )
    hook = hook_lines(output)
    assert hook and all(line.startswith(("warning: ", "error: ")) for line in hook), hook
    assert any("not copying to RAM" in line for line in hook)  # a warning still shows
    assert "LAB-BOOTREPORT-BEGIN" in output  # the boot's report is there to read
