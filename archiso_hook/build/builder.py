"""Build the images an aitab lists, and optionally an ISO, from directories on the host.

Layout (archiso's): `OUT/<basedir>/aitab` and `OUT/<basedir>/<arch>/<img>.<ext>`, each image
with a `<img>.<ext>.sha512` next to it. Nothing needs root and nothing is mounted:

- `*.sfs`: `mksquashfs SRC`.
- `*.fs`: `mke2fs -d SRC` into a sparse file, then `debugfs` to fix times and owners.
- `*.fs.sfs`: the `*.fs` built in a scratch directory, then a squashfs holding only it.
- btrfs instead of ext2/3/4: `mkfs.btrfs --rootdir` where the host has it (sizes are checked,
  not computed; neither reproducible nor root-owned when built as non-root). xfs: refused.

Sizing of ext2/3/4 images (fs_size): an absolute size is the image size, and content that does
not fit is an InputError. `N%` is the share of the filesystem left free after population: the
tree is measured as ext4 lays it out (data blocks, directory blocks, mapping and xattr blocks,
inodes) and `ext_geometry` mirrors mke2fs's own arithmetic for the metadata, so
`plan_ext_free` gives the smallest whole-MiB image with at least N% free blocks. The result is
checked with `dumpe2fs -h` and `e2fsck -fn`; if the estimate was short, the image is rebuilt
larger.

Reproducibility: all times are SOURCE_DATE_EPOCH (if unset: the newest mtime of the aitab and
the source trees, so unchanged inputs give the same bytes). mksquashfs gets `-mkfs-time` and
`-all-time`; mke2fs a pinned feature set (its own MKE2FS_CONFIG), a UUID and hash seed derived
from the image and the epoch, and E2FSPROGS_FAKE_TIME; debugfs then sets every used inode's
atime/mtime/ctime to the epoch, by inode number (mke2fs copies them from the source, and
reading the source changes atimes); xorriso gets `--modification-date` and
`--set_all_file_dates`. Both mksquashfs and mke2fs 1.47 add directory entries in sorted order.

Ownership: run as root, files keep their owners. Otherwise everything is root-owned: mksquashfs
`-all-root`; mke2fs -d copies the builder's uid/gid into the image (it stats the files), so
debugfs resets them to 0. The root directory gets the source directory's mode (mke2fs always
makes it 0755, which is wrong for e.g. a /tmp image).

Here: the inputs' checks and the order of the work. The parts: images.py (one image),
extsize.py (the ext geometry) and extimage.py (mke2fs, debugfs), imagesums.py (checksum
files, signatures), iso.py (xorriso) with loaders.py and bootfiles.py (what makes it boot).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path

import attrs

from archiso_hook.aitab import ARCHES, AitabEntry, parse_aitab
from archiso_hook.build import loaders, menus
from archiso_hook.build.bootfiles import BOOT_ARCHES, BootFiles, check_boot_files, find_boot_files
from archiso_hook.build.context import BuiltImage, Context, Job, clamp_epoch, source_date_epoch
from archiso_hook.build.extsize import scan_tree
from archiso_hook.build.hosttools import Log, reason
from archiso_hook.build.images import build_image
from archiso_hook.build.imagesums import (
    CHECKSUM_LAYOUTS,
    Signing,
    sign_image,
    write_checksums_2011,
)
from archiso_hook.build.iso import check_iso, inside, make_iso
from archiso_hook.errors import InputError

# --------------------------------------------------------------------------- results


@attrs.frozen
class BuildResult:
    images: tuple[BuiltImage, ...]
    iso: Path | None
    epoch: int  # the SOURCE_DATE_EPOCH the images carry
    boot: tuple[BootFiles, ...] = ()  # the kernels and initramfs images on the medium


@attrs.frozen
class BootOptions:
    """What makes the medium boot by itself (`archiso-hook build --boot ...`).

    `files`: architecture -> (kernel, initramfs); an architecture of the aitab that is not
    given is looked for in the source of its root image (`<root>/boot/vmlinuz-linux` with
    `initramfs-linux.img`, ...). `required`: every architecture of the aitab must have its
    kernel (an ISO must boot); otherwise they are placed where they are given or found.
    The rest is the boot menu (menus.make_menu).
    """

    files: Mapping[str, tuple[Path, Path]] = attrs.field(factory=dict)
    required: bool = True
    title: str = "Live system"
    append: str = ""
    serial: bool = False
    timeout: int = 5


# --------------------------------------------------------------------------- build


def build(
    aitab: Path,
    src: Path,
    out: Path,
    *,
    basedir: str = "arch",
    arches: Collection[str] | None = None,
    iso: Path | None = None,
    label: str | None = None,
    boot: BootOptions | None = None,
    checksum_layout: str = "image",
    signing: Signing | None = None,
    log: Log = print,
) -> BuildResult:
    """Build the images `aitab` lists for `arches` (default: all) from `src` into `out`.

    The source of an image is `src/<arch>/<img>` if that directory exists, else `src/<img>`.
    With `boot`, each architecture's kernel and initramfs go to `<basedir>/boot/<arch>/`.
    With `iso`, also write an ISO 9660 image of `out` with volume label `label`: with
    `boot`, one that boots by itself (BIOS and UEFI, CD and USB stick); without, a data
    medium for a loader that starts the kernel itself (PXE, QEMU's -kernel).
    `checksum_layout`: "image", a `<image>.sha512` beside each image; or "archiso-2011",
    one `<basedir>/checksum.<arch>.md5` per architecture listing the aitab and its images
    (and those of `any`) as archiso's media of 2011-2014 had (checksums.py reads both).
    Every input is checked before anything is written.
    """
    aitab, src, out = Path(aitab), Path(src), Path(out)
    _check_basedir(basedir)
    if checksum_layout not in CHECKSUM_LAYOUTS:
        raise InputError(
            f"checksum layout {checksum_layout!r} is not one of {', '.join(CHECKSUM_LAYOUTS)}"
        )
    epoch = source_date_epoch(os.environ)
    if iso is not None:
        label = check_iso(out, Path(iso), label)  # before hours of building
    try:
        text = aitab.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"cannot read the aitab {aitab}: {reason(e)}") from None
    entries = _select(parse_aitab(text, str(aitab)), arches, aitab)

    jobs: list[Job] = []
    for entry in entries:
        source = find_source(entry, src, aitab)
        if inside(out, source):
            raise InputError(
                f"{aitab}:{entry.line}: the output directory {out} is inside the "
                f"source directory {source} of {entry.name}"
            )
        jobs.append(Job(entry, source, scan_tree(source, entry.fs_type)))
    boot_files = _boot_files(boot, jobs, aitab, log) if boot is not None else ()
    host_loaders = None
    if boot is not None and iso is not None and boot_files:
        assert label is not None
        menu = menus.make_menu(
            label=label,
            basedir=basedir,
            kernels=[menus.BootKernel(b.arch, b.kernel.mixed_mode) for b in boot_files],
            title=boot.title,
            append=boot.append,
            serial=boot.serial,
            timeout=boot.timeout,
        )
        host_loaders = loaders.find_loaders(menu, log)

    if epoch is None:
        mtimes = [int(p.stat().st_mtime) for b in boot_files for p in _paths(b)]
        epoch = clamp_epoch(
            max([int(aitab.stat().st_mtime), *mtimes] + [job.usage.newest_mtime for job in jobs])
        )
        log(f"SOURCE_DATE_EPOCH is not set: using {epoch}, the newest mtime of the inputs")

    media = out / basedir
    media.mkdir(parents=True, exist_ok=True)
    if not ((media / "aitab").exists() and (media / "aitab").samefile(aitab)):
        shutil.copyfile(aitab, media / "aitab")
    images: list[BuiltImage] = []
    with tempfile.TemporaryDirectory(dir=out, prefix=".archiso-build-") as scratch:
        ctx = Context(
            log=log,
            epoch=epoch,
            root_owned=os.geteuid() != 0,
            scratch=Path(scratch),
            basedir=basedir,
            aitab=aitab,
            per_image_checksums=checksum_layout == "image",
        )
        for job in jobs:
            images.append(build_image(ctx, job, media / job.entry.arch))
    if checksum_layout == "archiso-2011":
        images = write_checksums_2011(media, images, log)
    if signing is not None:
        for image in images:
            sign_image(image.path, signing, log)

    for files in boot_files:
        place_boot_files(files, out / menus.boot_dir(basedir, files.arch), log)

    iso_path = None
    if iso is not None:
        assert label is not None
        iso_path = make_iso(out, Path(iso), label, epoch, log, boot_loaders=host_loaders)
    return BuildResult(tuple(images), iso_path, epoch, tuple(boot_files))


# --------------------------------------------------------------------------- boot files


def _boot_files(
    boot: BootOptions, jobs: Sequence[Job], aitab: Path, log: Log
) -> tuple[BootFiles, ...]:
    """Each architecture's kernel and initramfs, given or found, read and checked."""
    image_arches = {job.entry.arch for job in jobs} - {"any"}
    for arch in sorted(set(boot.files) - image_arches):
        if arch not in BOOT_ARCHES:
            raise InputError(
                f"--boot {arch}=...: unknown architecture, expected {' or '.join(BOOT_ARCHES)}"
            )
        if image_arches:
            raise InputError(
                f"--boot {arch}=...: {aitab} has no image for {arch} "
                f"(it has images for {', '.join(sorted(image_arches))} and any)"
            )
    found: list[BootFiles] = []
    for arch in BOOT_ARCHES:
        if arch in boot.files:
            kernel, initramfs = boot.files[arch]
            found.append(check_boot_files(arch, Path(kernel), Path(initramfs)))
            continue
        if arch not in image_arches:
            continue
        roots = [j.source for j in jobs if j.entry.mount == "/" and j.entry.arch in (arch, "any")]
        pairs = [pair for root in roots[:1] for pair in find_boot_files(root)]
        where = f"{roots[0]}/boot" if roots else f"the source of {arch}'s root image"
        if len(pairs) > 1:
            listed = ", ".join(f"{k.name} with {i.name}" for k, i in pairs)
            raise InputError(
                f"{where} has several kernels for {arch} ({listed}): choose one with "
                f"--boot {arch}=KERNEL,INITRAMFS"
            )
        if pairs:
            log(f"{arch}: found the kernel {pairs[0][0]} and the initramfs {pairs[0][1]}")
            found.append(check_boot_files(arch, *pairs[0]))
        elif boot.required:
            raise InputError(
                f"no kernel for the {arch} images: give --boot {arch}=KERNEL,INITRAMFS, or put "
                f"them in {where} (vmlinuz-linux with initramfs-linux.img), or --no-boot "
                "for a medium that only holds the images"
            )
    if boot.required and not found:
        raise InputError(
            f"{aitab} has images for any architecture only: say which kernel boots them "
            "with --boot ARCH=KERNEL,INITRAMFS"
        )
    return tuple(found)


def _paths(files: BootFiles) -> tuple[Path, Path]:
    return files.kernel.path, files.initramfs.path


def place_boot_files(files: BootFiles, directory: Path, log: Log) -> None:
    """The kernel and initramfs at `directory`/vmlinuz and archiso.img."""
    directory.mkdir(parents=True, exist_ok=True)
    names = (menus.KERNEL_NAME, menus.INITRAMFS_NAME)
    for src, name in zip(_paths(files), names, strict=True):
        dst = directory / name
        part = dst.with_name(f".{name}.part")
        try:
            shutil.copyfile(src, part)
            part.replace(dst)
        finally:
            part.unlink(missing_ok=True)
    release = f" {files.kernel.release}" if files.kernel.release else ""
    log(f"placed the {files.arch} kernel{release} and its initramfs in {directory}")


def _select(
    entries: list[AitabEntry], arches: Collection[str] | None, aitab: Path
) -> list[AitabEntry]:
    if arches is None:
        selected = entries
    else:
        unknown = sorted(set(arches) - set(ARCHES))
        if unknown:
            raise InputError(f"unknown architecture {unknown[0]!r}: expected {' | '.join(ARCHES)}")
        selected = [e for e in entries if e.arch in arches]
    if not selected:
        which = "" if arches is None else f" for {', '.join(sorted(arches))}"
        raise InputError(f"{aitab} lists no image{which}")
    return selected


def find_source(entry: AitabEntry, src: Path, aitab: Path) -> Path:
    """`src/<arch>/<img>` if it is a directory, else `src/<img>`."""
    candidates = (src / entry.arch / entry.name, src / entry.name)
    for candidate in candidates:
        if candidate.is_dir():
            return candidate
    raise InputError(
        f"{aitab}:{entry.line}: no source directory for image {entry.name}: "
        f"neither {candidates[0]} nor {candidates[1]} is a directory"
    )


def _check_basedir(basedir: str) -> None:
    parts = basedir.split("/")
    if not basedir or basedir.startswith("/") or any(p in {"", ".", ".."} for p in parts):
        raise InputError(
            f"basedir {basedir!r} is not valid: expected a relative path such as "
            "arch, without '.', '..' or '//'"
        )
