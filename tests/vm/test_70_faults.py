"""Every failure is clear, undone and recoverable: fault scenarios in QEMU.

Each scenario checks the message, that the emergency shell opens, and from that
shell that no mount, loop device or dm device is left behind. The recovery tests
fix the cause from the shell and see the boot continue to the live root.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.vm.conftest import Lab, fails_cleanly, power_off, status_reports
from vm.media import SAMPLE_LABEL, build_media
from vm.qemu import Drive

pytestmark = pytest.mark.vm

BASE = f"archisobasedir=arch archisolabel={SAMPLE_LABEL}"
ROOT_SFS = "/run/archiso/bootmnt/arch/x86_64/root.fs.sfs"


def scenario(
    lab: Lab,
    name: str,
    append: str,
    *messages: str,
    edit: Callable[[Path], None] | None = None,
    initrd: Path | None = None,
) -> None:
    media = lab.media(name, edit=edit) if edit else lab.media("sample")
    with lab.boot(
        f"fault-{name}", append, [Drive(media.iso, kind="ide-cdrom")], initrd=initrd
    ) as guest:
        fails_cleanly(guest, *messages)
        power_off(guest)


def rewrite_root_image(basedir: Path, change: Callable[[Path], None]) -> None:
    """Unpack root.fs.sfs, change root.fs, pack it again (a good squashfs, a bad image)."""
    sfs = basedir / "x86_64" / "root.fs.sfs"
    work = basedir.parent.parent / "unpacked"
    subprocess.run(["unsquashfs", "-q", "-n", "-d", str(work), str(sfs)], check=True)
    change(work / "root.fs")
    sfs.unlink()
    subprocess.run(["mksquashfs", str(work), str(sfs), "-quiet", "-comp", "zstd"], check=True)


def test_no_medium_at_all_then_the_disc_is_inserted(lab: Lab) -> None:
    """Recovery: insert the medium through QEMU's monitor, type exit, the boot continues."""
    media = lab.media("sample")
    empty_drive = [
        "-drive",
        "if=none,id=cd0,media=cdrom,readonly=on",
        "-device",
        "ide-cd,drive=cd0,bus=ide.0,unit=0",
    ]
    with lab.boot(
        "fault-no-medium", f"{BASE} rootdelay=3 lab.check=files", [], extra_args=empty_drive
    ) as guest:
        fails_cleanly(
            guest,
            rf"the boot medium /dev/disk/by-label/{SAMPLE_LABEL} did not appear within 3 s; "
            r"block devices seen: sr0 \(no medium\)",
        )
        guest.monitor(f"change cd0 {media.iso}")
        guest.send("exit")
        guest.expect("LAB: PASS", timeout=200)


def test_wrong_basedir_then_corrected_from_the_shell(lab: Lab) -> None:
    """The aitab is missing; `archiso-hook mount /new_root archisobasedir=arch`, then exit."""
    media = lab.media("sample")
    append = f"archisobasedir=live archisolabel={SAMPLE_LABEL} lab.check=files"
    with lab.boot("fault-no-aitab", append, [Drive(media.iso, kind="ide-cdrom")]) as guest:
        fails_cleanly(
            guest,
            "cannot read /run/archiso/bootmnt/live/aitab: No such file or directory",
            "hint: is archisobasedir=live right for this medium",
        )
        guest.send("archiso-hook mount /new_root archisobasedir=arch")
        guest.expect("live root ready at /new_root", timeout=120)
        guest.send("exit")
        guest.expect("the live root is already mounted at /new_root", timeout=60)
        guest.expect("LAB: PASS", timeout=120)


def test_corrupt_squashfs(lab: Lab) -> None:
    def corrupt(basedir: Path) -> None:
        sfs = basedir / "x86_64" / "root.fs.sfs"
        data = bytearray(sfs.read_bytes())
        data[512:8192] = b"\xa5" * (8192 - 512)  # the first compressed blocks of root.fs
        sfs.write_bytes(bytes(data))

    scenario(
        lab,
        "corrupt-sfs",
        BASE,
        r"cannot read /run/archiso/sfs/root/root.fs \(aitab line 2\): Input/output error: "
        r"the image or the medium is damaged",
        r"the kernel said: .*SQUASHFS error",
        edit=corrupt,
    )


def test_truncated_fs_inside_a_good_squashfs(lab: Lab) -> None:
    def cut_in_half(fs: Path) -> None:
        subprocess.run(["truncate", "-s", "32M", str(fs)], check=True)

    def truncate(basedir: Path) -> None:
        rewrite_root_image(basedir, cut_in_half)

    scenario(
        lab,
        "truncated-fs",
        BASE,
        r"/run/archiso/sfs/root/root.fs \(aitab line 2\) is truncated: the ext4 in it is "
        r"64.0 MiB but the file has 32.0 MiB",
        r"hint: the image was cut short",
        edit=truncate,
    )


def test_dm_snapshot_missing_from_the_initramfs(lab: Lab) -> None:
    scenario(
        lab,
        "no-dm-snapshot",
        BASE,
        r"kernel module 'dm_snapshot' is not in the initramfs",
        initrd=lab.initramfs_without("dm-snapshot"),
    )


def test_loop_missing_from_the_initramfs(lab: Lab) -> None:
    """Debian's 6.1 kernel adds loop devices beyond max_loop= on LOOP_CTL_GET_FREE, so
    running out of them cannot be provoked there; without the loop module the hook is
    short of loop devices altogether, which is the nearest real fault."""
    scenario(
        lab,
        "no-loop",
        BASE,
        r"kernel module 'loop' is not in the initramfs",
        initrd=lab.initramfs_without("loop"),
    )


def test_cowspace_too_small(lab: Lab) -> None:
    scenario(
        lab,
        "cowspace-small",
        f"{BASE} cow_spacesize=512k",
        r"the cowspace \(512K\) is too small for 1 snapshot\(s\): each needs at least 1M; "
        r"raise cow_spacesize=",
    )


def test_bad_value_on_the_command_line(lab: Lab) -> None:
    scenario(
        lab,
        "bad-parameter",
        f"{BASE} cow_persistent=X",
        r"cow_persistent=X is not valid: expected N \(transient\), P \(persistent\) or PO",
    )


def test_a_symlink_in_an_image_cannot_move_a_mount_out_of_the_new_root(
    lab: Lab, tmp_path: Path
) -> None:
    """The root image has /data -> /tmp/outside (absolute). Resolved in the initramfs it
    would put the mount in the initramfs's /tmp; it must land in the new root's."""
    src = tmp_path / "src"
    shutil.copytree(lab.src, src, symlinks=True)
    (src / "x86_64" / "root" / "data").symlink_to("/tmp/outside")
    aitab = "root / x86_64 zstd ext4 64\nshare /data any zstd none 0\n"
    media = build_media("symlink-escape", src, aitab=aitab)
    output = lab.boot_and_pass(
        "symlink-escape", f"{BASE} lab.check=status", [Drive(media.iso, kind="ide-cdrom")]
    )
    assert "archiso-hook: /data resolves to /new_root/tmp/outside in the new root" in output
    (report,) = status_reports(output)
    share = next(
        m
        for m in report["mounts"]
        if m["fstype"] == "squashfs" and m["source"] != report["loops"][0]["device"]
    )
    assert share["target"] == "/new_root/tmp/outside"
    assert share["mounted_at"] == share["live_path"] == "/tmp/outside"
