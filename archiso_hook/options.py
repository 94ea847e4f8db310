"""What a kernel command line says: Options, typed once from the words by parse_options
through the PARAMETERS table (cmdline.py), with the defaults and what takes effect.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from typing import Any

import attrs

from archiso_hook import netconf
from archiso_hook.cmdline import (
    ALIASES,
    NOT_YET_SUPPORTED,
    OBSOLETE,
    PARAMETERS,
    RENAMED,
    Arch,
    CopyMode,
    CowMode,
    device_path,
    split_cmdline,
)
from archiso_hook.errors import InputError
from archiso_hook.sizes import Size

_BY_NAME = {p.name: p for p in PARAMETERS}


DEFAULT_COW_SPACESIZE = Size(256 * 1024 * 1024)  # archiso's default since 2014
DEFAULT_COPYTORAM_SIZE = Size(75, percent=True)
DEFAULT_COW_GROW_MAX = Size(50, percent=True)
DEFAULT_HTTP_SPC = Size(75, percent=True)


def _default_arch() -> Arch:
    return Arch.of_machine()


@attrs.frozen
class Options:
    """Everything the hook was told on the kernel command line, as given (validated).

    Properties derive what takes effect: the devices behind labels and tags, the
    default COW mode and directory.
    """

    basedir: str = "arch"
    label: str | None = None
    device: str | None = None
    search_uuid: str | None = None
    search_filename: str | None = None
    img_dev: str | None = None
    img_label: str | None = None
    img_loop: str | None = None
    img_flags: str | None = None
    arch: Arch = attrs.field(factory=_default_arch)
    cow_spacesize: Size = DEFAULT_COW_SPACESIZE
    cow_label: str | None = None
    cow_device: str | None = None
    cow_directory: str | None = None
    cow_flags: str | None = None
    cow_persistent: CowMode | None = None
    cow_reset: bool = False
    cow_grow: bool | None = None
    cow_grow_max: Size = DEFAULT_COW_GROW_MAX
    cow_chunksize: int = 8
    copytoram: CopyMode | None = None  # None: not given (see copy_mode)
    copytoram_size: Size = DEFAULT_COPYTORAM_SIZE
    checksum: bool = False
    verify: bool = False
    cms_verify: bool = False
    dm_snap_prefix: str = "arch"
    rootdelay: int = 30
    quiet: bool = False
    ip: tuple[netconf.IpConfig, ...] = ()  # every ip= given, in order
    bootif: str | None = None
    copy_resolvconf: bool = True
    http_srv: str | None = None
    http_spc: Size = DEFAULT_HTTP_SPC
    nbd_srv: netconf.NbdServer | None = None
    nbd_name: str = "archiso"
    nfs_srv: netconf.NfsExport | None = None
    nfs_opt: str | None = None
    debug: bool = False
    # What was given but is not acted on, as messages for the boot log.
    warnings: tuple[str, ...] = ()

    @property
    def medium(self) -> str | None:
        """The device to wait for: archisodevice, else the udev by-label link."""
        if self.device:
            return device_path(self.device)
        if self.label:
            return device_path(f"LABEL={self.label}")
        return None

    @property
    def iso_device(self) -> str | None:
        """The device holding an ISO file to boot from (img_label wins, as in archiso)."""
        if self.img_label:
            return device_path(f"LABEL={self.img_label}")
        return device_path(self.img_dev) if self.img_dev else None

    @property
    def cow_device_path(self) -> str | None:
        if self.cow_label:
            return device_path(f"LABEL={self.cow_label}")
        return device_path(self.cow_device) if self.cow_device else None

    @property
    def cow_mode(self) -> CowMode:
        """A user's cow_persistent always wins; else P on a COW device, and in RAM PO:
        when a COW in RAM fills, writes fail but reads go on (N would lose the root)."""
        if self.cow_persistent is not None:
            return self.cow_persistent
        return CowMode.P if self.cow_device_path else CowMode.PO

    @property
    def grows(self) -> bool:
        """cow_grow=, by default on for a COW in RAM and off on a device."""
        return self.cow_grow if self.cow_grow is not None else self.cow_device_path is None

    @property
    def network_source(self) -> str | None:
        """http, nbd or nfs: the boot medium is on a server."""
        servers = (("http", self.http_srv), ("nbd", self.nbd_srv), ("nfs", self.nfs_srv))
        return next((name for name, value in servers if value is not None), None)

    @property
    def network(self) -> netconf.IpConfig | None:
        """What to configure when a server needs the network: ip= as given, or DHCP.
        Without a server ip= configures nothing: the live system's own network setup
        does that, and a boot from a disc does not wait for DHCP."""
        if not self.network_source:
            return None
        try:
            return netconf.boot_config(self.ip, f"archiso_{self.network_source}_srv")
        except InputError:
            return None

    @property
    def copy_mode(self) -> CopyMode:
        """copytoram= as given; by default auto, and y when booting from NBD or NFS
        (archiso's rule: the network and server are then free once the images are in
        RAM). HTTP downloads into RAM anyway: nothing more to copy."""
        if self.network_source == "http":
            return CopyMode.N
        if self.copytoram is not None:
            return self.copytoram
        return CopyMode.Y if self.network_source in {"nbd", "nfs"} else CopyMode.AUTO

    @property
    def cow_dir(self) -> str:
        """Relative to the cowspace: archiso's persistent_<label>/<arch> by default."""
        label = (self.label or "").replace("/", "_")
        return self.cow_directory or f"persistent_{label}/{self.arch}"

    @property
    def search_file(self) -> str | None:
        """The file whose filesystem is the medium: archisosearchfilename, alone as in
        archiso, or /boot/<archisosearchuuid>.uuid by default."""
        if self.search_uuid is None:
            return self.search_filename
        return self.search_filename or f"boot/{self.search_uuid}.uuid"

    def as_parameters(self) -> dict[str, Any]:
        """The values in effect, keyed by archiso parameter name (for --json and reports)."""
        out: dict[str, Any] = {}
        for param in PARAMETERS:
            value = getattr(self, param.field)
            out[param.name] = str(value) if isinstance(value, Size | enum.Enum) else value
        out.update(
            archisodevice=self.medium,
            img_dev=self.iso_device,
            cow_device=self.cow_device_path,
            cow_directory=self.cow_dir,
            cow_persistent=str(self.cow_mode),
            cow_grow=self.grows,
            copytoram=str(self.copy_mode),
            ip=[attrs.asdict(ip, value_serializer=_json_value) for ip in self.ip],
            archiso_nbd_srv=self.nbd_srv and f"{self.nbd_srv.host}:{self.nbd_srv.port}",
            archiso_nfs_srv=self.nfs_srv and self.nfs_srv.source,
            archisosearchfilename=self.search_file and "/" + self.search_file,
        )
        return out


