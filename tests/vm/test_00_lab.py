"""The QEMU lab proves itself, without the archiso hook.

An initramfs with HOOKS `base udev` plus a lab-only hook (tests/lab_hooks.py) whose mount
handler mounts an ext4 live root (built with `make_liveroot()` and `mkfs.ext4 -d`) found
at /dev/disk/by-label/<label> (so udev must work), then switch_root into it; the live
root's init must print `LAB: PASS`. A failing mount handler must end in the emergency
shell, which must answer typed commands. A second lab-only hook mounts the live root from
a partition of a disk made by `vm.disks.make_disk()`, found through udev's by-partlabel
or by-partuuid link: a token written at one boot is read on the host from the powered-off
disk and by the next boot; a USB stick with a FAT partition is seen by udev.

The lab's tools without a guest (vmlinux extraction, the install API, mkinitramfs, the
runtime functions, the live root tree, the QEMU command line): tests/unit/test_lab_tools.py.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.lab_hooks import PERSIST_TOKEN, ROOT_LABEL, write_lab_hooks
from vm.disks import (
    ESP,
    MS_BASIC_DATA,
    Partition,
    ext4_needs_recovery,
    extract_partition,
    list_dir_from_ext4,
    make_disk,
    make_vfat,
    read_file_from_ext4,
)
from vm.disks import make_ext4 as make_ext4_image
from vm.initramfs import build_initramfs
from vm.kernel import Kernel, fetch_kernel
from vm.liveroot import make_ext4, make_liveroot, write_manifest
from vm.qemu import Drive, Guest, GuestError

# launch_interactive_shell's PS1 '[rootfs \W]\$ ': busybox shows \W of / as "".
PROMPT = r"\[rootfs [^\]\n]*\]# "


# --- fixtures ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def kernel() -> Kernel:
    return fetch_kernel()


@pytest.fixture(scope="module")
def lab_hookdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_lab_hooks(tmp_path_factory.mktemp("labhooks"))


@pytest.fixture(scope="module")
def root_image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("liveroot")
    tree = make_liveroot(work / "root", extra_files={"/etc/lab-marker": b"lab marker\n"})
    write_manifest(tree)
    return make_ext4(tree, work / "root.ext4", label=ROOT_LABEL)


@pytest.fixture(scope="module")
def labroot_initrd(
    kernel: Kernel, lab_hookdir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    out = tmp_path_factory.mktemp("initrd") / "labroot.img"
    started = time.monotonic()
    build_initramfs(kernel, ["base", "udev", "labroot"], out, hook_dirs=[lab_hookdir])
    print(f"initramfs base+udev+labroot: {time.monotonic() - started:.2f} s", file=sys.stderr)
    return out


@pytest.fixture(scope="module")
def labfail_initrd(
    kernel: Kernel, lab_hookdir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    out = tmp_path_factory.mktemp("initrd") / "labfail.img"
    return build_initramfs(kernel, ["base", "udev", "labfail"], out, hook_dirs=[lab_hookdir])


@pytest.fixture(scope="module")
def labdisk_initrd(
    kernel: Kernel, lab_hookdir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    out = tmp_path_factory.mktemp("initrd") / "labdisk.img"
    return build_initramfs(kernel, ["base", "udev", "labdisk"], out, hook_dirs=[lab_hookdir])


@pytest.fixture(scope="module")
def partition_root_image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The live root as a 32 MiB ext4 image, for `make_disk()` to copy into partitions."""
    work = tmp_path_factory.mktemp("partroot")
    tree = make_liveroot(work / "root")
    return make_ext4_image(
        tree,
        work / "root.ext4",
        size_mib=32,
        label="labpart",
        uuid="4c3a1d0e-9b7f-4e35-a1c2-6d5e4f3a2b10",
    )


def _boot_to_poweroff(
    name: str,
    *,
    kernel: Kernel,
    initrd: Path,
    drives: list[Drive],
    append: str,
    root: str,
) -> str:
    """Boot until the live root powers off after `LAB: PASS` and a clean remount of its
    root; `root` is the lab.root= device the labdisk hook must have mounted. Returns
    the console output."""
    started = time.monotonic()
    with Guest(
        name, kernel=kernel, initrd=initrd, drives=drives, append=append, timeout=300
    ) as guest:
        guest.expect(rf"^LAB-INITRAMFS: mounted {re.escape(root)} on /new_root$", 180)
        verdict = guest.expect(r"^LAB: (PASS|FAIL)([^\n]*)\n", 120)
        assert verdict[1] == "PASS", f"the live root reported {verdict[0]!r}:\n{guest.tail()}"
        guest.expect(r"^LAB: root remounted read-only$", 60)
        assert guest.wait(60) == 0
    print(f"{name}: {time.monotonic() - started:.1f} s wall", file=sys.stderr)
    assert "LAB: cannot remount" not in guest.output, guest.tail()
    return guest.output


