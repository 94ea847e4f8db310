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
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import stat
import tempfile
import uuid
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from pathlib import Path

import attrs

from archiso_hook.aitab import ARCHES, AitabEntry, ImageType, parse_aitab
from archiso_hook.build import loaders
from archiso_hook.build.bootfiles import BOOT_ARCHES, BootFiles, check_boot_files, find_boot_files
from archiso_hook.build.hosttools import Log, run_tool, search_path, tool_failure
from archiso_hook.errors import HookError, InputError
from archiso_hook.sizes import MiB, Size, human

# --------------------------------------------------------------------------- results


@attrs.frozen
class BuiltImage:
    """One image written to the medium."""

    name: str
    arch: str
    type: ImageType
    path: Path
    size: int  # bytes (apparent size: *.fs files are sparse)
    checksum: Path  # <path>.sha512, or the checksum.<arch>.md5 that lists it


@attrs.frozen
class BuildResult:
    images: tuple[BuiltImage, ...]
    iso: Path | None
    epoch: int  # the SOURCE_DATE_EPOCH the images carry
    boot: tuple[BootFiles, ...] = ()  # the kernels and initramfs images on the medium


@attrs.frozen
class Signing:
    """Detached signatures beside each image, for verify= and cms_verify= at boot.

    `gpg_key`: a key of the caller's GnuPG keyring (GNUPGHOME, else ~/.gnupg) that signs
    `<image>.sig`. `cms`: a code-signing certificate and its private key (PEM) that sign
    `<image>.cms.sig` (DER), as mkarchiso signs with `openssl cms -sign`."""

    gpg_key: str | None = None
    cms: tuple[Path, Path] | None = None