def _json_value(_instance: object, _field: object, value: Any) -> Any:
    if isinstance(value, tuple):
        return [str(v) for v in value]
    return value if value is None or isinstance(value, int | str) else str(value)


def parse_options(
    text: str, *, machine_arch: Arch | None = None, overrides: Iterable[tuple[str, str]] = ()
) -> Options:
    """Options from a command line; the last occurrence of a key wins, as with getarg."""
    values: dict[str, Any] = {}
    warnings: list[str] = []
    debug = False
    ips: list[netconf.IpConfig] = []
    # Bad values of network parameters: they stop only a network boot (the last word of
    # a key decides, as for every key; every ip= counts).
    network_errors: dict[str, InputError] = {}
    for key, raw in [*split_cmdline(text), *overrides]:
        value = "y" if raw is None else raw
        if key == "rd.debug":
            debug = True
        if key in ALIASES:
            new = ALIASES[key]
            warnings.append(f"{key}= is archiso's old name of {new}=: taken as {new}=; write that")
            try:
                values[_BY_NAME[new].field] = _BY_NAME[new].parse(value)
            except InputError as e:  # named as the user wrote it
                raise InputError(e.message.replace(f"{new}=", f"{key}=", 1), e.hint) from None
            continue
        if key in _BY_NAME:
            param = _BY_NAME[key]
            if not param.network:
                values[param.field] = param.parse(value)
                continue
            try:
                parsed = param.parse(value)
            except InputError as e:
                if key == "ip":
                    network_errors[f"ip={value}"] = e
                else:  # the last word decides: an earlier good one no longer counts
                    network_errors[key] = e
                    values.pop(param.field, None)
                continue
            if key == "ip":
                ips.append(parsed)
            else:
                network_errors.pop(key, None)
                values[param.field] = parsed
        elif key in NOT_YET_SUPPORTED:
            warnings.append(f"{key}= is not supported by this version of archiso-hook; ignored")
        elif key in RENAMED:
            warnings.append(f"{key}= is an old archiso parameter; use {RENAMED[key]}= instead")
        elif key in OBSOLETE:
            warnings.append(f"{key}= is an old archiso parameter, ignored: {OBSOLETE[key]}")
    servers = [k for k in ("archiso_http_srv", "archiso_nbd_srv", "archiso_nfs_srv")
               if _BY_NAME[k].field in values]  # fmt: skip
    if len(servers) > 1:
        raise InputError(f"{'= and '.join(servers)}= are both given: boot from one server")
    for error in network_errors.values():
        if servers:
            raise error
        warnings.append(f"{error.message}; ignored, as this boot does not use the network")
    if ips:
        values["ip"] = tuple(ips)
    if "arch" not in values and machine_arch is not None:
        values["arch"] = machine_arch
    return Options(**values, debug=debug, warnings=tuple(dict.fromkeys(warnings)))