def _root_mount(output: str) -> list[str]:
    """The mountinfo fields of / after the separator: fstype, source, super options."""
    mountinfo = [line.split() for line in _results(output, "mounts")]
    (root,) = [m for m in mountinfo if m[4] == "/"]
    assert root[5].split(",")[0] == "rw"
    return root[root.index("-") + 1 :]


def _results(output: str, check: str) -> list[str]:
    return re.findall(rf"^LAB-RESULT {re.escape(check)} (.*)$", output, re.MULTILINE)


def _fields(result: str) -> dict[str, str]:
    return dict(item.split("=", 1) for item in result.split() if "=" in item)


# --- boot tests -------------------------------------------------------------------------


@pytest.mark.vm
def test_boot_switch_root_into_ext4_liveroot(
    kernel: Kernel, labroot_initrd: Path, root_image: Path
) -> None:
    started = time.monotonic()
    with Guest(
        "test_lab-switch_root",
        kernel=kernel,
        initrd=labroot_initrd,
        drives=[Drive(root_image, "virtio", serial="labroot")],
        append=f"lab.root.label={ROOT_LABEL} lab.check=write,mounts,files",
        timeout=300,
    ) as guest:
        guest.expect(r"^:: running early hook \[udev\]$", 120)
        guest.expect(r"^:: running hook \[labroot\]$", 120)
        mounted = guest.expect(
            rf"^LAB-INITRAMFS: mounted /dev/disk/by-label/{ROOT_LABEL} on /new_root "
            r"uptime=([0-9.]+)$",
            120,
        )
        # cleanup hooks run in reverse order: labroot's, then udev's
        switched = guest.expect(r"^LAB-INITRAMFS: switch_root uptime=([0-9.]+)$", 30)
        guest.expect(r"^:: running cleanup hook \[udev\]$", 30)
        up = guest.expect(r"^LAB: live root up uptime=([0-9.]+)$", 60)
        verdict = guest.expect(r"^LAB: (PASS|FAIL)([^\n]*)\n", 180)
        assert verdict[1] == "PASS", f"the live root reported {verdict[0]!r}:\n{guest.tail()}"
        assert guest.wait(60) == 0
    wall = time.monotonic() - started
    print(
        f"boot: mounted at {mounted[1]} s, switch_root at {switched[1]} s, live root at "
        f"{up[1]} s guest uptime; {wall:.1f} s wall",
        file=sys.stderr,
    )

    out = guest.output
    assert not re.search(r"^LAB-CHECK \S+ FAIL", out, re.MULTILINE), guest.tail()
    for check in ("write", "mounts", "files"):
        assert re.search(rf"^LAB-CHECK {check} ok$", out, re.MULTILINE), guest.tail()
    # util-linux switch_root moved the initramfs's API mounts into the new root.
    (init,) = _results(out, "init")
    fields = _fields(init)
    assert fields["pid"] == "1"
    assert set(fields["premounted"].split(",")) == {"/proc", "/sys", "/dev", "/run"}
    # The root is the ext4 virtio disk, mounted read-write.
    mountinfo = [line.split() for line in _results(out, "mounts")]
    (root,) = [m for m in mountinfo if m[4] == "/"]
    sep = root.index("-")
    assert root[sep + 1 : sep + 3] == ["ext4", f"/dev/disk/by-label/{ROOT_LABEL}"]
    assert root[5].split(",")[0] == "rw"
    assert "/run/initramfs" not in {m[4] for m in mountinfo}  # a directory, not a mount
    files = _fields(_results(out, "files")[0])
    assert files["failed"] == "0" and int(files["files"]) >= 3


@pytest.mark.vm
def test_failing_mount_handler_gives_emergency_shell(kernel: Kernel, labfail_initrd: Path) -> None:
    with Guest(
        "test_lab-emergency-shell",
        kernel=kernel,
        initrd=labfail_initrd,
        append="break=premount",
        timeout=240,
    ) as guest:
        # break=premount: emergency hooks, then a shell; `exit` resumes the boot
        guest.expect(r"^LAB-EMERGENCY: emergency hook ran$", 150)
        guest.expect(r"^:: Pre-mount break requested, type 'exit' to resume operation$", 30)
        guest.expect(PROMPT, 60)
        guest.send("exit")
        guest.expect(r"^ERROR: lab: simulated mount failure$", 60)
        guest.expect(r"^LAB-EMERGENCY: emergency hook ran$", 30)
        guest.expect(r"^ERROR: Failed to mount the real root device\.$", 30)
        guest.expect(r"^Bailing out, you are on your own\. Good luck\.$", 30)
        guest.expect(PROMPT, 60)
        guest.send("echo hello-$((6*7))")
        guest.expect(r"^hello-42$", 30)
        guest.expect(PROMPT, 30)
        guest.send("echo pid=$$")  # launch_interactive_shell --exec: the shell is PID 1
        guest.expect(r"^pid=1$", 30)
        guest.expect(PROMPT, 30)
        guest.send("poweroff -f")
        assert guest.wait(60) == 0
    assert "LAB: live root up" not in guest.output


