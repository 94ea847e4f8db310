"""Plan a boot: (options, aitab, arch) -> the ordered steps, without touching anything.

The executor (boot.py) carries the steps out; `archiso-hook plan` prints them.
Steps name what they create with a `ref` that later steps use (a loop device's
number is only known at run time).
"""

from __future__ import annotations

import enum
import ipaddress
import posixpath
from typing import Any

import attrs

from archiso_hook.aitab import AitabEntry, ImageType
from archiso_hook.cmdline import CopyMode, CowMode
from archiso_hook.errors import InputError
from archiso_hook.mountopts import parse_mount_options
from archiso_hook.netconf import Autoconf, IpConfig, NfsExport, boot_config
from archiso_hook.options import Options
from archiso_hook.paths import (
    BOOTMNT,
    COPYTORAM,
    COWSPACE,
    DM_NAME_MAX,
    DM_UUID_LEN,
    DM_UUID_PREFIX,
    IMG_DEV_MNT,
    SFS_DIR,
)
from archiso_hook.sizes import MiB, Size

# Each snapshot is named PREFIX_IMAGE with the uuid ARCHISO-PREFIX_IMAGE (paths.py), which
# the teardown checks before removing it.


@attrs.frozen
class LoadModules:
    names: tuple[str, ...]

    def describe(self) -> str:
        return f"load kernel modules {', '.join(self.names)} (where not built in or loaded)"


@attrs.frozen
class FindMedium:
    ref: str
    device: str
    timeout: int
    what: str = "the boot medium"
    hint: str | None = None  # for the message when it does not appear

    def describe(self) -> str:
        return f"wait up to {self.timeout} s for {self.what} {self.device}"


@attrs.frozen
class SearchMedium:
    """archisosearchuuid: the filesystem with that UUID, or the first holding the file;
    archisosearchfilename alone: the first holding the file."""

    ref: str
    uuid: str | None
    filename: str
    timeout: int

    def describe(self) -> str:
        holding = f"holding /{self.filename} (removable devices first, each looked into read-only)"
        if self.uuid is None:
            return f"wait up to {self.timeout} s for a device {holding}"
        return (
            f"wait up to {self.timeout} s for a device with filesystem UUID {self.uuid}, or "
            f"else {holding}"
        )


@attrs.frozen
class PrepareImages:
    """copytoram= and checksum=: read every image once, copying and/or verifying it,
    before anything is mounted from it; a copied medium is then released."""

    images: tuple[str, ...]  # on the medium, in aitab order
    lines: tuple[int, ...]  # their aitab lines
    copy: CopyMode
    copy_to: str
    copy_size: Size  # tmpfs size= of the copy
    verify: bool
    # Files beside each image that go along to RAM: the signatures verify= checks there.
    companions: tuple[str, ...] = ()

    def describe(self) -> str:
        what = []
        if self.copy is CopyMode.Y:
            what.append(
                f"copy the {len(self.images)} image(s) to RAM at {self.copy_to} if "
                "memory allows, then release the medium"
            )
        elif self.copy is CopyMode.AUTO:
            what.append(
                f"copy the {len(self.images)} image(s) to RAM at {self.copy_to} if it "
                f"is safe and useful ({AUTO_RULE}), then release the medium"
            )
        if self.verify:
            what.append("verify each against its .sha512 (or .md5) file, before any is used")
        return "; ".join(what)


@attrs.frozen
class VerifySignatures:
    """verify= and cms_verify=: each image's detached signature against the keys built
    into the initramfs, before anything is mounted from it (the copy in RAM, if any)."""

    images: tuple[str, ...]  # on the medium, in aitab order
    lines: tuple[int, ...]
    gpg: bool
    cms: bool

    def describe(self) -> str:
        kinds = " and ".join(
            k for k, on in (("GPG (<img>.sig)", self.gpg), ("CMS (<img>.cms.sig)", self.cms)) if on
        )
        return (
            f"check the {kinds} signature of each of the {len(self.images)} image(s) against "
            "the keys built into the initramfs, before any is used"
        )


# copytoram=auto copies only what is safe and useful, as archiso does (2e6dfe5, bedd24d).
AUTO_MAX_IMAGES = 4 << 30
AUTO_RESERVE = 2 << 30
COPY_RESERVE = 256 << 20  # copytoram=y leaves at least this much RAM to the system
AUTO_RULE = (
    "not from an optical drive, at most 4 GiB, and MemAvailable at least the images' size + 2 GiB"
)


