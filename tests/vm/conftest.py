"""The lab for boot tests: Debian's kernel, an initramfs with HOOKS=(base archiso)
built from the staged install (`make stage`), and the sample media sources."""

from __future__ import annotations

import functools
import json
import re
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import attrs
import pytest

from vm import lab_dir
from vm.initramfs import build_initramfs
from vm.kernel import Kernel, fetch_kernel
from vm.lab import HOOKS, archiso_initramfs, pxe_initramfs, staged_hook, udev_initramfs
from vm.media import STAGE, Media, build_media, make_sources
from vm.qemu import SEABIOS, Drive, Firmware, Guest, Nic

# Typed into the emergency shell: lists what a failed boot could have left behind.
# The markers are computed by the shell so that its echo of the command does not match.
LEAK_CHECK = (
    "echo LEAK-$((1+1))-BEGIN; grep -E ' /(run/archiso|new_root)' /proc/mounts; "
    "ls /sys/block | grep '^dm-'; cat /sys/block/loop*/loop/backing_file 2>/dev/null; "
    "ls /dev/mapper 2>/dev/null | grep -v '^control$'; echo LEAK-$((1+1))-END"
)


class Lab:
    def __init__(self, kernel: Kernel, initrd: Path, src: Path) -> None:
        self.kernel = kernel
        self.initrd = initrd
        self.src = src
        self._media: dict[str, Media] = {}

    @functools.cached_property
    def udev_initrd(self) -> Path:
        """HOOKS=(base udev archiso): the hook after udev's coldplug."""
        return udev_initramfs(self.kernel)

    def media(self, name: str, **kwargs: object) -> Media:
        if name not in self._media:
            self._media[name] = build_media(name, self.src, **kwargs)  # type: ignore[arg-type]
        return self._media[name]

    def boot(
        self,
        name: str,
        append: str,
        drives: list[Drive],
        *,
        memory_mib: int = 1024,
        timeout: float = 240.0,
        initrd: Path | None = None,
        extra_args: Sequence[str] = (),
        nics: Sequence[Nic] = (),
    ) -> Guest:
        return Guest(
            name,
            kernel=self.kernel,
            initrd=initrd or self.initrd,
            append=append,
            drives=drives,
            memory_mib=memory_mib,
            timeout=timeout,
            extra_args=extra_args,
            nics=nics,
        )

    def boot_and_pass(
        self,
        name: str,
        append: str,
        drives: list[Drive],
        *,
        verdict_timeout: float = 200,
        power_off: bool = False,
        memory_mib: int = 1024,
        timeout: float = 240.0,
        initrd: Path | None = None,
    ) -> str:
        """Boot until the live root's verdict, which must be `LAB: PASS`, with no
        traceback on the way; `power_off`: and until the guest has powered itself off
        (its disks closed and consistent). The console output."""
        with self.boot(
            name, append, drives, memory_mib=memory_mib, timeout=timeout, initrd=initrd
        ) as guest:
            guest.expect(r"LAB: (PASS|FAIL)", timeout=verdict_timeout)
            if power_off:
                guest.wait(120)
            output = guest.output
        assert "LAB: PASS" in output, output[-3000:]
        assert "Traceback" not in output, output[-3000:]
        return output

    def initramfs_without(self, *modules: str) -> Path:
        """An image whose install hook leaves these modules out (a broken initramfs)."""
        name = "initramfs-without-" + "-".join(modules) + ".img"
        hooks = lab_dir() / ("hooks-without-" + "-".join(modules))
        if hooks.exists():
            shutil.rmtree(hooks)
        shutil.copytree(STAGE / "usr/lib/initcpio", hooks)
        install = hooks / "install" / "archiso"
        text = install.read_text()
        for module in modules:
            assert f" {module} " in text, module
            text = text.replace(f" {module} ", " ")
        install.write_text(text)
        return build_initramfs(
            self.kernel,
            list(HOOKS),
            lab_dir() / name,
            hook_dirs=[hooks],
            env={"ARCHISO_HOOK_SYSROOT": str(STAGE)},
        )


