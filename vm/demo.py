"""`make demo`: build the sample live media and boot it in QEMU, console on this terminal.

The guest's own lines scroll by: the kernel, udev, archiso-hook finding the ISO and
mounting its images under a device-mapper snapshot, then the live root proving it
is writable, printing `archiso-hook status`, and powering off.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

from vm.kernel import fetch_kernel
from vm.lab import archiso_initramfs, staged_hook
from vm.media import SAMPLE_AITAB, SAMPLE_LABEL, build_media, make_sources
from vm.qemu import Drive, qemu_command

APPEND = f"archisobasedir=arch archisolabel={SAMPLE_LABEL} lab.check=write,files,report"


def say(line: str) -> None:
    print(f"demo: {line}", file=sys.stderr, flush=True)


def main() -> int:
    try:
        hook = staged_hook()
    except FileNotFoundError as e:
        say(f"{e} (make demo does it)")
        return 1
    say("fetching Debian's kernel (cached in build/lab/kernel)")
    kernel = fetch_kernel()
    say(f"building the initramfs: HOOKS=(base udev archiso), kernel {kernel.version}")
    initrd = archiso_initramfs(kernel)
    with tempfile.TemporaryDirectory(prefix="archiso-demo-") as tmp:
        say("building the sample media with `archiso-hook build`, from this aitab:")
        for line in SAMPLE_AITAB.splitlines():
            say(f"    {line}")
        src = make_sources(Path(tmp) / "src", hook_tree=hook)
        media = build_media("demo", src, log=lambda line: say(f"  {line}"))
    say(f"booting {media.iso} on an IDE cdrom: {APPEND}")
    cmd = qemu_command(
        kernel=kernel.vmlinux,
        initrd=initrd,
        append=APPEND,
        drives=[Drive(media.iso, kind="ide-cdrom")],
    )
    say("$ " + " ".join(cmd))
    # A host-side limit, as for every lab boot: the guest powers off by itself.
    try:
        result = subprocess.run(cmd, check=False, timeout=600)
    except subprocess.TimeoutExpired:
        say("the guest did not power off within 10 minutes")
        return 1
    return result.returncode


if __name__ == "__main__":
    raise SystemExit(main())
