"""What the boot loaders cost: power-on to the live root through firmware and the ISO's
loaders, next to QEMU's direct kernel boot, on the same medium and kernel.

The sample ISO is made again with a menu timeout of 0 and no checks in the live root
(`vm/sample_iso.py`), so that its default entry boots at once. Its x86_64 kernel and
initramfs, taken out of the ISO, are also booted directly, with the entry's command line:

- `direct vmlinux`: QEMU's -kernel with the uncompressed ELF kernel (PVH entry), as the
  lab boots every other test: the kernel is not decompressed in the guest;
- `direct bzImage`: -kernel with the ISO's own vmlinuz, which decompresses itself;
- `SeaBIOS`: QEMU's BIOS, isolinux from El Torito, its menu's ifcpu64 entry;
- `OVMF`: Debian's 64-bit UEFI, GRUB from the EFI partition, its menu.

Every boot has the ISO on an IDE CD-ROM and the same QEMU settings (TCG, one CPU, 1 GiB,
a VGA card shown nowhere). Power-on is QEMU's start on the host's monotonic clock; the
live root is its `LAB: live root up uptime=<s>` line, seen on the serial console. The
kernel's own clock starts when the kernel does, so host seconds less that uptime are what
came before the kernel: QEMU's start, the firmware, the loader reading the kernel and the
initramfs from the disc. Boots are interleaved, medians of `--boots` each.

    python -m bench.loaders [--boots N]      (results in bench/results/loaders.txt)
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import attrs

from bench import publish
from vm import REPO, lab_dir
from vm.kernel import extract_vmlinux
from vm.qemu import OVMF, SEABIOS, Drive, Firmware, Guest
from vm.sample_iso import build_sample_iso

RESULTS = REPO / "bench" / "results"
METHODS = ("direct vmlinux", "direct bzImage", "SeaBIOS", "OVMF")
_LIVEROOT = re.compile(r"^LAB: live root up uptime=(\d+(?:\.\d+)?)", re.MULTILINE)
_APPEND = re.compile(r"^    APPEND (archisobasedir=.*)$", re.MULTILINE)


class BenchError(RuntimeError):
    """A boot did not produce what the bench needs (the message says what)."""


@attrs.frozen
class Sample:
    wall: float  # seconds from QEMU's start to the live root's first line
    uptime: float  # the kernel's clock at that line

    @property
    def before_kernel(self) -> float:
        return self.wall - self.uptime


def liveroot_uptime(output: str) -> float:
    match = _LIVEROOT.search(output)
    if match is None:
        raise BenchError("the live root did not start (no 'LAB: live root up' line)")
    return float(match.group(1))


def entry_cmdline(syslinux_cfg: str) -> str:
    """The kernel parameters of the menu's first kernel entry (x86_64's)."""
    match = _APPEND.search(syslinux_cfg)
    if match is None:
        raise BenchError("syslinux.cfg has no APPEND line with archisobasedir=")
    return match.group(1)


def format_report(samples: Mapping[str, Sequence[Sample]]) -> str:
    """Medians per method, and the ratio of power-on to live root to the direct boot's."""
    base = statistics.median(s.wall for s in samples[METHODS[0]]) if samples[METHODS[0]] else 0
    width = max(len(m) for m in METHODS)
    lines = [
        f"{'':<{width}} {'power-on to live root (s)':>26} {'before the kernel (s)':>22} "
        f"{'ratio to direct vmlinux':>24}"
    ]
    for method in METHODS:
        runs = samples.get(method, [])
        if not runs:
            continue
        wall = statistics.median(s.wall for s in runs)
        before = statistics.median(s.before_kernel for s in runs)
        ratio = f"{wall / base:.2f}" if base else "-"
        lines.append(f"{method:<{width}} {wall:>26.2f} {before:>22.2f} {ratio:>24}")
    return "\n".join(lines)


def _extract(iso: Path, into: Path) -> tuple[Path, Path, str]:
    """The ISO's x86_64 kernel and initramfs, and its x86_64 entry's parameters."""
    into.mkdir(parents=True, exist_ok=True)
    for name in (
        "arch/boot/x86_64/vmlinuz",
        "arch/boot/x86_64/archiso.img",
        "syslinux/syslinux.cfg",
    ):
        subprocess.run(
            ["xorriso", "-osirrox", "on", "-indev", str(iso), "-extract", f"/{name}",
             str(into / Path(name).name)],
            check=True,
            capture_output=True,
        )  # fmt: skip
    return (
        into / "vmlinuz",
        into / "archiso.img",
        entry_cmdline((into / "syslinux.cfg").read_text()),
    )


def boot_once(method: str, iso: Path, files: tuple[Path, Path, Path, str]) -> Sample:
    vmlinux, bzimage, initramfs, append = files
    drive = Drive(iso, kind="ide-cdrom", bootindex=1)
    firmware: Firmware | None = {"SeaBIOS": SEABIOS, "OVMF": OVMF}.get(method)
    kernel = {"direct vmlinux": vmlinux, "direct bzImage": bzimage}.get(method)
    name = "bench-loaders-" + method.lower().replace(" ", "-")
    # The direct boots get the lab's own console= and panic= before the entry's words.
    with Guest(
        name,
        kernel=kernel,
        initrd=initramfs if kernel else None,
        append=append if kernel else "",
        drives=[drive],
        firmware=firmware or SEABIOS,
        timeout=400,
    ) as guest:
        match = guest.expect(r"LAB: live root up uptime=\S+", timeout=380)
        wall = guest.elapsed
        try:
            return Sample(wall, liveroot_uptime(match.group(0)))
        except BenchError as e:
            raise BenchError(f"{name}: {e}; see {guest.log_path}") from None


def run(boots: int, log: Callable[[str], None]) -> str:
    started = time.strftime("%Y-%m-%d %H:%M:%S")
    load_before = os.getloadavg()[0]
    work = lab_dir() / "bench-loaders"
    log("making the sample ISO with a menu timeout of 0 and no checks")
    iso = build_sample_iso(work / "bench-loaders.iso", log, timeout=0, checks="")
    bzimage, initramfs, append = _extract(iso, work / "x86_64")
    vmlinux = extract_vmlinux(bzimage, work / "x86_64" / "vmlinux", elf_machine=62)
    files = (vmlinux, bzimage, initramfs, append)
    samples: dict[str, list[Sample]] = {m: [] for m in METHODS}
    for i in range(boots):
        for method in METHODS:  # interleaved: a slow spell of the host weighs on all alike
            sample = boot_once(method, iso, files)
            samples[method].append(sample)
            log(f"{method} #{i + 1}: {sample.wall:.2f} s to the live root, "
                f"{sample.before_kernel:.2f} s before the kernel")  # fmt: skip
    header = (
        f"# bench loaders, {started}: the sample ISO's x86_64 entry (menu timeout 0), Debian's "
        f"kernel in QEMU (TCG, 1 CPU, 1 GiB, IDE CD-ROM); medians of {boots} boots; host "
        "seconds from QEMU's start to the live root's first line, and of them those before "
        f"the kernel's clock started (bench/loaders.py); load average {load_before:.1f} at "
        f"the start, {os.getloadavg()[0]:.1f} at the end"
    )
    return header + "\n" + format_report(samples) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.loaders", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--boots", type=int, default=3, help="boots per method")
    parser.add_argument("--out", type=Path, default=RESULTS / "loaders.txt", help="results file")
    args = parser.parse_args(argv)

    def log(line: str) -> None:
        print(f"bench: {line}", file=sys.stderr, flush=True)

    publish(run(args.boots, log), args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