@pytest.mark.vm
def test_failing_check_reports_fail(kernel: Kernel, labroot_initrd: Path, root_image: Path) -> None:
    with Guest(
        "test_lab-check-fails",
        kernel=kernel,
        initrd=labroot_initrd,
        drives=[Drive(root_image, "virtio")],
        append="lab.check=mounts,no-such-check",
        timeout=300,
    ) as guest:
        guest.expect(r"^LAB-CHECK mounts ok$", 240)
        guest.expect(r"^LAB-CHECK no-such-check FAIL unknown check$", 60)
        guest.expect(r"^LAB: FAIL failed=no-such-check$", 30)
        assert guest.wait(60) == 0
    assert not re.search(r"^LAB: PASS", guest.output, re.MULTILINE)


@pytest.mark.vm
def test_status_check_runs_a_frozen_tree(
    kernel: Kernel, labroot_initrd: Path, tmp_path: Path
) -> None:
    """`make_liveroot(hook_tree=...)` makes a PyInstaller onedir tree run in the busybox
    root (glibc copied in); `lab.check=status` prints its JSON between the markers."""
    script = tmp_path / "fake_hook.py"
    script.write_text(
        "import json, sys\n"
        'print(json.dumps({"argv": sys.argv[1:], "frozen": bool(getattr(sys, "frozen", 0))}))\n'
    )
    pyinstaller = Path(sys.executable).parent / "pyinstaller"
    if not pyinstaller.exists():
        pytest.skip("pyinstaller is not installed in the venv")
    subprocess.run(
        [
            str(pyinstaller),
            "--onedir",
            "--name",
            "archiso-hook",
            "--distpath",
            str(tmp_path / "dist"),
            "--workpath",
            str(tmp_path / "work"),
            "--specpath",
            str(tmp_path),
            "--noconfirm",
            "--log-level",
            "WARN",
            str(script),
        ],
        check=True,
        capture_output=True,
    )
    tree = make_liveroot(tmp_path / "root", hook_tree=tmp_path / "dist" / "archiso-hook")
    image = make_ext4(tree, tmp_path / "root.ext4", label=ROOT_LABEL)
    with Guest(
        "test_lab-status",
        kernel=kernel,
        initrd=labroot_initrd,
        drives=[Drive(image, "virtio")],
        append="lab.check=status",
        timeout=300,
    ) as guest:
        status = guest.expect(r"^LAB-STATUS-BEGIN\n(.*?)\nLAB-STATUS-END$", 240)
        guest.expect(r"^LAB: PASS$", 30)
        assert guest.wait(60) == 0
    assert status[1] == '{"argv": ["status", "--json"], "frozen": true}'


@pytest.mark.vm
def test_guest_monitor_and_timeouts(kernel: Kernel, labroot_initrd: Path, root_image: Path) -> None:
    with Guest(
        "test_lab-monitor",
        kernel=kernel,
        initrd=labroot_initrd,
        drives=[Drive(root_image, "virtio", readonly=True, name="root")],
        # Held in the pre-mount shell: on an idle machine the whole boot takes less
        # than the 12 s the hard timeout needs.
        append="break=premount",
        timeout=12,
    ) as guest:
        info = guest.monitor("info block")
        assert re.search(r"^root\b.*root\.ext4 \(raw, read-only\)", info, re.MULTILINE), info
        with pytest.raises(GuestError, match=r"(?s)timed out after 1 s.*serial log:"):
            guest.expect("this never appears", timeout=1)
        with pytest.raises(GuestError, match=r"hard timeout \(12 s\)"):
            guest.expect("this never appears either", timeout=60)
    assert "# qemu-system-x86_64 -accel tcg" in guest.log_path.read_text(errors="replace")


