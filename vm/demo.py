"""`make demo`: boot the sample ISO (`make iso`) as a PC does, console on this terminal.

    python -m vm.demo [ISO]           (default build/iso/archiso-sample.iso)

Only the ISO file is given to QEMU, as a user would: SeaBIOS starts isolinux from the
disc, its menu boots the default entry after a few seconds (x86_64 on this 64-bit CPU),
and the guest's own lines scroll by: the kernel, udev, archiso-hook finding the disc and
mounting its images under a device-mapper snapshot, then the live root proving it is
writable, printing `archiso-hook status`, and powering off.
"""

from __future__ import annotations

import shlex
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from vm.sample_iso import SAMPLE_ISO


def say(line: str) -> None:
    print(f"demo: {line}", file=sys.stderr, flush=True)


def demo_command(iso: Path) -> list[str]:
    """What a user types, plus `-nic none` (the live root has no use for a network card)
    and `-no-reboot` (the guest's power-off ends QEMU)."""
    return ["qemu-system-x86_64", "-m", "1024", "-nographic", "-nic", "none", "-no-reboot",
            "-cdrom", str(iso)]  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    iso = Path(args[0]) if args else SAMPLE_ISO
    if not iso.is_file():
        say(f"{iso} is missing: run `make iso` (make demo does it)")
        return 1
    say(f"booting {iso} on an IDE CD-ROM, through SeaBIOS and isolinux (no -kernel):")
    say("the menu boots its default entry after 3 s; the guest powers off by itself")
    cmd = demo_command(iso)
    say("$ " + shlex.join(cmd))
    # A host-side limit, as for every lab boot: the guest powers off by itself.
    try:
        result = subprocess.run(cmd, check=False, timeout=600)
    except subprocess.TimeoutExpired:
        say("the guest did not power off within 10 minutes")
        return 1
    return result.returncode


if __name__ == "__main__":
    raise SystemExit(main())