@attrs.frozen
class BootOptions:
    """What makes the medium boot by itself (`archiso-hook build --boot ...`).

    `files`: architecture -> (kernel, initramfs); an architecture of the aitab that is not
    given is looked for in the source of its root image (`<root>/boot/vmlinuz-linux` with
    `initramfs-linux.img`, ...). `required`: every architecture of the aitab must have its
    kernel (an ISO must boot); otherwise they are placed where they are given or found.
    The rest is the boot menu (loaders.make_menu).
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
        label = _check_iso(out, Path(iso), label)  # before hours of building
    try:
        text = aitab.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"cannot read the aitab {aitab}: {_reason(e)}") from None
    entries = _select(parse_aitab(text, str(aitab)), arches, aitab)

    jobs: list[_Job] = []
    for entry in entries:
        source = find_source(entry, src, aitab)
        if _inside(out, source):
            raise InputError(
                f"{aitab}:{entry.line}: the output directory {out} is inside the "
                f"source directory {source} of {entry.name}"
            )
        jobs.append(_Job(entry, source, scan_tree(source, entry.fs_type)))
    boot_files = _boot_files(boot, jobs, aitab, log) if boot is not None else ()
    host_loaders = None
    if boot is not None and iso is not None and boot_files:
        assert label is not None
        menu = loaders.make_menu(
            label=label,
            basedir=basedir,
            kernels=[loaders.BootKernel(b.arch, b.kernel.mixed_mode) for b in boot_files],
            title=boot.title,
            append=boot.append,
            serial=boot.serial,
            timeout=boot.timeout,
        )
        host_loaders = loaders.find_loaders(menu, log)

    if epoch is None:
        mtimes = [int(p.stat().st_mtime) for b in boot_files for p in _paths(b)]
        epoch = _clamp_epoch(
            max([int(aitab.stat().st_mtime), *mtimes] + [job.usage.newest_mtime for job in jobs])
        )
        log(f"SOURCE_DATE_EPOCH is not set: using {epoch}, the newest mtime of the inputs")

    media = out / basedir
    media.mkdir(parents=True, exist_ok=True)
    if not ((media / "aitab").exists() and (media / "aitab").samefile(aitab)):
        shutil.copyfile(aitab, media / "aitab")
    images: list[BuiltImage] = []
    with tempfile.TemporaryDirectory(dir=out, prefix=".archiso-build-") as scratch:
        ctx = _Context(
            log=log,
            epoch=epoch,
            root_owned=os.geteuid() != 0,
            scratch=Path(scratch),
            basedir=basedir,
            aitab=aitab,
            per_image_checksums=checksum_layout == "image",
        )
        for job in jobs:
            images.append(_build_image(ctx, job, media / job.entry.arch))
    if checksum_layout == "archiso-2011":
        images = write_checksums_2011(media, images, log)
    if signing is not None:
        for image in images:
            sign_image(image.path, signing, log)

    for files in boot_files:
        place_boot_files(files, out / loaders.boot_dir(basedir, files.arch), log)

    iso_path = None
    if iso is not None:
        assert label is not None
        iso_path = make_iso(out, Path(iso), label, epoch, log, boot_loaders=host_loaders)
    return BuildResult(tuple(images), iso_path, epoch, tuple(boot_files))


@attrs.frozen
class _Job:
    entry: AitabEntry
    source: Path
    usage: TreeUsage


# --------------------------------------------------------------------------- boot files


def _boot_files(
    boot: BootOptions, jobs: Sequence[_Job], aitab: Path, log: Log
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
    names = (loaders.KERNEL_NAME, loaders.INITRAMFS_NAME)
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


@attrs.frozen
class _Context:
    log: Log
    epoch: int
    root_owned: bool  # make every file root-owned (the builder is not root)
    scratch: Path  # removed after the build
    basedir: str
    aitab: Path
    per_image_checksums: bool = True

    def where(self, entry: AitabEntry) -> str:
        return f"{self.aitab}:{entry.line}"


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


def check_label(label: str | None) -> str:
    """An ISO 9660 volume ID: 1 to 32 printable ASCII characters."""
    if not label:
        raise InputError("an ISO needs a volume label (what archisolabel= names at boot)")
    if len(label) > 32:
        raise InputError(
            f"ISO volume label {label!r} has {len(label)} characters: ISO 9660 allows at most 32"
        )
    if not all(" " <= c <= "~" for c in label):
        raise InputError(
            f"ISO volume label {label!r} is not valid: expected printable ASCII "
            "characters (A-Z, 0-9 and _ are the safest)"
        )
    return label


def _check_iso(out: Path, iso: Path, label: str | None) -> str:
    if _inside(iso, out):
        raise InputError(f"the ISO {iso} cannot be inside {out}, which becomes its content")
    return check_label(label)


def _inside(path: Path, directory: Path) -> bool:
    return path.resolve().is_relative_to(directory.resolve())


def _reason(error: Exception) -> str:
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    return str(error)


# --------------------------------------------------------------------------- epoch

_EPOCH_MAX = 2**32 - 1  # squashfs stores times as unsigned 32-bit seconds


def source_date_epoch(environ: Mapping[str, str]) -> int | None:
    """SOURCE_DATE_EPOCH from `environ`, or None if unset."""
    text = environ.get("SOURCE_DATE_EPOCH", "")
    if not text:
        return None
    if not text.isdigit() or not 1 <= int(text) <= _EPOCH_MAX:
        raise InputError(
            f"SOURCE_DATE_EPOCH={text} is not valid: expected seconds since 1970, 1..{_EPOCH_MAX}"
        )
    return int(text)


def _clamp_epoch(seconds: int) -> int:
    # 0 would mean "now" to E2FSPROGS_FAKE_TIME.
    return min(max(seconds, 1), _EPOCH_MAX)


# A fixed namespace: UUIDs of images depend only on what they are and their epoch.
_UUID_NAMESPACE = uuid.UUID("a8988908-e4b4-4f8f-9ed1-618d0eac2721")


def image_uuid(basedir: str, arch: str, name: str, epoch: int) -> uuid.UUID:
    return uuid.uuid5(_UUID_NAMESPACE, f"{basedir}/{arch}/{name}@{epoch}")


# --------------------------------------------------------------------------- images


def _build_image(ctx: _Context, job: _Job, directory: Path) -> BuiltImage:
    entry = job.entry
    directory.mkdir(parents=True, exist_ok=True)
    dst = directory / entry.filename
    ctx.log(f"building {entry.filename} ({_describe(entry)}) from {job.source}")
    part = dst.with_name(f".{dst.name}.part")
    part.unlink(missing_ok=True)
    try:
        if entry.type is ImageType.SFS:
            assert entry.sfs_comp is not None
            _mksquashfs(ctx, job.source, part, entry.sfs_comp)
        elif entry.type is ImageType.FS:
            _build_fs(ctx, job, part)
        else:
            assert entry.sfs_comp is not None
            holder = Path(tempfile.mkdtemp(dir=ctx.scratch))
            inner = holder / f"{entry.name}.fs"
            _build_fs(ctx, job, inner)
            # Only the directory's attributes and the one file end up in the squashfs.
            holder.chmod(0o755)
            inner.chmod(0o644)
            _mksquashfs(ctx, holder, part, entry.sfs_comp)
            shutil.rmtree(holder)
        part.replace(dst)
    finally:
        part.unlink(missing_ok=True)
    checksum = write_checksum(dst) if ctx.per_image_checksums else dst
    size = dst.stat().st_size
    ctx.log(f"wrote {dst} ({human(size)})")
    return BuiltImage(entry.name, entry.arch, entry.type, dst, size, checksum)


def _describe(entry: AitabEntry) -> str:
    if entry.type is ImageType.SFS:
        return f"squashfs {entry.sfs_comp}"
    assert entry.fs_size is not None
    size = f"{entry.fs_size} free" if entry.fs_size.percent else human(entry.fs_size.value)
    if entry.type is ImageType.FS:
        return f"{entry.fs_type}, {size}"
    return f"{entry.fs_type} in squashfs {entry.sfs_comp}, {size}"


def _mksquashfs(ctx: _Context, src: Path, dst: Path, comp: str) -> None:
    # mksquashfs sorts directories and is deterministic across thread counts; times and
    # (as non-root) owners are the only host-dependent input left.
    argv = [
        "mksquashfs",
        str(src),
        str(dst),
        "-noappend",
        "-comp",
        comp,
        "-mkfs-time",
        str(ctx.epoch),
        "-all-time",
        str(ctx.epoch),
        "-exit-on-error",
        "-no-progress",
        "-quiet",
    ]
    if ctx.root_owned:
        argv.append("-all-root")
    run_tool(argv, ctx.log)


def sign_image(image: Path, signing: Signing, log: Log) -> None:
    """`<image>.sig` and/or `<image>.cms.sig`, as `signing` asks."""
    if signing.gpg_key is not None:
        home = os.environ.get("GNUPGHOME") or os.path.expanduser("~/.gnupg")
        run_tool(
            ["gpg", "--batch", "--yes", "--quiet", "--local-user", signing.gpg_key,
             "--detach-sign", "--output", f"{image}.sig", str(image)],
            log, env={"GNUPGHOME": home, "HOME": os.path.expanduser("~")},
        )  # fmt: skip
    if signing.cms is not None:
        cert, key = signing.cms
        run_tool(
            ["openssl", "cms", "-sign", "-binary", "-noattr", "-in", str(image),
             "-signer", str(cert), "-inkey", str(key), "-outform", "DER",
             "-out", f"{image}.cms.sig"],
            log,
        )  # fmt: skip


CHECKSUM_LAYOUTS = ("image", "archiso-2011")


def _md5(path: Path) -> str:
    digest = hashlib.md5()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_checksums_2011(media: Path, images: list[BuiltImage], log: Log) -> list[BuiltImage]:
    """`<basedir>/checksum.<arch>.md5` for each architecture (in md5sum's format, paths
    relative to the base directory, as `md5sum -c` run there reads them): the aitab,
    the architecture's images and those of `any`. The images, each with its file."""
    arches = sorted({image.arch for image in images} - {"any"})
    if not arches:
        raise InputError(
            "the archiso-2011 checksum layout names its files by architecture: "
            "build at least one image that is not `any`"
        )
    aitab_md5 = _md5(media / "aitab")
    digests = {image.path: _md5(image.path) for image in images}
    files: dict[str, Path] = {}
    for arch in arches:
        lines = [f"{aitab_md5}  aitab"]
        lines += [
            f"{digests[image.path]}  {image.arch}/{image.path.name}"
            for image in images
            if image.arch in (arch, "any")
        ]
        files[arch] = media / f"checksum.{arch}.md5"
        files[arch].write_text("\n".join(lines) + "\n", encoding="utf-8")
        log(f"wrote {files[arch]}")
    return [
        attrs.evolve(image, checksum=files.get(image.arch, files[arches[0]])) for image in images
    ]


