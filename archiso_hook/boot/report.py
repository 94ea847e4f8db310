"""The boot report, /run/archiso/report.json: what a successful boot did, for people and tools.

Written once, when the live root is ready: the parameters in effect (defaults filled in),
the medium and how it was found, every image with where it was read from and how it is
mounted, and the boot's timings. /run moves into the live system at switch_root, so the
report stays there, readable by every user (mode 0644; it holds nothing secret). Unlike
the state file (root only, added to at every step, for `status` and the teardown), it is
written once and never changes.

`build_report` and `medium_report` are pure: everything comes in as arguments. The
executor gathers them when the live root is ready and `write`s the file; a report that
cannot be written is a warning, never a failed boot.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

import attrs

from archiso_hook import __version__
from archiso_hook.boot import procfs
from archiso_hook.log import Log
from archiso_hook.options import Options
from archiso_hook.paths import BOOTMNT, REPORT_FILE
from archiso_hook.plan import BootPlan, ImagePlan

VERSION = 1
REPORT_NAME = os.path.basename(REPORT_FILE)  # beside the state file


@attrs.frozen
class MediumReport:
    """Where the images came from."""

    found_by: str  # the parameter that named it, or "already mounted" (by another hook)
    device: str | None  # the block device mounted at BOOTMNT (a loop device for an ISO file)
    fstype: str | None
    iso_file: str | None = None  # img_loop=: the ISO file behind that loop device
    iso_device: str | None = None  # and the disk holding it
    released: bool = False  # copytoram: unmounted and detached, it can be removed

    def to_json(self) -> dict[str, Any]:
        return {"mountpoint": None if self.released else BOOTMNT, **attrs.asdict(self)}


def found_by(options: Options, *, premounted: bool) -> str:
    """How the medium was looked for, in the order `plan.medium_steps` decides it."""
    if premounted:
        return "already mounted"
    if options.network_source:  # http, nbd or nfs
        return f"archiso_{options.network_source}_srv"
    if options.iso_device and options.img_loop:
        return "img_label" if options.img_label else "img_dev"
    if options.search_uuid:
        return "archisosearchuuid"
    if options.search_file:
        return "archisosearchfilename"
    return "archisodevice" if options.device else "archisolabel"


def _find(resources: Sequence[Mapping[str, Any]], kind: str, **match: Any) -> dict[str, Any]:
    for resource in resources:
        if resource["kind"] == kind and all(resource.get(k) == v for k, v in match.items()):
            return {k: v for k, v in resource.items() if k != "kind"}
    return {}


def _image(
    image: ImagePlan, resources: Sequence[Mapping[str, Any]], copies: Mapping[str, str]
) -> dict[str, Any]:
    entry = image.entry
    mount = _find(resources, "mount", live_path=entry.mount)
    snapshot = _find(resources, "dm", name=image.dm_name) if image.dm_name else {}
    cow = _find(resources, "file", path=image.cow_file) if image.cow_file else {}
    return {
        "name": entry.name,
        "mount": entry.mount,
        "type": str(entry.type),
        "arch": entry.arch,
        "aitab_line": entry.line,
        "path": image.path,
        "read_from": copies.get(image.path, image.path),
        "copied_to_ram": image.path in copies,
        "fs_type": entry.fs_type,
        "mounted": {
            "source": mount.get("source"),
            "fstype": mount.get("fstype"),
            "read_only": mount.get("read_only"),
        }
        if mount
        else None,
        "snapshot": {
            "device": snapshot.get("device"),
            "mode": snapshot.get("mode"),
            "chunk_sectors": snapshot.get("chunk_sectors"),
            "table": snapshot.get("table"),
        }
        if snapshot
        else None,
        "cow_file": {
            "path": cow["path"],
            "bytes": cow.get("apparent_bytes"),
            "kept": cow.get("kept"),
        }
        if cow
        else None,
    }


def build_report(
    options: Options,
    plan: BootPlan,
    *,
    medium: MediumReport,
    resources: Sequence[Mapping[str, Any]],
    copies: Mapping[str, str],
    timings: Mapping[str, float],
    cow: Mapping[str, Any],
    hook_version: str = __version__,
) -> dict[str, Any]:
    """The report of a finished boot, as JSON-ready data.

    `resources` are the state file's records of what exists now (mounts, loops, dm devices,
    COW files), `copies` maps an image on the medium to its copy in RAM, `timings` are the
    boot's measured phases in seconds, `cow` is what the watchdog may do.
    """
    return {
        "version": VERSION,
        "hook_version": hook_version,
        "newroot": plan.newroot,
        "parameters": options.as_parameters(),
        "debug": options.debug,
        "warnings": list(options.warnings),
        "medium": medium.to_json(),
        "aitab": plan.aitab,
        "images": [_image(image, resources, copies) for image in plan.images],
        "cow": dict(cow),
        "timings": dict(timings),
    }


def write(path: str, report: Mapping[str, Any]) -> None:
    """Atomically (a reader sees the old file or the whole new one), mode 0644."""
    tmp = f"{path}.tmp"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            os.fchmod(f.fileno(), 0o644)  # whatever the umask
            json.dump(report, f, indent=1)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def medium_report(
    options: Options, resources: Sequence[Mapping[str, Any]], medium: Any, isodev: Any
) -> MediumReport:
    """Where the images came from: `medium` is the medium's device path, or the loop
    device of an ISO file (with .path and .backing), or None; `isodev` the device that
    holds the ISO file."""
    mount = _find(resources, "mount", target=BOOTMNT)
    # Another hook mounted BOOTMNT (the boot from a server keeps no ref of it).
    premounted = medium is None and isodev is None and not options.network_source
    device, iso_file = (medium, None) if medium is None or isinstance(medium, str) else (
        medium.path, medium.backing)  # fmt: skip
    device = mount.get("source") or device
    return MediumReport(
        found_by=found_by(options, premounted=premounted),
        device=None if device is None else str(device),
        fstype=mount.get("fstype"),
        iso_file=iso_file,
        iso_device=None if isodev is None else str(isodev),
        released=not mount and not premounted,
    )


def save(
    path: str,
    *,
    options: Options,
    plan: BootPlan,
    state: Any,
    medium: MediumReport,
    copies: Mapping[str, str],
    log: Log,
) -> None:
    """Write the report of the boot that just succeeded (`state`: its boot/state.State);
    a failure only warns: the live root is ready, and a report never fails it."""
    try:
        timings = dict(state.timings)
        uptime = procfs.uptime()
        if uptime is not None:  # since the kernel started: when the live root was ready
            timings["uptime_seconds"] = round(uptime, 3)
        write(
            path,
            build_report(
                options,
                plan,
                medium=medium,
                resources=state.resources,
                copies=copies,
                timings=timings,
                cow=state.cow,
            ),
        )
    except Exception as e:  # noqa: BLE001
        log.warning(f"could not write the boot report {path}: {e}")
