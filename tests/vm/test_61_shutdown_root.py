"""What the initramfs leaves in RAM after switch_root, in QEMU: the copy at /run/initramfs
that the shutdown runs from, and the watchdog.

The image is built with udev's hardware database (13 MB), as Arch's mkinitcpio (v41)
adds it: the copy must not take it along, nor udev, kmod or the kernel modules. Sizes,
not times: they are the same at every boot of the same build.
"""

from __future__ import annotations

import re

import pytest

from tests.vm.conftest import Lab, hook_lines
from vm.lab import archiso_initramfs
from vm.media import SAMPLE_LABEL
from vm.qemu import Drive

pytestmark = pytest.mark.vm

MiB = 1024  # KiB

# The copy: the frozen tree (about 13 MiB: libpython 7.4, the executable with its deflated
# module archive 2.8, base_library.zip 1.2), the C library and the loader; /shutdown is a
# link to the program, not a script for busybox. With no watchdog, that is all that
# stays (under 20 MB, the goal); a watchdog adds its heap (docs/guide.md, "What stays in RAM").
COPY_MAX_KIB = 17 * MiB


@pytest.mark.parametrize("watched", [False, True], ids=["nothing-to-watch", "watchdog"])
def test_the_copy_for_the_shutdown_holds_only_what_it_runs(lab: Lab, watched: bool) -> None:
    """The sample's COW holds all its origin (64 MiB) can change with the default 256M
    cowspace: nothing can fill and no watchdog starts. In 32M it could fill: the
    watchdog runs, from the copy, and adds its heap."""
    initrd = archiso_initramfs(lab.kernel, hwdb=True)
    space = " cow_spacesize=32M" if watched else ""
    append = f"archisobasedir=arch archisolabel={SAMPLE_LABEL}{space} lab.check=ramleft"
    drives = [Drive(lab.media("sample").iso, kind="ide-cdrom")]
    name = f"ramleft-hwdb-{'watched' if watched else 'alone'}"
    output = lab.boot_and_pass(name, append, drives, initrd=initrd, power_off=True)
    assert "reboot: Power down" in output, output[-3000:]
    match = re.search(
        r"LAB-RESULT ramleft copy_kib=(\d+) watch_pid=(\d+|none) watch_rss_kib=(\d+) "
        r"watch_anon_kib=(\d+) .* files_outside=(\d+) total_kib=(\d+)",
        output,
    )
    assert match, output[-3000:]
    copy, rss, anon = int(match[1]), int(match[3]), int(match[4])
    left = copy + anon  # the watchdog's file pages are the copy's (it runs from there)
    print(f"RAM left behind: copy {copy} KiB + watchdog {anon} KiB anonymous = {left} KiB")
    assert 0 < copy <= COPY_MAX_KIB, copy
    hook = hook_lines(output)
    if watched:
        assert match[2] != "none" and 0 < anon <= rss
        assert any(line.startswith("started the watchdog (pid ") for line in hook), hook
    else:
        assert match[2] == "none" and anon == 0
        alone = (
            "no watchdog: the COW of each snapshot (1) holds all that its origin can change: "
            "none can fill, and there is no NBD root to keep connected"
        )
        assert alone in hook, hook
        assert left <= 20_000_000 // 1024  # the goal: under 20 MB
    paths = re.findall(r"LAB-RESULT ramleft du_kib=\d+ path=(\S+)", output)
    assert "/run/initramfs/usr/lib/archiso-hook" in paths
    assert not any(p.startswith(("/run/initramfs/usr/lib/udev", "/run/initramfs/usr/lib/modules"))
                   for p in paths), paths  # fmt: skip
    assert any(line.startswith("nothing left busy") for line in hook), hook