def write_checksum(image: Path) -> Path:
    """`<image>.sha512` in sha512sum's format, naming the image by its bare file name."""
    digest = hashlib.sha512()
    with image.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    checksum = image.with_name(image.name + ".sha512")
    checksum.write_text(f"{digest.hexdigest()}  {image.name}\n", encoding="utf-8")
    return checksum


def _build_fs(ctx: _Context, job: _Job, dst: Path) -> None:
    fs_type = job.entry.fs_type
    if fs_type in EXT_TYPES:
        _build_ext(ctx, job, dst)
    elif fs_type == "btrfs":
        _build_btrfs(ctx, job, dst)
    else:
        raise InputError(
            f"{ctx.where(job.entry)}: cannot make {fs_type} images on this host: "
            f"the builder makes ext2, ext3, ext4 and (with mkfs.btrfs --rootdir) "
            "btrfs"
        )


# --------------------------------------------------------------------------- ext sizing
#
# Pure arithmetic: what a tree takes in an ext2/3/4 filesystem with the parameters below,
# and what mke2fs's metadata takes. Checked against mke2fs and dumpe2fs in the tests.

EXT_TYPES = ("ext2", "ext3", "ext4")
BLOCK = 4096
_BLOCKS_PER_GROUP = 8 * BLOCK  # one block bitmap block per group
_INODE_SIZE = 256
_INODE_RATIO = 16384  # bytes per inode at least, mke2fs's default
_FIRST_INO = 11  # inodes 1..10 are reserved, 11 is lost+found, the tree starts at 12
_LOST_FOUND_BLOCKS = 16 * 1024 // BLOCK  # mke2fs makes lost+found 16 KiB
_MIB_BLOCKS = MiB // BLOCK
_EXTENT_MAX = 32768  # blocks one extent maps
_EXTENTS_PER_LEAF = (BLOCK - 12) // 12
_ADDRS_PER_BLOCK = BLOCK // 4
_INLINE_XATTR_SPACE = _INODE_SIZE - 128 - 32  # after the base inode and i_extra_isize
_FAST_SYMLINK_MAX = 59  # shorter targets are stored in the inode