@attrs.frozen
class Remount:
    """Make a read-only mount writable (mounting read-only first lets the COW device be
    the boot medium's own filesystem, already mounted read-only)."""

    target: str
    options: str | None = None

    def describe(self) -> str:
        opts = f" -o {self.options}" if self.options else ""
        return f"remount {self.target} read-write{opts}"


@attrs.frozen
class Mount:
    source: str  # a path, or "@ref" of an earlier step's device
    target: str
    fstype: str | None  # None: probe the superblock
    read_only: bool
    options: str | None = None
    live_path: str | None = None  # where the live system sees it after switch_root
    # Another system's disk, mounted only to read from: no journal replayed, the device
    # read-only during the mount (archiso_hook.boot.lookonly).
    look_only: bool = False

    def describe(self) -> str:
        how = "read-only" if self.read_only else "read-write"
        if self.look_only:
            how += ", without journal replay"
        fstype = self.fstype or "(probed)"
        opts = f" -o {self.options}" if self.options else ""
        return f"mount {fstype} {self.source} {how}{opts} at {self.target}"


@attrs.frozen
class MakeDirectory:
    path: str
    mode: int

    def describe(self) -> str:
        return f"create directory {self.path} (mode {self.mode:04o})"


@attrs.frozen
class AttachLoop:
    ref: str
    backing: str
    read_only: bool
    expect_fstype: str | None = None  # checked before anything mounts it
    aitab_line: int | None = None

    def describe(self) -> str:
        how = "read-only" if self.read_only else "read-write"
        return f"attach {self.backing} {how} to a free loop device [{self.ref}]"


@attrs.frozen
class SizeCowFiles:
    """Give each snapshot a COW size so that all of them together fit the cowspace."""

    space: str
    origins: tuple[str, ...]  # refs of the origin loop devices, in image order
    files: tuple[str, ...]  # their COW files, in the same order
    mode: CowMode
    chunk_sectors: int
    reuse: bool  # existing COW files are kept (persistent, not reset)

    def describe(self) -> str:
        kept = "; existing ones are kept" if self.reuse else ""
        return (
            f"size the COW files of {len(self.origins)} snapshot(s) to fit {self.space} "
            f"(never more in total than the space holds){kept}"
        )


@attrs.frozen
class CreateCowFile:
    ref: str
    path: str
    origin: str  # ref of the origin loop; its size decides the COW file's
    reuse: bool = False  # keep an existing file (persistent store, no cow_reset)

    def describe(self) -> str:
        how = "reuse, or create," if self.reuse else "create"
        return f"{how} the COW file {self.path} [{self.ref}]"


@attrs.frozen
class CreateSnapshot:
    name: str
    origin: str
    cow: str
    mode: CowMode
    chunk_sectors: int

    def describe(self) -> str:
        return (
            f"create /dev/mapper/{self.name}: 0 <origin sectors> snapshot @{self.origin} "
            f"@{self.cow} {self.mode} {self.chunk_sectors}"
        )


@attrs.frozen
class BringUpNetwork:
    config: IpConfig
    bootif: str | None
    timeout: int

    def describe(self) -> str:
        c = self.config
        where = (
            c.device
            if c.device
            else f"the interface with MAC {self.bootif}"
            if self.bootif
            else "the first network interface"
        )
        if c.autoconf is Autoconf.STATIC:
            how = f"address {c.client}/{c.prefixlen}" + (
                f", gateway {c.gateway}" if c.gateway else ""
            )
        else:
            how = "DHCP (retrying up to 60 s)"
        return f"bring up {where} (waiting up to {self.timeout} s for it) with {how}"


@attrs.frozen
class FetchHttp:
    url: str  # the base URL, may hold ${pxeserver}
    basedir: str
    arch: str
    root: str
    require_checksums: bool
    signatures: tuple[str, ...] = ()  # suffixes of the signature files fetched beside each

    def describe(self) -> str:
        signed = f" and {', '.join(self.signatures)} signatures" if self.signatures else ""
        return (
            f"fetch {self.url}{self.basedir}/aitab and the images for {self.arch} (and any), "
            f"with their checksum files{signed}, into {self.root}; verify those that have one"
        )


