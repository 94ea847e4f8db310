"""copytoram= and checksum= in QEMU: the medium pulled out after boot, the memory rules,
and a corrupt image caught before anything is mounted from it."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.vm.conftest import Lab, fails_cleanly, hook_lines, power_off, status_reports
from vm.media import SAMPLE_LABEL
from vm.qemu import Drive

pytestmark = pytest.mark.vm

BASE = f"archisobasedir=arch archisolabel={SAMPLE_LABEL}"


def test_copytoram_and_checksum_then_the_stick_is_pulled_out(lab: Lab) -> None:
    media = lab.media("sample")
    append = f"{BASE} copytoram=y checksum=y lab.check=wait,files,write,status"
    stick = Drive(media.iso, kind="usb", name="stick")
    with lab.boot("copytoram-pull", append, [stick]) as guest:
        guest.expect("LAB: waiting", timeout=200)
        guest.monitor("device_del stick-dev")
        guest.expect(r"USB disconnect", timeout=60)
        guest.send("go")
        guest.expect(r"LAB: (PASS|FAIL)", timeout=200)
        output = guest.output
    assert "LAB: PASS" in output, output[-3000:]
    assert "archiso-hook: copytoram=y: copying" in output
    assert "checksums match" in output
    assert "archiso-hook: released the medium: it can be removed now" in output
    (report,) = status_reports(output)
    # psutil's view, from the frozen hook in the live system.
    assert 0 < report["memory"]["available_bytes"] < report["memory"]["total_bytes"]
    assert report["cowspace"]["path"] == "/run/archiso/cowspace"
    # The sample's COW holds all its origin can change: nothing to watch, and status says
    # why (tests/vm/test_60_watch.py sees a running watchdog through psutil; the text form
    # is tests/unit/test_status.py's).
    assert not report["watch"]["running"]
    assert report["watch"]["not_needed"].startswith("the COW of each snapshot (1) holds all")
    targets = [m["target"] for m in report["mounts"]]
    assert "/run/archiso/bootmnt" not in targets and "/run/archiso/copytoram" in targets
    assert all(
        lo["backing"].startswith("/run/archiso/copytoram/")
        for lo in report["loops"]
        if not lo["backing"].startswith("/run/archiso/cowspace/")
        and not lo["backing"].startswith("/run/archiso/sfs/")
    )
    assert all(lo["present"] for lo in report["loops"])


def test_auto_does_not_copy_from_an_optical_drive(lab: Lab) -> None:
    media = lab.media("sample")
    output = lab.boot_and_pass(
        "copytoram-auto-cdrom",
        f"{BASE} lab.check=status",
        [Drive(media.iso, kind="ide-cdrom")],
        memory_mib=3072,
    )
    assert (
        "archiso-hook: copytoram=auto: not copying to RAM: the medium is on an optical "
        "drive (/dev/sr0); booting from the medium"
    ) in output


def test_auto_copies_from_a_disk_when_memory_is_plentiful(lab: Lab) -> None:
    media = lab.media("sample")
    output = lab.boot_and_pass(
        "copytoram-auto-disk",
        f"{BASE} lab.check=files,status",
        [Drive(media.iso, kind="virtio")],
        memory_mib=3072,
    )
    assert "archiso-hook: copytoram=auto: copying" in output
    assert "released the medium" in output


def test_too_little_memory_boots_from_the_medium_with_the_numbers(lab: Lab) -> None:
    media = lab.media("sample")
    output = lab.boot_and_pass(
        "copytoram-low-memory",
        f"{BASE} copytoram=y lab.check=files",
        [Drive(media.iso, kind="ide-cdrom")],
        memory_mib=256,
    )
    assert ("archiso-hook: warning: copytoram=y: not copying to RAM: the images need") in output
    assert "MiB must stay free for the system); booting from the medium" in output


def test_a_corrupt_image_fails_the_checksum_and_nothing_is_mounted(lab: Lab) -> None:
    def corrupt(basedir: Path) -> None:
        share = basedir / "any" / "share.sfs"
        data = bytearray(share.read_bytes())
        data[len(data) // 2] ^= 0xFF  # one bit pattern in the middle: still a squashfs
        share.write_bytes(bytes(data))

    media = lab.media("corrupt-checksum", edit=corrupt)
    with lab.boot(
        "checksum-corrupt", f"{BASE} checksum=y copytoram=y", [Drive(media.iso, kind="virtio")]
    ) as guest:
        match = guest.expect(
            r"/run/archiso/bootmnt/arch/any/share.sfs is corrupt: its sha512 is ([0-9a-f]{128}), "
            r"but /run/archiso/bootmnt/arch/any/share.sfs.sha512 says ([0-9a-f]{128})",
            timeout=200,
        )
        assert match.group(1) != match.group(2)
        fails_cleanly(guest, r"hint: the download or the copy of the medium is damaged")
        power_off(guest)
    assert not any("mounted /dev/loop" in line for line in hook_lines(guest.output))


def test_a_medium_with_archisos_2011_checksums(lab: Lab) -> None:
    """checksum.x86_64.md5 at the top of the base directory, as archiso's media of
    2011-2014: the aitab and every image are checked against it before use."""
    media = lab.media("sums-2011", checksum_layout="archiso-2011")
    append = f"{BASE} checksum=y lab.check=files"
    with lab.boot("checksum-2011", append, [Drive(media.iso, kind="ide-cdrom")]) as guest:
        guest.expect(
            "archiso-hook: /run/archiso/bootmnt/arch/aitab: md5 checksum verified against "
            "/run/archiso/bootmnt/arch/checksum.x86_64.md5",
            timeout=200,
        )
        guest.expect(r"verifying: \d+ image\(s\), .*; checksums match", timeout=200)
        guest.expect("LAB: PASS", timeout=200)
