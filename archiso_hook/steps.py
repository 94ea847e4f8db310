"""The steps of a boot plan (plan.py): what each does, with the values it needs, and how
`archiso-hook plan` tells it (describe). The executor (boot/executor.py) carries them out.
"""

from __future__ import annotations

import attrs

from archiso_hook.cmdline import CopyMode, CowMode
from archiso_hook.netconf import Autoconf, IpConfig, NfsExport
from archiso_hook.sizes import Size


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