@attrs.frozen
class AttachNbd:
    ref: str
    host: str  # may be ${pxeserver}
    port: int
    name: str

    def describe(self) -> str:
        return f"attach NBD export {self.name!r} of {self.host}:{self.port} as /dev/nbd0"


@attrs.frozen
class MountNfs:
    export: NfsExport
    options: str | None
    target: str

    def describe(self) -> str:
        extra = f" with {self.options}" if self.options else ""
        return f"mount NFS export {self.export.source} read-only at {self.target}{extra}"


Step = (
    VerifySignatures
    | BringUpNetwork
    | FetchHttp
    | AttachNbd
    | MountNfs
    | PrepareImages
    | SearchMedium
    | Remount
    | LoadModules
    | FindMedium
    | Mount
    | MakeDirectory
    | AttachLoop
    | SizeCowFiles
    | CreateCowFile
    | CreateSnapshot
)


@attrs.frozen
class ImagePlan:
    entry: AitabEntry
    path: str  # the image file on the medium
    target: str  # where it is mounted, under the new root
    fs_image: str | None  # the filesystem image: inside the container, or `path` itself
    container: str | None  # mount point of the .fs.sfs container
    dm_name: str | None
    cow_file: str | None

    def to_json(self) -> dict[str, Any]:
        entry = self.entry
        return {
            "name": entry.name,
            "mount": entry.mount,
            "type": str(entry.type),
            "arch": entry.arch,
            "path": self.path,
            "target": self.target,
            "sfs_comp": entry.sfs_comp,
            "fs_type": entry.fs_type,
            "fs_size": None if entry.fs_size is None else str(entry.fs_size),
            "fs_image": self.fs_image,
            "container": self.container,
            "dm_name": self.dm_name,
            "cow_file": self.cow_file,
            "aitab_line": entry.line,
        }


@attrs.frozen
class BootPlan:
    options: Options
    newroot: str
    aitab: str
    images: tuple[ImagePlan, ...]
    medium_steps: tuple[Step, ...]  # before the aitab can be read
    image_steps: tuple[Step, ...]  # from the aitab

    @property
    def steps(self) -> tuple[Step, ...]:
        return self.medium_steps + self.image_steps

    def to_json(self) -> dict[str, Any]:
        return {
            "options": self.options.as_parameters(),
            "newroot": self.newroot,
            "aitab": self.aitab,
            "images": [image.to_json() for image in self.images],
            "steps": [
                {"step": _kebab(type(s).__name__), **_step_json(s), "description": s.describe()}
                for s in self.steps
            ],
        }

    def describe(self) -> str:
        source, search = self.options.network_source, self.options.search_file
        where = (
            f"{source} server"
            if source
            else "the device holding the ISO file"
            if self.options.iso_device and self.options.img_loop
            else f"the filesystem with UUID {self.options.search_uuid}, or holding /{search}"
            if search and self.options.search_uuid
            else f"the device holding /{search}"
            if search
            else self.options.medium
        )
        lines = [f"boot plan for {self.options.arch}: medium {where}, new root {self.newroot}"]
        lines += [f"{i:3d}. {step.describe()}" for i, step in enumerate(self.steps, start=1)]
        return "\n".join(lines)


def _kebab(name: str) -> str:
    return "".join("-" + c.lower() if c.isupper() else c for c in name).lstrip("-")


def _step_json(step: Step) -> dict[str, Any]:
    return {k: _json_value(v) for k, v in attrs.asdict(step, recurse=False).items()}


def _json_value(value: Any) -> Any:
    """What json.dumps takes: ip= settings and NFS exports as objects, addresses as text."""
    if isinstance(value, enum.Enum | Size | ipaddress.IPv4Address | ipaddress.IPv4Network):
        return str(value)
    if isinstance(value, tuple | list):
        return [_json_value(v) for v in value]
    if attrs.has(type(value)):
        return {k: _json_value(v) for k, v in attrs.asdict(value, recurse=False).items()}
    return value


