"""Live media for the lab and the demo: a busybox live root and a shared /usr/share,
made into images and an ISO by archiso-hook's own builder."""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Callable
from pathlib import Path

import attrs

from archiso_hook.build.builder import build
from archiso_hook.build.imagesums import Signing
from archiso_hook.build.iso import make_iso
from vm import REPO, lab_dir
from vm.liveroot import make_liveroot, write_manifest

FROZEN_TREE = REPO / "build" / "frozen" / "archiso-hook"
STAGE = REPO / "build" / "stage"
#: `make frozen-i686`'s tree, and the i386 root it was built in (`tools/i386-root`).
FROZEN_TREE_I686 = REPO / "build" / "frozen-i686" / "archiso-hook"
I386_ROOT = REPO / "build" / "i386-root"

SAMPLE_LABEL = "ARCHISO_SAMPLE"
# A root filesystem image in a squashfs, under a dm-snapshot; a plain squashfs beside it.
SAMPLE_AITAB = """\
# img   mnt          arch    sfs_comp  fs_type  fs_size
root    /            x86_64  zstd      ext4     64
share   /usr/share   any     zstd      none     0
"""

# One medium for both architectures: each boots its own root, and both share /usr/share.
DUAL_AITAB = """\
# img   mnt          arch    sfs_comp  fs_type  fs_size
root    /            i686    zstd      ext4     64
root    /            x86_64  zstd      ext4     64
share   /usr/share   any     zstd      none     0
"""


@attrs.frozen
class Media:
    name: str
    label: str
    iso: Path
    tree: Path  # what the ISO holds: <basedir>/aitab, <basedir>/<arch>/<img>...


def make_sources(src: Path, *, hook_tree: Path = FROZEN_TREE) -> Path:
    """Source trees of the sample images: src/x86_64/root and src/any/share.

    Both carry a sha256 manifest that the live root's `files` check verifies.
    """
    if src.exists():
        shutil.rmtree(src)
    root = make_liveroot(src / "x86_64" / "root", hook_tree=hook_tree)
    write_manifest(root)
    share = src / "any" / "share"
    lab = share / "lab"
    lab.mkdir(parents=True)
    (lab / "hello.txt").write_text("Hello from the shared squashfs image.\n")
    # A few MiB of incompressible but reproducible data, so reads really come from the image.
    block = hashlib.sha512(b"archiso-hook").digest()
    data = bytearray()
    while len(data) < 3 << 20:
        block = hashlib.sha512(block).digest()
        data += block
    (lab / "data.bin").write_bytes(bytes(data))
    write_manifest(share, prefix="/usr/share")
    return src


def build_media(
    name: str,
    src: Path,
    *,
    aitab: str = SAMPLE_AITAB,
    label: str = SAMPLE_LABEL,
    basedir: str = "arch",
    edit: Callable[[Path], None] | None = None,
    checksum_layout: str = "image",
    signing: Signing | None = None,
    log: Callable[[str], None] = lambda line: None,
) -> Media:
    """Build the images of `aitab` from `src` and an ISO of them in lab_dir()/media/<name>.

    `edit` may change the laid-out tree before the ISO is made (fault scenarios: a
    missing or damaged image, a different aitab on the medium).
    """
    work = lab_dir() / "media" / name
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    (work / "aitab").write_text(aitab)
    tree = work / "tree"
    result = build(
        work / "aitab",
        src,
        tree,
        basedir=basedir,
        checksum_layout=checksum_layout,
        signing=signing,
        log=log,
    )
    if edit is not None:
        edit(tree / basedir)
    iso = make_iso(tree, work / f"{name}.iso", label, result.epoch, log)
    return Media(name=name, label=label, iso=iso, tree=tree)


def make_dual_sources(
    src: Path,
    *,
    hook_tree: Path = FROZEN_TREE,
    hook_tree_i686: Path = FROZEN_TREE_I686,
    sysroot_i686: Path = I386_ROOT,
) -> Path:
    """Source trees of DUAL_AITAB: `make_sources`'s, plus src/i686/root, a live root of
    i386 busybox-static and the i686 hook with its i386 glibc from `sysroot_i686`."""
    make_sources(src, hook_tree=hook_tree)
    root = make_liveroot(src / "i686" / "root", hook_tree=hook_tree_i686, sysroot=sysroot_i686)
    write_manifest(root)
    return src
