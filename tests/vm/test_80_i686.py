"""i686 as well as x86_64: one dual-arch ISO, booted on both, under QEMU.

The i686 initramfs is built the way archiso builds i686 images, in an i386 root
(`make stage` makes it, `tools/i386-root`), around Debian's `linux-image-686`, and boots
on qemu-system-i386. Each test passes only on the guest's own lines: `LAB: PASS`, the
ELF class of the live root's programs, and the images `archiso-hook status` reports.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.vm.conftest import Lab, status_reports
from vm.initramfs import InitramfsError, build_initramfs
from vm.kernel import fetch_kernel
from vm.lab import archiso_initramfs_i686
from vm.media import DUAL_AITAB, I386_ROOT, SAMPLE_LABEL, STAGE, Media, make_dual_sources
from vm.qemu import Drive

pytestmark = pytest.mark.vm

BASE = f"archisobasedir=arch archisolabel={SAMPLE_LABEL}"
CHECKS = "lab.check=arch,status,write,files"
TREE_I686 = STAGE / "usr/lib/archiso-hook-i686"
MEDIUM = "/run/archiso/bootmnt/arch"


@pytest.fixture(scope="session")
def lab_i686(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    """Debian's 686 kernel, an initramfs built in the i386 root, the dual-arch sources."""
    for needed in (TREE_I686 / "archiso-hook", I386_ROOT / ".complete"):
        if not needed.exists():
            pytest.fail(f"{needed} is missing: run `make stage` (make test does it first)")
    kernel = fetch_kernel("i686")
    initrd = archiso_initramfs_i686(kernel)
    src = make_dual_sources(
        tmp_path_factory.mktemp("dual-sources"),
        hook_tree=STAGE / "usr/lib/archiso-hook",
        hook_tree_i686=TREE_I686,
        sysroot_i686=I386_ROOT,
    )
    yield Lab(kernel, initrd, src)


@pytest.fixture(scope="session")
def dual(lab_i686: Lab) -> Media:
    return lab_i686.media("dual", aitab=DUAL_AITAB)


def _whole_report(output: str) -> dict[str, Any]:
    """The live root's one status report, of a setup complete and all there."""
    (report,) = status_reports(output)
    assert report["complete"] and all(m["present"] for m in report["mounts"]), report
    return report


def _arch_line(output: str) -> str:
    match = re.search(r"^LAB-RESULT arch (.*?)\r?$", output, re.M)
    assert match, output[-3000:]
    return match.group(1)


def _images(report: dict[str, Any]) -> set[str]:
    """The image files on the medium that the boot attached (loop backing files)."""
    return {
        lo["backing"].removeprefix(MEDIUM + "/")
        for lo in report["loops"]
        if lo["backing"].startswith(MEDIUM + "/")
    }


def test_dual_iso_on_an_i686_kernel_mounts_the_i686_root_and_the_shared_image(
    lab_i686: Lab, dual: Media
) -> None:
    append = f"{BASE} {CHECKS} rd.debug"
    drives = [Drive(dual.iso, kind="ide-cdrom")]
    output = lab_i686.boot_and_pass("dual-i686", append, drives, verdict_timeout=220)
    report = _whole_report(output)
    assert _images(report) == {"i686/root.fs.sfs", "any/share.sfs"}
    assert _arch_line(output) == "machine=i686 busybox=32 hook=32"
    assert_attrs_methods_precompiled(output)
    assert "archiso-hook: live root ready at /new_root" in output
    cow = {f["path"] for f in report["cow_files"]}
    assert cow == {f"/run/archiso/cowspace/persistent_{SAMPLE_LABEL}/i686/root.cow"}, cow


def test_dual_iso_on_an_x86_64_kernel_mounts_the_x86_64_root_and_the_shared_image(
    lab: Lab, dual: Media
) -> None:
    append = f"{BASE} {CHECKS} rd.debug"
    output = lab.boot_and_pass("dual-x86_64", append, [Drive(dual.iso, kind="ide-cdrom")])
    report = _whole_report(output)
    assert _images(report) == {"x86_64/root.fs.sfs", "any/share.sfs"}
    assert _arch_line(output) == "machine=x86_64 busybox=64 hook=64"
    assert_attrs_methods_precompiled(output)


def assert_attrs_methods_precompiled(output: str) -> None:
    """Each tree's table, made by its own interpreter, answered every class the boot
    defined (archiso_hook/boot/precompiled.py); rd.debug prints the count."""
    found = re.findall(r"methods attrs generated so far: (\d+) precompiled, (\d+) compiled", output)
    assert found, output[-3000:]
    (precompiled, compiled), *_ = found
    assert int(precompiled) > 20 and compiled == "0", found


def test_arch_i686_on_an_x86_64_kernel_runs_the_i686_live_root(lab: Lab, dual: Media) -> None:
    """The 64-bit hook mounts the i686 images; the 32-bit live root then runs on the
    64-bit kernel, its own archiso-hook reading loop and dm state through compat ioctls."""
    append = f"{BASE} arch=i686 {CHECKS}"
    output = lab.boot_and_pass("dual-arch-i686", append, [Drive(dual.iso, kind="ide-cdrom")])
    report = _whole_report(output)
    assert _images(report) == {"i686/root.fs.sfs", "any/share.sfs"}
    assert _arch_line(output) == "machine=x86_64 busybox=32 hook=32"
    (snapshot,) = report["snapshots"]
    assert snapshot["state"] == "Active" and snapshot["allocated_sectors"] > 0, snapshot


def test_install_hook_refuses_a_tree_built_for_another_architecture(
    lab: Lab, tmp_path: Path
) -> None:
    """Only the i686 tree installed, an x86_64 kernel: a counted build error, clearly."""
    sysroot = tmp_path / "sysroot"
    shutil.copytree(TREE_I686, sysroot / "usr/lib/archiso-hook", symlinks=True)
    with pytest.raises(InitramfsError) as failure:
        build_initramfs(
            lab.kernel,
            ["base", "udev", "archiso"],
            tmp_path / "initramfs.img",
            hook_dirs=[STAGE / "usr/lib/initcpio"],
            env={"ARCHISO_HOOK_SYSROOT": str(sysroot)},
        )
    message = str(failure.value)
    assert (
        "ERROR: no archiso-hook for this kernel's architecture (x86_64) is installed: "
        "found /usr/lib/archiso-hook (i686)"
    ) in message
    assert "errors were encountered during the build (1)" in message