def medium_steps(options: Options) -> tuple[Step, ...]:
    """What happens before the aitab can be read: find the medium and mount it.

    The medium is an ISO file on a disk (img_dev/img_label + img_loop), the device
    found by archisosearchuuid or archisosearchfilename, or archisodevice (archisolabel's
    link by default).
    """
    mount_medium = Mount("@medium", BOOTMNT, None, read_only=True)
    if options.network_source:
        return network_medium_steps(options, mount_medium)
    if options.iso_device or options.img_loop:
        if not (options.iso_device and options.img_loop):
            raise InputError(
                "booting an ISO file needs both img_dev= (or img_label=) and img_loop= "
                "(the path of the ISO file on that device)"
            )
        iso = f"{IMG_DEV_MNT}/{options.img_loop}"
        return (
            FindMedium(
                "isodev",
                options.iso_device,
                options.rootdelay,
                what="the device holding the ISO file",
                hint="check img_label=/img_dev= against the disk; rootdelay= sets how long to wait",
            ),
            Mount(
                "@isodev",
                IMG_DEV_MNT,
                None,
                read_only=True,
                options=options.img_flags,
                look_only=True,
            ),
            AttachLoop("medium", iso, read_only=True),
            mount_medium,
        )
    if options.search_file:
        return (
            SearchMedium("medium", options.search_uuid, options.search_file, options.rootdelay),
            mount_medium,
        )
    device = options.medium
    if device is None:
        raise InputError(
            "no boot medium given: set archisolabel= (or archisodevice=, archisosearchuuid=, "
            "archisosearchfilename=, img_label= with img_loop=) on the kernel command line"
        )
    hint = (
        "check archisolabel=/archisodevice= against the medium (a USB writing tool may "
        "have changed its label); rootdelay= sets how long to wait"
    )
    return (FindMedium("medium", device, options.rootdelay, hint=hint), mount_medium)


NFS_MODULES = ("nfs", "nfsv4", "nfsv3")


def network_medium_steps(options: Options, mount_medium: Mount) -> tuple[Step, ...]:
    """The medium on a server: the network first, then HTTP into RAM, NBD, or NFS."""
    source = options.network_source
    config = boot_config(options.ip, f"archiso_{source}_srv")
    up = BringUpNetwork(config, options.bootif, options.rootdelay)
    if options.http_srv is not None:
        space = f"size={options.http_spc},mode=0755"
        return (
            up,
            Mount("httpspace", BOOTMNT, "tmpfs", read_only=False, options=space),
            FetchHttp(
                options.http_srv,
                options.basedir,
                str(options.arch),
                BOOTMNT,
                options.checksum,
                signatures=(".sig",) * options.verify + (".cms.sig",) * options.cms_verify,
            ),
        )
    if options.nbd_srv is not None:
        server = options.nbd_srv
        return (
            LoadModules(("nbd",)),
            up,
            AttachNbd("medium", server.host, server.port, options.nbd_name),
            mount_medium,
        )
    assert options.nfs_srv is not None
    return (
        LoadModules(NFS_MODULES),
        up,
        MountNfs(options.nfs_srv, options.nfs_opt, BOOTMNT),
    )


def cowspace_steps(options: Options) -> list[Step]:
    """A tmpfs in RAM, or the filesystem of cow_device (read-only first, then writable)."""
    cowdir = f"{COWSPACE}/{options.cow_dir}"
    device = options.cow_device_path
    if device is None:
        size = f"size={options.cow_spacesize},mode=0700"
        return [
            Mount("cowspace", COWSPACE, "tmpfs", read_only=False, options=size),
            MakeDirectory(cowdir, 0o700),
        ]
    flags = parse_mount_options(options.cow_flags, what="cow_flags")
    if flags.read_only:
        raise InputError(
            f"cow_flags={options.cow_flags} asks for a read-only COW device, which "
            "cannot keep changes: drop ro"
        )
    return [
        FindMedium(
            "cowdev",
            device,
            options.rootdelay,
            what="the COW device",
            hint="check cow_label=/cow_device=; rootdelay= sets how long to wait",
        ),
        Mount("@cowdev", COWSPACE, None, read_only=True, options=options.cow_flags),
        Remount(COWSPACE, options=options.cow_flags),
        MakeDirectory(cowdir, 0o700),
    ]


