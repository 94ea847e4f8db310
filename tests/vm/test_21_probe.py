"""Disks the hook only looks into are never written: a filesystem whose journal still
holds changes (a hibernated or crashed system's disk) keeps them, byte for byte.

The journals here hold a real committed transaction not yet written in place (debugfs
`jo`/`jw`/`jc`), as a system stopped between commit and checkpoint leaves it; a
read-only mount on a writable device would replay it (and clear needs_recovery).
"""

from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.vm.conftest import Lab, status_reports
from vm import lab_dir
from vm.disks import MIB, Partition, ext4_needs_recovery, make_disk, make_ext4
from vm.media import Media
from vm.qemu import Drive

pytestmark = pytest.mark.vm

CHECKS = "lab.check=write,files,status"
MARKER = "5b1e0c7a-probe-me"


def dirty_ext4(tree: Path, out: Path, *, size_mib: int, label: str) -> Path:
    """An ext4 image of `tree` whose journal holds one committed, uncheckpointed
    transaction: a new content for the first block of /note.txt."""
    (tree / "note.txt").write_text("as checkpointed\n")
    make_ext4(tree, out, size_mib=size_mib, label=label)
    with out.open("rb") as fh:
        fh.seek(1024 + 0x18)
        block_size = 1024 << int.from_bytes(fh.read(4), "little")
    block = subprocess.run(
        ["debugfs", "-R", "bmap /note.txt 0", str(out)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    content = out.parent / f"{out.name}.block"
    content.write_bytes(b"only in the journal\n".ljust(block_size, b"\0"))
    subprocess.run(
        ["debugfs", "-w", "-f", "-", str(out)],
        input=f"jo\njw -b {block} {content}\njc\n",
        capture_output=True,
        text=True,
        check=True,
    )
    assert ext4_needs_recovery(out)
    return out


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def marked_media(lab: Lab) -> Media:
    def add_marker(basedir: Path) -> None:
        (basedir.parent / "boot").mkdir()
        (basedir.parent / "boot" / f"{MARKER}.uuid").write_text("")

    return lab.media("probe-search", edit=add_marker)


def test_the_search_looks_into_a_dirty_ext4_without_writing_it(lab: Lab) -> None:
    """archisosearchuuid= matches no UUID: the search mounts every disk to look for the
    marker file, the dirty system disk first (vda1), then the medium (vdb)."""
    work = lab_dir() / "probe-search-disk"
    shutil.rmtree(work, ignore_errors=True)
    (work / "tree").mkdir(parents=True)
    fs = dirty_ext4(work / "tree", work / "system.ext4", size_mib=32, label="SYSTEM")
    disk = make_disk(work / "system.img", [Partition(40, image=fs, name="system")])
    start = disk.partition(1).start
    assert ext4_needs_recovery(disk.path, start)
    before = sha256(disk.path)

    media = marked_media(lab)
    drives = [Drive(disk.path, kind="virtio"), Drive(media.iso, kind="virtio")]
    output = lab.boot_and_pass(
        "probe-search", f"archisosearchuuid={MARKER} {CHECKS}", drives, power_off=True
    )

    # The disk first: its journal is still to be replayed, and not one byte changed.
    assert ext4_needs_recovery(disk.path, start)
    assert sha256(disk.path) == before
    assert "EXT4-fs (vda1): recovery complete" not in output
    assert (
        "archiso-hook: /dev/vda1 (ext4) was not cleanly unmounted: looking into it "
        "without replaying its journal" in output
    ), output[-3000:]
    assert "not looking in /dev/vda1" not in output
    assert f"archiso-hook: /dev/vdb holds /boot/{MARKER}.uuid" in output
    (report,) = status_reports(output)
    medium = next(m for m in report["mounts"] if m["target"] == "/run/archiso/bootmnt")
    assert medium["source"] == "/dev/vdb"
    # The look happened (ext4 mounted it without its journal) and wrote nothing.
    assert re.search(r"EXT4-fs \(vda1\): mounted filesystem (\S+ )?without journal", output)


def test_an_iso_file_on_a_dirty_ext4_boots_and_the_journal_stays(lab: Lab) -> None:
    """img_dev= names a disk whose filesystem was not unmounted cleanly: the ISO file on
    it boots, and the journal is still there to be replayed by its own system."""
    media = lab.media("sample")
    work = lab_dir() / "probe-img-dev"
    shutil.rmtree(work, ignore_errors=True)
    (work / "tree" / "iso").mkdir(parents=True)
    shutil.copyfile(media.iso, work / "tree" / "iso" / "live.iso")
    size_mib = media.iso.stat().st_size // MIB + 24
    fs = dirty_ext4(work / "tree", work / "data.ext4", size_mib=size_mib, label="DATA")
    disk = make_disk(work / "data.img", [Partition(size_mib + 2, image=fs, name="data")])
    start = disk.partition(1).start
    before = sha256(disk.path)

    append = f"img_dev=/dev/vda1 img_loop=/iso/live.iso {CHECKS}"
    output = lab.boot_and_pass(
        "probe-img-dev", append, [Drive(disk.path, kind="virtio")], power_off=True
    )

    assert ext4_needs_recovery(disk.path, start)
    assert sha256(disk.path) == before
    assert "EXT4-fs (vda1): recovery complete" not in output
    assert (
        "archiso-hook: warning: /dev/vda1 (ext4) was not cleanly unmounted (a hibernated "
        "or crashed system)" in output
    ), output[-3000:]
    assert "mounted /dev/vda1 (ext4) read-only, without journal replay at /run/archiso/img_dev" in (
        output
    )
    (report,) = status_reports(output)
    assert report["loops"][0]["backing"] == "/run/archiso/img_dev/iso/live.iso"