@pytest.fixture(scope="session")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    try:
        hook = staged_hook()
    except FileNotFoundError as e:
        pytest.fail(f"{e} (make test does it first)")
    kernel = fetch_kernel()
    initrd = archiso_initramfs(kernel)
    src = make_sources(tmp_path_factory.mktemp("sources"), hook_tree=hook)
    yield Lab(kernel, initrd, src)


@pytest.fixture(scope="module")
def pxe(lab: Lab) -> Path:
    """The initramfs with the network boot hooks (archiso_pxe_*)."""
    return pxe_initramfs(lab.kernel)


@pytest.fixture(scope="module")
def media(lab: Lab) -> Media:
    """The sample medium, as the network boots serve it."""
    return lab.media("sample")


#: What ends a network boot: the live root's verdict, or mkinitcpio's emergency shell.
NET_DONE = r"LAB: (PASS|FAIL)|Falling back to interactive prompt"


def hook_lines(output: str) -> list[str]:
    """What the hook printed on the console, without its `archiso-hook: ` tag."""
    return [m.group(1) for m in re.finditer(r"archiso-hook: (.*?)\r?$", output, re.M)]


def status_reports(output: str) -> list[dict[str, Any]]:
    """Every `archiso-hook status --json` the live root printed, in order."""
    blocks = re.findall(r"LAB-STATUS-BEGIN\r?\n(.*?)LAB-STATUS-END", output, re.S)
    return [json.loads(block) for block in blocks]


#: mkinitcpio's emergency shell, where a boot that failed leaves the user.
SHELL_PROMPT = r"\[rootfs [^\]]*\]# "


def fails_cleanly(guest: Guest, *messages: str, timeout: float = 200) -> None:
    """The messages in order (patterns of the console's lines), then mkinitcpio's error and
    its emergency shell, where LEAK_CHECK finds nothing left behind; and no traceback."""
    for message in messages:
        guest.expect(message, timeout=timeout)
    guest.expect(r"ERROR: the live root could not be mounted", timeout=60)
    guest.expect(SHELL_PROMPT, timeout=60)
    assert leak_report(guest) == []
    assert "Traceback" not in guest.output


def power_off(guest: Guest) -> None:
    """From the emergency shell."""
    guest.send("poweroff -f")
    guest.wait(60)


def leak_report(guest: Guest) -> list[str]:
    """Run LEAK_CHECK in the emergency shell; the lines it printed (none: nothing leaked)."""
    guest.send(LEAK_CHECK)
    match = guest.expect(r"LEAK-2-BEGIN\r?\n(.*?)LEAK-2-END", timeout=30)
    return [line.strip() for line in match.group(1).splitlines() if line.strip()]


@pytest.fixture(scope="session")
def sample_iso() -> Path:
    """`make iso`'s medium: it boots by itself (vm/sample_iso.py)."""
    from vm.sample_iso import SAMPLE_ISO  # noqa: PLC0415

    if not SAMPLE_ISO.is_file():
        pytest.fail(f"{SAMPLE_ISO} is missing: run `make iso` (make test does it first)")
    return SAMPLE_ISO


def firmware_boot(
    name: str,
    drive: Drive,
    *,
    firmware: Firmware = SEABIOS,
    arch: str = "x86_64",
    timeout: float = 420.0,
) -> Guest:
    """A guest that boots `drive` as a PC does: firmware, the medium's boot loader, the
    entry its menu picks (no -kernel)."""
    return Guest(
        name,
        kernel=None,
        drives=[attrs.evolve(drive, bootindex=1)],
        firmware=firmware,
        arch=arch,
        timeout=timeout,
    )


def assert_firmware_boot(guest: Guest, output: str, *, loader: str, arch_line: str) -> None:
    """The guest booted through `loader`, not QEMU's -kernel, into the live root of the
    expected architecture, which passed its checks, took itself apart and powered off."""
    assert "-kernel" not in guest.command, guest.command
    assert loader in output, output[:3000]
    assert "LAB: PASS" in output, output[-3000:]
    match = re.search(r"^LAB-RESULT arch (.*?)\r?$", output, re.M)
    assert match and match.group(1) == arch_line, output[-3000:]
    assert "archiso-hook: nothing left busy" in output, output[-3000:]