def plan_boot(
    options: Options,
    entries: list[AitabEntry],
    *,
    newroot: str = "/new_root",
    aitab: str | None = None,
) -> BootPlan:
    """The whole boot, from finding the medium to the last mount under `newroot`."""
    arch = str(options.arch)
    aitab = aitab or f"{BOOTMNT}/{options.basedir}/aitab"
    selected = [e for e in entries if e.arch in (arch, "any")]
    if not selected:
        raise InputError(f"{aitab}: no image for {arch} (every line is for another architecture)")
    _check_mount_order(selected, aitab)

    base = f"{BOOTMNT}/{options.basedir}"
    cowdir = f"{COWSPACE}/{options.cow_dir}"
    # A persistent store is reused across boots unless the user starts it over.
    reuse = options.cow_mode is not CowMode.N and not options.cow_reset
    images = []
    for entry in selected:
        path = f"{base}/{entry.arch}/{entry.filename}"
        container = f"{SFS_DIR}/{entry.name}" if entry.type is ImageType.FS_SFS else None
        fs_image = {
            ImageType.SFS: None,
            ImageType.FS: path,
            ImageType.FS_SFS: f"{container}/{entry.name}.fs",
        }[entry.type]
        dm_name = f"{options.dm_snap_prefix}_{entry.name}" if entry.type.snapshot else None
        if dm_name is not None and len(dm_name.encode()) > DM_NAME_MAX:
            raise InputError(
                f"{aitab}:{entry.line}: device-mapper name {dm_name} is longer than "
                f"{DM_NAME_MAX} bytes (its uuid {DM_UUID_PREFIX}{dm_name} would not fit the "
                f"kernel's {DM_UUID_LEN - 1}); shorten dm_snap_prefix= or the image name"
            )
        images.append(
            ImagePlan(
                entry=entry,
                path=path,
                target=_under(newroot, entry.mount),
                fs_image=fs_image,
                container=container,
                dm_name=dm_name,
                cow_file=f"{cowdir}/{entry.name}.cow" if entry.type.snapshot else None,
            )
        )

    steps: list[Step] = []
    fstypes = sorted({i.entry.fs_type for i in images if i.entry.fs_type})
    modules = ["loop"] + (["squashfs"] if any(i.entry.sfs_comp for i in images) else [])
    if any(i.entry.type.snapshot for i in images):
        modules += ["dm_mod", "dm_snapshot"]
    steps.append(LoadModules(tuple(modules + [f"fs-{t}" for t in fstypes])))
    # Over HTTP the checksums were checked as the images arrived.
    verify = options.checksum and options.network_source != "http"
    if options.copy_mode is not CopyMode.N or verify:
        steps.append(
            PrepareImages(
                images=tuple(i.path for i in images),
                lines=tuple(i.entry.line for i in images),
                copy=options.copy_mode,
                copy_to=COPYTORAM,
                copy_size=options.copytoram_size,
                verify=verify,
                companions=(".sig",) * options.verify + (".cms.sig",) * options.cms_verify,
            )
        )
    if options.verify or options.cms_verify:
        steps.append(
            VerifySignatures(
                images=tuple(i.path for i in images),
                lines=tuple(i.entry.line for i in images),
                gpg=options.verify,
                cms=options.cms_verify,
            )
        )
    snapshots = [i for i in images if i.entry.type.snapshot]
    if snapshots:
        steps += cowspace_steps(options)
    # First every snapshot's origin, so the COW files can be sized against each other...
    for image in snapshots:
        name = image.entry.name
        if image.container:
            steps += [
                AttachLoop(
                    f"{name}.sfs",
                    image.path,
                    read_only=True,
                    expect_fstype="squashfs",
                    aitab_line=image.entry.line,
                ),
                Mount(f"@{name}.sfs", image.container, "squashfs", read_only=True),
            ]
        steps.append(
            AttachLoop(
                f"{name}.origin",
                image.fs_image or image.path,
                read_only=True,
                expect_fstype=_probe_name(image.entry.fs_type),
                aitab_line=image.entry.line,
            )
        )
    if snapshots:
        steps.append(
            SizeCowFiles(
                COWSPACE,
                tuple(f"{i.entry.name}.origin" for i in snapshots),
                tuple(i.cow_file for i in snapshots if i.cow_file),
                options.cow_mode,
                options.cow_chunksize,
                reuse=reuse,
            )
        )
    # ...then the mounts, in aitab order: a mount point may live inside an earlier image.
    for image in images:
        name = image.entry.name
        if image.entry.type is ImageType.SFS:
            steps += [
                AttachLoop(
                    f"{name}.sfs",
                    image.path,
                    read_only=True,
                    expect_fstype="squashfs",
                    aitab_line=image.entry.line,
                ),
                Mount(
                    f"@{name}.sfs",
                    image.target,
                    "squashfs",
                    read_only=True,
                    live_path=image.entry.mount,
                ),
            ]
            continue
        assert image.dm_name is not None and image.cow_file is not None
        steps += [
            CreateCowFile(f"{name}.cow", image.cow_file, f"{name}.origin", reuse=reuse),
            AttachLoop(f"{name}.cowdev", image.cow_file, read_only=False),
            CreateSnapshot(
                image.dm_name,
                f"{name}.origin",
                f"{name}.cowdev",
                options.cow_mode,
                options.cow_chunksize,
            ),
            Mount(
                f"/dev/mapper/{image.dm_name}",
                image.target,
                image.entry.fs_type,
                read_only=False,
                live_path=image.entry.mount,
            ),
        ]
    return BootPlan(
        options=options,
        newroot=newroot,
        aitab=aitab,
        images=tuple(images),
        medium_steps=medium_steps(options),
        image_steps=tuple(steps),
    )


