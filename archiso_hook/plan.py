"""Plan a boot: (options, aitab, arch) -> the ordered steps, without touching anything.

The steps are steps.py's; the executor (boot/executor.py) carries them out, and
`archiso-hook plan` prints them (BootPlan.describe, to_json).
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
from archiso_hook.netconf import boot_config
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
from archiso_hook.sizes import Size
from archiso_hook.steps import (
    AttachLoop,
    AttachNbd,
    BringUpNetwork,
    CreateCowFile,
    CreateSnapshot,
    FetchHttp,
    FindMedium,
    LoadModules,
    MakeDirectory,
    Mount,
    MountNfs,
    PrepareImages,
    Remount,
    SearchMedium,
    SizeCowFiles,
    Step,
    VerifySignatures,
)

# Each snapshot is named PREFIX_IMAGE with the uuid ARCHISO-PREFIX_IMAGE (paths.py), which
# the teardown checks before removing it.


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
