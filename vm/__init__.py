"""The QEMU test lab of archiso-hook.

- `vm.kernel`: fetch a Debian kernel (uncompressed vmlinux + depmod'ed module tree).
- `vm.initramfs`: build an mkinitcpio-style initramfs with the lab's bash emulation
  of mkinitcpio (`vm/mkinitramfs`, `vm/initcpio/`).
- `vm.liveroot`: build a tiny busybox live root whose `/sbin/init` runs checks.
- `vm.qemu`: boot a guest under TCG and talk to its serial console and monitor.
- `vm.disks`: partitioned disk images, ext4 and vfat filesystems, without root; reading
  files back out of an ext4 image after a guest wrote to it.
- `vm.media`: the sample live media, made with archiso-hook's own builder.
"""

import os
from pathlib import Path

#: The `vm/` directory.
VM_DIR = Path(__file__).resolve().parent
#: Root of the repository (the parent of `vm/`).
REPO = VM_DIR.parent


def cache_dir() -> Path:
    """What every user of the lab shares (the kernels, fetched under a lock):
    `$ARCHISO_LAB_DIR` or `build/lab/`."""
    override = os.environ.get("ARCHISO_LAB_DIR")
    return Path(override) if override else REPO / "build" / "lab"


def lab_dir() -> Path:
    """Where the lab keeps images, media and logs: `cache_dir()`, or a directory of its
    own for each pytest-xdist worker (`make test` boots two guests at a time)."""
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    return cache_dir() / worker if worker else cache_dir()