# Pinned features (instead of the host's /etc/mke2fs.conf): the same bytes on any host with
# this e2fsprogs, and nothing an older live kernel cannot mount read-write (1.47's default
# orphan_file, for one). No resize_inode: the images are never grown in place.
_MKE2FS_CONF = """\
[defaults]
\tbase_features = sparse_super,large_file,filetype,dir_index,ext_attr
\tdefault_mntopts = acl,user_xattr
\tenable_periodic_fsck = 0
\tblocksize = 4096
\tinode_size = 256
\tinode_ratio = 16384

[fs_types]
\text3 = {
\t\tfeatures = has_journal
\t}
\text4 = {
\t\tfeatures = has_journal,extent,huge_file,flex_bg,metadata_csum,64bit,dir_nlink,extra_isize
\t}
"""


@attrs.frozen
class TreeUsage:
    """What a source tree takes in a filesystem."""

    inodes: int  # inodes besides the root directory's (hard links count once)
    blocks: int  # ext blocks: data, directories (the root's too), mapping and xattr blocks
    bytes: int  # apparent size of the files (for messages)
    newest_mtime: int


def scan_tree(root: Path, fs_type: str | None = None) -> TreeUsage:
    """Measure the tree at `root`; `blocks` is computed only for ext2/3/4."""
    ext = fs_type in EXT_TYPES
    extents = fs_type == "ext4"
    inodes = blocks = size = 0
    newest = int(root.stat().st_mtime)
    seen: set[tuple[int, int]] = set()
    stack: list[tuple[Path, bool]] = [(root, True)]
    while stack:
        directory, is_root = stack.pop()
        names: list[int] = [len(b"lost+found")] if is_root else []
        for entry in _listdir(directory):
            st = entry.stat(follow_symlinks=False)
            newest = max(newest, int(st.st_mtime))
            names.append(len(os.fsencode(entry.name)))
            if not stat.S_ISDIR(st.st_mode) and st.st_nlink > 1:
                if (st.st_dev, st.st_ino) in seen:
                    continue
                seen.add((st.st_dev, st.st_ino))
            inodes += 1
            if stat.S_ISDIR(st.st_mode):
                stack.append((Path(entry.path), False))
                continue
            if stat.S_ISREG(st.st_mode):
                size += st.st_size
                if ext:
                    data = -(-st.st_size // BLOCK)
                    blocks += data + mapping_blocks(data, extents=extents)
            elif stat.S_ISLNK(st.st_mode) and ext and st.st_size > _FAST_SYMLINK_MAX:
                blocks += 1
            if ext:
                blocks += _xattr_blocks(entry.path)
        if ext:
            count = dir_blocks(names, csum=extents)
            # Directory blocks are added as the directory fills, between its files' data.
            blocks += count + mapping_blocks(count, extents=extents, fragmented=True)
            if not is_root:
                blocks += _xattr_blocks(str(directory))
    return TreeUsage(inodes=inodes, blocks=blocks, bytes=size, newest_mtime=newest)


def _listdir(directory: Path) -> list[os.DirEntry[str]]:
    try:
        with os.scandir(directory) as it:
            return sorted(it, key=lambda e: e.name)
    except OSError as e:
        raise InputError(f"cannot read the source directory {directory}: {_reason(e)}") from None


def dir_blocks(name_lengths: Iterable[int], *, csum: bool) -> int:
    """Blocks of a linear directory holding these names, added in order.

    mke2fs -d links entries first-fit (libext2fs ext2fs_link) and adds a block when none has
    room; entries are 8 bytes plus the name padded to 4; metadata_csum reserves a 12-byte tail.
    """
    usable = BLOCK - (12 if csum else 0)
    free = [usable - 24]  # "." and ".."
    first = 0  # blocks before this one have no room for even the shortest entry
    for length in name_lengths:
        rec_len = 8 + (length + 3) // 4 * 4
        for i in range(first, len(free)):
            if free[i] >= rec_len:
                free[i] -= rec_len
                break
        else:
            free.append(usable - rec_len)
        while first < len(free) and free[first] < 12:
            first += 1
    return len(free)


def mapping_blocks(data: int, *, extents: bool, fragmented: bool = False) -> int:
    """Blocks that map `data` blocks: extent tree leaves (ext4) or indirect blocks (ext2/3)."""
    if extents:
        # mke2fs writes a file in one go: contiguous but for the block groups' metadata it
        # crosses (allow one break per full extent). The inode holds 4 extents itself.
        count = data if fragmented else 2 * -(-data // _EXTENT_MAX)
        return 0 if count <= 4 else -(-count // _EXTENTS_PER_LEAF)
    per = _ADDRS_PER_BLOCK
    left = data - 12  # direct blocks
    total = 0
    if left > 0:  # single indirect
        total += 1
        left -= per
    if left > 0:  # double indirect
        total += 1 + -(-min(left, per * per) // per)
        left -= per * per
    if left > 0:  # triple indirect
        leaves = -(-left // per)
        total += 1 + -(-leaves // per) + leaves
    return total


_XATTR_PREFIXES = (
    "user.",
    "trusted.",
    "security.",
    "system.posix_acl_access",
    "system.posix_acl_default",
    "system.",
)


def _xattr_blocks(path: str) -> int:
    """1 if the file's extended attributes do not fit in its inode, else 0."""
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:
        return 0
    need = 8  # entry table header and terminator
    for name in names:
        try:
            value = len(os.getxattr(path, name, follow_symlinks=False))
        except OSError:
            continue
        short = next((name[len(p) :] for p in _XATTR_PREFIXES if name.startswith(p)), name)
        need += 16 + (len(short) + 3) // 4 * 4 + (value + 3) // 4 * 4
    return 0 if not names or need <= _INLINE_XATTR_SPACE else 1


def default_journal_blocks(blocks: int) -> int:
    """libext2fs's default journal size for a filesystem of `blocks` 4 KiB blocks."""
    for limit, journal in (
        (32768, 1024),
        (256 * 1024, 4096),
        (512 * 1024, 8192),
        (4096 * 1024, 16384),
        (8192 * 1024, 32768),
        (16384 * 1024, 65536),
        (32768 * 1024, 131072),
    ):
        if blocks < limit:
            return journal
    return 262144


_MIN_JOURNAL = 1024  # blocks; mke2fs refuses less


def _has_super(group: int) -> bool:
    """sparse_super: backups in groups 0, 1 and powers of 3, 5 and 7."""
    if group <= 1:
        return True
    for base in (3, 5, 7):
        power = base
        while power < group:
            power *= base
        if power == group:
            return True
    return False


@attrs.frozen
class ExtGeometry:
    """What mke2fs makes of a block count, an inode count and a journal size."""

    blocks: int  # block count (mke2fs drops a last group too small for its metadata)
    inodes: int  # inode count (mke2fs fills the inode table blocks)
    overhead: int  # blocks in use before population, less the root directory


def ext_geometry(fs_type: str, blocks: int, inodes: int, journal: int) -> ExtGeometry | None:
    """Mirror of libext2fs ext2fs_initialize() for our parameters; None if mke2fs would refuse."""
    desc_size = 64 if fs_type == "ext4" else 32  # 64bit
    while True:
        groups = -(-blocks // _BLOCKS_PER_GROUP)
        desc_blocks = -(-groups * desc_size // BLOCK)
        per_group = -(-inodes // groups)
        if per_group > 8 * BLOCK:
            return None  # more inodes than bitmaps hold: needs more groups
        table = -(-per_group * _INODE_SIZE // BLOCK)
        per_group = (table * BLOCK // _INODE_SIZE) & ~7
        table = -(-per_group * _INODE_SIZE // BLOCK)
        last = 2 + table + (1 + desc_blocks if _has_super(groups - 1) else 0)
        rem = blocks % _BLOCKS_PER_GROUP
        if groups == 1 and rem and rem < last:
            return None
        if rem and rem < last + 50:
            blocks -= rem
            continue
        break
    metadata = groups * (2 + table) + sum(1 + desc_blocks for g in range(groups) if _has_super(g))
    if journal:
        # mke2fs refuses a journal over half the free space (checked before its tables).
        if journal * 2 > blocks - metadata:
            return None
        metadata += journal + mapping_blocks(journal, extents=fs_type == "ext4")
    return ExtGeometry(
        blocks=blocks, inodes=per_group * groups, overhead=metadata + _LOST_FOUND_BLOCKS
    )


@attrs.frozen
class ExtPlan:
    """The mke2fs parameters for one image and what they are predicted to give."""

    fs_type: str
    blocks: int  # image size in blocks
    inodes: int  # mke2fs -N
    journal: int  # journal blocks, 0 for none
    geometry: ExtGeometry
    used: int  # blocks in use after population

    @property
    def free(self) -> int:
        return self.geometry.blocks - self.used


def plan_ext(fs_type: str, usage: TreeUsage, blocks: int, percent: int = 0) -> ExtPlan | None:
    """Parameters for an image of `blocks` blocks; None if mke2fs cannot make one that small.

    Inodes: mke2fs's default density, and at least `percent` of them free too. The inode
    tables and the journal each take at most a quarter of the share that may be used, or a
    high percentage could never be met (the default density alone takes 1.6%).
    """
    used_inodes = _FIRST_INO + usage.inodes
    ratio = max(_INODE_RATIO, 25 * BLOCK // (100 - percent))
    inodes = max(blocks * BLOCK // ratio, -(-used_inodes * 100 // (100 - percent)), _FIRST_INO + 1)
    journal = 0
    if fs_type != "ext2":
        cap = blocks * (100 - percent) // 400 // _MIB_BLOCKS * _MIB_BLOCKS  # -J takes MiB
        journal = max(_MIN_JOURNAL, min(default_journal_blocks(blocks), cap))
    geometry = ext_geometry(fs_type, blocks, inodes, journal)
    if geometry is None:
        return None
    return ExtPlan(
        fs_type=fs_type,
        blocks=blocks,
        inodes=inodes,
        journal=journal,
        geometry=geometry,
        used=geometry.overhead + usage.blocks,
    )


def plan_ext_free(fs_type: str, usage: TreeUsage, percent: int) -> ExtPlan:
    """The smallest whole-MiB image with at least `percent`% of its blocks free."""
    blocks = -(-usage.blocks * 100 // (100 - percent))
    while True:
        blocks = max(_MIB_BLOCKS, -(-blocks // _MIB_BLOCKS) * _MIB_BLOCKS)
        plan = plan_ext(fs_type, usage, blocks, percent)
        if plan is not None and plan.free * 100 >= percent * plan.geometry.blocks:
            return plan
        # Metadata grows with the size, so the size needed now is a lower bound.
        need = 0 if plan is None else -(-plan.used * 100 // (100 - percent))
        blocks = max(need, blocks + _MIB_BLOCKS)
        if blocks >= 1 << 32:
            raise HookError(f"no {fs_type} filesystem leaves {percent}% free (a bug)")


# --------------------------------------------------------------------------- ext build

_NO_SPACE = re.compile(r"Could not allocate (block|inode)|No space left")


@attrs.frozen
class ExtStats:
    """A built filesystem's numbers, from `dumpe2fs -h`."""

    blocks: int
    free_blocks: int
    inodes: int
    free_inodes: int

    @property
    def used(self) -> int:
        return self.blocks - self.free_blocks


def _build_ext(ctx: _Context, job: _Job, dst: Path) -> None:
    entry, usage = job.entry, job.usage
    assert entry.fs_type is not None and entry.fs_size is not None
    fs_type, size = entry.fs_type, entry.fs_size
    if not size.percent:
        plan = plan_ext(fs_type, usage, size.value // BLOCK)
        if plan is None or plan.free < 0:
            raise _does_not_fit(ctx, entry, usage, size)
        if not _make_ext(ctx, job, plan, dst):
            raise _does_not_fit(ctx, entry, usage, size)
        _report(ctx, entry, plan, _check_ext(ctx, dst))
        return

    plan = plan_ext_free(fs_type, usage, size.value)
    for attempt in range(4):
        stats = _check_ext(ctx, dst) if _make_ext(ctx, job, plan, dst) else None
        if stats is not None and stats.free_blocks * 100 >= size.value * stats.blocks:
            _report(ctx, entry, plan, stats)
            return
        if attempt == 3:
            break
        # The estimate was short: add what was missing (or a quarter if it did not fit).
        missing = (plan.blocks // 4 if stats is None else stats.used - plan.used) + _MIB_BLOCKS
        usage = attrs.evolve(usage, blocks=usage.blocks + missing)
        plan = plan_ext_free(fs_type, usage, size.value)
        retry = human(plan.blocks * BLOCK)
        ctx.log(f"{entry.filename}: less than {size} free, retrying with {retry}")
    raise HookError(
        f"{ctx.where(entry)}: could not size {entry.filename} to leave {size} free "
        "after four attempts (a bug in the size estimate)"
    )


def _does_not_fit(ctx: _Context, entry: AitabEntry, usage: TreeUsage, size: Size) -> InputError:
    assert entry.fs_type is not None
    need = plan_ext_free(entry.fs_type, usage, 0)
    # At least one MiB more than requested, should mke2fs disagree with the estimate.
    mib = max(-(-need.blocks // _MIB_BLOCKS), size.value // MiB + 1)
    return InputError(
        f"{ctx.where(entry)}: field fs_size: {entry.name} needs at least "
        f"{mib} MiB as {entry.fs_type} ({human(usage.bytes)} of files, "
        f"about {human(need.used * BLOCK)} used with metadata), more than the {size.value // MiB} "
        "MiB requested; give a larger size or a share of free space such as 10%"
    )


def _make_ext(ctx: _Context, job: _Job, plan: ExtPlan, dst: Path) -> bool:
    """Make and populate the filesystem; False if the content did not fit."""
    entry, src = job.entry, job.source
    fs_uuid = str(image_uuid(ctx.basedir, entry.arch, entry.name, ctx.epoch))
    src_stat = src.stat()
    owner = "0:0" if ctx.root_owned else f"{src_stat.st_uid}:{src_stat.st_gid}"
    config = ctx.scratch / "mke2fs.conf"
    config.write_text(_MKE2FS_CONF, encoding="utf-8")
    env = {"MKE2FS_CONFIG": str(config), "E2FSPROGS_FAKE_TIME": str(ctx.epoch)}

    with dst.open("wb") as f:  # a sparse file of the exact size
        f.truncate(plan.blocks * BLOCK)
    argv = [
        "mke2fs",
        "-F",
        "-q",
        "-t",
        plan.fs_type,
        "-T",
        "default",
        "-b",
        str(BLOCK),
        "-I",
        str(_INODE_SIZE),
        "-N",
        str(plan.inodes),
        "-m",
        "0",
        "-U",
        fs_uuid,
        "-E",
        f"root_owner={owner},hash_seed={fs_uuid},lazy_itable_init=0,lazy_journal_init=0",
    ]
    if plan.journal:
        argv += ["-J", f"size={plan.journal * BLOCK // MiB}"]
    argv += ["-d", str(src), str(dst), str(plan.blocks)]
    proc = run_tool(argv, ctx.log, env=env, check=False)
    if proc.returncode != 0:
        if _NO_SPACE.search(proc.stderr):
            return False
        raise tool_failure("mke2fs", proc)

    # Inodes by number, not by path: a lookup in a large linear directory (mke2fs -d makes no
    # htree) costs a scan of it, and /usr/share/man/man1 has thousands of entries.
    inodes = used_inodes(run_tool(["dumpe2fs", str(dst)], ctx.log).stdout)
    root_mode = stat.S_IFDIR | stat.S_IMODE(src.stat().st_mode)
    script = ctx.scratch / "debugfs.cmds"
    with script.open("w", encoding="ascii") as f:
        f.writelines(
            fixup_commands(inodes, ctx.epoch, root_owned=ctx.root_owned, root_mode=root_mode)
        )
    proc = run_tool(
        ["debugfs", "-w", "-f", str(script), str(dst)],
        ctx.log,
        env={"E2FSPROGS_FAKE_TIME": str(ctx.epoch)},
        stdout=False,
    )
    # debugfs exits 0 whatever its commands do; anything but its banner is an error.
    errors = [line for line in proc.stderr.splitlines() if line and not line.startswith("debugfs ")]
    if errors:
        raise HookError(f"debugfs could not fix up {dst.name}: {' / '.join(errors[-3:])}")
    return True


def used_inodes(dumpe2fs: str) -> list[int]:
    """The inodes in use, read from the per-group `Free inodes:` lists of `dumpe2fs`."""
    match = re.search(r"^Inodes per group:\s+(\d+)$", dumpe2fs, re.MULTILINE)
    if match is None:
        raise HookError("dumpe2fs printed no inode count per group")
    per_group = int(match.group(1))
    used: list[int] = []
    groups = re.findall(
        r"^Group (\d+):.*?^  Free inodes: *([-0-9, ]*)$", dumpe2fs, re.MULTILINE | re.DOTALL
    )
    for group, ranges in groups:
        first = int(group) * per_group + 1
        free: set[int] = set()
        for item in filter(None, (r.strip() for r in ranges.split(","))):
            low, _, high = item.partition("-")
            free.update(range(int(low), int(high or low) + 1))
        used += [ino for ino in range(first, first + per_group) if ino not in free]
    return used


def fixup_commands(
    inodes: Iterable[int], epoch: int, *, root_owned: bool, root_mode: int
) -> Iterator[str]:
    """debugfs commands: every inode's times, (non-root) owners, and the root's mode.

    Inodes 1 and 3..10 are reserved (the journal, bad blocks...) and stay as mke2fs made them.
    """
    yield f"sif <2> mode 0{root_mode:o}\n"
    for ino in inodes:
        if ino != 2 and ino < _FIRST_INO:
            continue
        for field in ("atime", "mtime", "ctime"):
            yield f"sif <{ino}> {field} @{epoch}\n"
        if root_owned:
            yield f"sif <{ino}> uid 0\nsif <{ino}> gid 0\n"


def _check_ext(ctx: _Context, image: Path) -> ExtStats:
    run_tool(["e2fsck", "-fn", str(image)], ctx.log)
    return ext_stats(run_tool(["dumpe2fs", "-h", str(image)], ctx.log).stdout)


def ext_stats(dumpe2fs_h: str) -> ExtStats:
    fields = dict(line.split(":", 1) for line in dumpe2fs_h.splitlines() if ":" in line)
    number = {k.strip(): v.strip() for k, v in fields.items()}
    return ExtStats(
        blocks=int(number["Block count"]),
        free_blocks=int(number["Free blocks"]),
        inodes=int(number["Inode count"]),
        free_inodes=int(number["Free inodes"]),
    )


def _report(ctx: _Context, entry: AitabEntry, plan: ExtPlan, stats: ExtStats) -> None:
    share = 100 * stats.free_blocks / stats.blocks
    ctx.log(
        f"{entry.name}.fs: {plan.fs_type} of {human(plan.blocks * BLOCK)}, "
        f"{human(stats.free_blocks * BLOCK)} free ({share:.1f}%), "
        f"{stats.free_inodes} of {stats.inodes} inodes free"
    )


# --------------------------------------------------------------------------- btrfs


def _build_btrfs(ctx: _Context, job: _Job, dst: Path) -> None:
    """mkfs.btrfs --rootdir, where available (not reproducible: btrfs-progs stamps times)."""
    entry, usage = job.entry, job.usage
    assert entry.fs_size is not None
    if not _btrfs_rootdir(ctx.log):
        raise InputError(
            f"{ctx.where(entry)}: cannot make btrfs images on this host: needs "
            "mkfs.btrfs with --rootdir (Debian package btrfs-progs)"
        )
    size = entry.fs_size
    fs_uuid = str(image_uuid(ctx.basedir, entry.arch, entry.name, ctx.epoch))
    # A first guess (btrfs duplicates its metadata and needs 114 MiB at least); mkfs.btrfs
    # itself enlarges a file too small for the tree, so the result is checked, not computed.
    nbytes = size.value
    if size.percent:
        content = usage.bytes + 2 * usage.inodes * BLOCK
        nbytes = max(114 * MiB, content * 100 // (100 - size.value))
    for _attempt in range(4):
        nbytes = -(-nbytes // MiB) * MiB
        with dst.open("wb") as f:
            f.truncate(nbytes)
        run_tool(
            ["mkfs.btrfs", "-q", "-f", "-U", fs_uuid, "--rootdir", str(job.source), str(dst)],
            ctx.log,
        )
        dump = run_tool(["btrfs", "inspect-internal", "dump-super", str(dst)], ctx.log).stdout
        total, used = (_dump_super_field(dump, key) for key in ("total_bytes", "bytes_used"))
        if not size.percent and dst.stat().st_size > nbytes:
            raise InputError(
                f"{ctx.where(entry)}: field fs_size: {entry.name} needs {human(total)} as btrfs "
                f"({human(usage.bytes)} of files), more than the {size.value // MiB} MiB requested"
            )
        if not size.percent or (total - used) * 100 >= size.value * total:
            ctx.log(f"{entry.name}.fs: btrfs of {human(total)}, {human(total - used)} free")
            return
        nbytes = max(nbytes * 5 // 4, used * 100 // (100 - size.value) + 16 * MiB)
    raise HookError(f"{ctx.where(entry)}: could not size {entry.filename} to leave {size} free")


def _btrfs_rootdir(log: Log) -> bool:
    """Whether this host's mkfs.btrfs can populate a filesystem from a directory."""
    if shutil.which("mkfs.btrfs", path=search_path()) is None:
        return False
    proc = run_tool(["mkfs.btrfs", "--help"], log, check=False)
    return "--rootdir" in proc.stdout + proc.stderr


def _dump_super_field(dump: str, key: str) -> int:
    match = re.search(rf"^{key}\s+(\d+)", dump, re.MULTILINE)
    if match is None:
        raise HookError(f"btrfs inspect-internal dump-super printed no {key}")
    return int(match.group(1))


# --------------------------------------------------------------------------- ISO


def make_iso(
    out: Path,
    iso: Path,
    label: str,
    epoch: int,
    log: Log,
    *,
    boot_loaders: loaders.Loaders | None = None,
) -> Path:
    """An ISO 9660 image of `out` (Rock Ridge names, level 3 for files over 4 GiB).

    With `boot_loaders`, one that boots by itself: isolinux, GRUB and their menus are written
    into `out`, and the EFI system partition is appended (loaders.py).
    """
    label = _check_iso(out, iso, label)
    stamp = loaders.volume_date(epoch)
    part = iso.with_name(f".{iso.name}.part")
    part.unlink(missing_ok=True)
    log(f"writing {iso} (label {label}) from {out}")
    with tempfile.TemporaryDirectory(prefix=".archiso-iso-", dir=iso.parent) as scratch:
        boot_args: list[str] = []
        if boot_loaders is not None:
            setup = loaders.write_loaders(
                out, boot_loaders, epoch=epoch, scratch=Path(scratch), log=log
            )
            boot_args = setup.xorriso_args()
        try:
            # -no_rc first: no start-up file of xorriso's can change the result.
            # -rational-rock: owners 0 and modes a+r, so the builder's uid does not leak in;
            # --modification-date also fixes the volume's "UUID" blkid and GRUB report.
            run_tool(
                ["xorriso", "-no_rc", "-as", "mkisofs", "-quiet", "-o", str(part), "-V", label,
                 "-iso-level", "3", "-rational-rock", f"--modification-date={stamp}",
                 "--set_all_file_dates", f"={epoch}", *boot_args, str(out)],
                log,
                env={"SOURCE_DATE_EPOCH": str(epoch)},
            )  # fmt: skip
            part.replace(iso)
        finally:
            part.unlink(missing_ok=True)
    log(f"wrote {iso} ({human(iso.stat().st_size)})")
    return iso