@pytest.mark.vm
def test_persistence_across_boots_on_a_gpt_partition(
    kernel: Kernel, labdisk_initrd: Path, partition_root_image: Path, tmp_path: Path
) -> None:
    """Boot 1 writes lab.token= into the root found by PARTLABEL and powers off cleanly;
    the host reads it from the disk image; boot 2, by PARTUUID, reads it back."""
    esp = make_vfat(None, tmp_path / "esp.fat", size_mib=8, label="LABESP")
    layout = make_disk(
        tmp_path / "persist.img",
        [
            Partition(8, image=esp, name="lab-esp", type=ESP),
            Partition(40, image=partition_root_image, name="labpersist"),
        ],
    )
    root = layout.partition("labpersist")
    assert read_file_from_ext4(layout.path, "/root/lab-persist.txt", root.start) is None

    out = _boot_to_poweroff(
        "test_lab-persist-write",
        kernel=kernel,
        initrd=labdisk_initrd,
        drives=[Drive(layout.path, "virtio")],
        append=f"lab.root={root.partlabel_link} lab.check=persist-write,mounts "
        f"lab.token={PERSIST_TOKEN}",
        root=root.partlabel_link,
    )
    assert f"\nLAB-RESULT persist-write token={PERSIST_TOKEN}\n" in out
    assert "\nLAB-CHECK persist-write ok\n" in out
    assert _root_mount(out)[:2] == ["ext4", root.partlabel_link]

    # The remount read-only left nothing in the journal: debugfs reads the final state.
    assert not ext4_needs_recovery(layout.path, root.start)
    data = read_file_from_ext4(layout.path, "/root/lab-persist.txt", root.start)
    assert data == f"{PERSIST_TOKEN}\n".encode()
    entries = {e.name: e for e in list_dir_from_ext4(layout.path, "/root", root.start) or []}
    assert entries["lab-persist.txt"].is_file and entries["lab-persist.txt"].mode & 0o777 == 0o644
    part = extract_partition(layout, "labpersist", tmp_path / "root-after.img")
    fsck = subprocess.run(["e2fsck", "-fn", str(part)], capture_output=True, text=True, check=False)
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr

    out = _boot_to_poweroff(
        "test_lab-persist-read",
        kernel=kernel,
        initrd=labdisk_initrd,
        drives=[Drive(layout.path, "virtio")],
        append=f"lab.root={root.partuuid_link} lab.check=persist-read,mounts",
        root=root.partuuid_link,
    )
    assert f"\nLAB-RESULT persist-read present=yes content={PERSIST_TOKEN}\n" in out
    assert "\nLAB-CHECK persist-read ok\n" in out
    assert _root_mount(out)[:2] == ["ext4", root.partuuid_link]


@pytest.mark.vm
def test_usb_stick_with_a_vfat_partition(
    kernel: Kernel, labdisk_initrd: Path, partition_root_image: Path, tmp_path: Path
) -> None:
    """A usb-storage stick with an MBR table: udev names its FAT partition by label and
    its ext4 partition by PARTUUID (<disk id>-02); the hook mounts both."""
    files = tmp_path / "stick"
    files.mkdir()
    (files / "hello.txt").write_text("hello from the stick\n")
    fat = make_vfat(
        files, tmp_path / "stick.fat", size_mib=16, label="LABUSB", volume_id="2026-0001"
    )
    layout = make_disk(
        tmp_path / "stick.img",
        [Partition(16, image=fat, type=MS_BASIC_DATA), Partition(40, image=partition_root_image)],
        table="dos",
    )
    root = layout.partition(2)
    show = "/dev/disk/by-label/LABUSB"
    out = _boot_to_poweroff(
        "test_lab-usb-vfat",
        kernel=kernel,
        initrd=labdisk_initrd,
        drives=[Drive(layout.path, "usb", serial="LABSTICK")],
        append=f"lab.show={show} lab.root={root.partuuid_link} lab.check=mounts",
        root=root.partuuid_link,
    )
    found = re.search(rf"^LAB-INITRAMFS: found {show} -> (\S+) (.*)$", out, re.MULTILINE)
    assert found, out
    assert found[1] == "/dev/sda1"
    props = _fields(found[2])
    assert props["ID_BUS"] == "usb"
    assert (props["ID_FS_TYPE"], props["ID_FS_LABEL"], props["ID_FS_UUID"]) == (
        "vfat",
        "LABUSB",
        "2026-0001",
    )
    assert props["ID_PART_ENTRY_UUID"] == layout.partition(1).partuuid
    assert f"\nLAB-INITRAMFS: {show} file hello.txt: hello from the stick\n" in out
    assert _root_mount(out)[:2] == ["ext4", root.partuuid_link]


@pytest.mark.vm
def test_guest_reports_early_qemu_exit(tmp_path: Path) -> None:
    not_a_kernel = tmp_path / "not-a-kernel"
    not_a_kernel.write_bytes(b"\0" * 4096)
    with (
        Guest("test_lab-bad-kernel", kernel=not_a_kernel, initrd=not_a_kernel, timeout=60) as guest,
        pytest.raises(GuestError, match=r"(?s)QEMU exited \(status 1\).*QEMU stderr"),
    ):
        guest.expect("never", timeout=30)