def _probe_name(fs_type: str | None) -> str | None:
    """How fsprobe names a filesystem: one name for the ext family."""
    return "ext4" if fs_type in {"ext2", "ext3", "ext4"} else fs_type


def _under(root: str, mount: str) -> str:
    return root if mount == "/" else posixpath.join(root, mount.lstrip("/"))


def _check_mount_order(entries: list[AitabEntry], aitab: str) -> None:
    """Every mount point must come after the one it lives in, and / must be there."""
    if not any(e.mount == "/" for e in entries):
        raise InputError(
            f"{aitab}: no image is mounted at / for this architecture; the new root needs one"
        )
    for i, entry in enumerate(entries):
        for later in entries[i + 1 :]:
            parent = later.mount
            inside = parent == "/" or entry.mount.startswith(parent + "/")
            if inside and entry.mount != parent:
                raise InputError(
                    f"{aitab}:{entry.line}: {entry.mount} is listed before {parent} "
                    f"(line {later.line}), which would hide it; list {parent} first"
                )


# --- COW sizing (pure arithmetic, used by the executor once origin sizes are known) ---

SECTOR = 512
MIN_COW = 1 * MiB


def cow_need(origin_bytes: int, mode: CowMode, chunk_sectors: int) -> int:
    """COW bytes that let every chunk of the origin be written once.

    A transient store keeps its metadata in RAM. A persistent one writes a header
    chunk, then areas of one metadata chunk (chunk_bytes / 16 exceptions) followed
    by the data chunks it describes (drivers/md/dm-snap-persistent.c).
    """
    chunk = chunk_sectors * SECTOR
    data_chunks = -(-origin_bytes // chunk)
    if mode is CowMode.N:
        return data_chunks * chunk
    per_area = chunk // 16
    metadata_chunks = -(-data_chunks // per_area)
    return (1 + metadata_chunks + data_chunks) * chunk


def cow_sizes(origins: list[int], capacity: int, mode: CowMode, chunk_sectors: int) -> list[int]:
    """Apparent COW file sizes whose sum never exceeds `capacity`.

    A tmpfs that fills under a dm-snapshot makes the COW write fail, which
    invalidates the snapshot; a COW that fills first is an orderly overflow.
    Each image gets what it needs if all fit, else a share proportional to it.
    """
    chunk = chunk_sectors * SECTOR
    needs = [cow_need(o, mode, chunk_sectors) for o in origins]
    if sum(needs) <= capacity:
        return needs
    total = sum(needs)
    sizes = [capacity * need // total // chunk * chunk for need in needs]
    minimum = max(MIN_COW, 3 * chunk)
    if any(size < min(minimum, need) for size, need in zip(sizes, needs, strict=True)):
        raise InputError(
            f"the cowspace ({Size(capacity)}) is too small for {len(origins)} snapshot(s): each "
            f"needs at least {Size(minimum)}; raise cow_spacesize="
        )
    return sizes
