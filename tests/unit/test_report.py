"""The boot report (/run/archiso/report.json): built from what the boot recorded."""

from __future__ import annotations

import io
import json
import os
import stat
from pathlib import Path
from typing import Any

import pytest

from archiso_hook.aitab import parse_aitab
from archiso_hook.boot import report
from archiso_hook.boot.executor import Boot
from archiso_hook.boot.report import MediumReport, build_report, found_by
from archiso_hook.cmdline import Arch
from archiso_hook.log import Log
from archiso_hook.options import parse_options
from archiso_hook.paths import BOOTMNT
from archiso_hook.plan import BootPlan, plan_boot

AITAB = "root / x86_64 xz ext4 50%\nshare /usr/share any xz none 0\n"
COW = "/run/archiso/cowspace/persistent_LIVE/x86_64/root.cow"
ROOT_IMG = "/run/archiso/bootmnt/arch/x86_64/root.fs.sfs"
SHARE_IMG = "/run/archiso/bootmnt/arch/any/share.sfs"


def plan_for(cmdline: str) -> BootPlan:
    options = parse_options(cmdline, machine_arch=Arch.X86_64)
    return plan_boot(options, parse_aitab(AITAB, "aitab"), aitab=f"{BOOTMNT}/arch/aitab")


# What Boot records in the state file for the sample aitab, in the order it happens.
RESOURCES: list[dict[str, Any]] = [
    {"kind": "mount", "target": BOOTMNT, "source": "/dev/sr0", "fstype": "iso9660",
     "read_only": True, "live_path": None},
    {"kind": "mount", "target": "/run/archiso/cowspace", "source": "cowspace",
     "fstype": "tmpfs", "read_only": False, "live_path": None},
    {"kind": "loop", "device": "/dev/loop0", "backing": ROOT_IMG, "read_only": True},
    {"kind": "file", "path": COW, "apparent_bytes": 268435456, "kept": False},
    {"kind": "dm", "name": "arch_root", "device": "/dev/mapper/arch_root", "devno": "254:0",
     "mode": "PO", "chunk_sectors": 8, "table": "0 131072 snapshot 7:1 7:2 PO 8"},
    {"kind": "mount", "target": "/new_root", "source": "/dev/mapper/arch_root",
     "fstype": "ext4", "read_only": False, "live_path": "/"},
    {"kind": "mount", "target": "/new_root/usr/share", "source": "/dev/loop3",
     "fstype": "squashfs", "read_only": True, "live_path": "/usr/share"},
]  # fmt: skip


def test_a_boot_from_a_disc() -> None:
    plan = plan_for("archisobasedir=arch archisolabel=LIVE cow_spacesize=1G archisoflags=ro")
    medium = MediumReport(found_by="archisolabel", device="/dev/sr0", fstype="iso9660")
    data = build_report(
        plan.options,
        plan,
        medium=medium,
        resources=RESOURCES,
        copies={},
        timings={"mount_seconds": 1.5, "hook_seconds": 2.0},
        cow={"space": "/run/archiso/cowspace", "tmpfs": True, "grow": True, "grow_max": 1 << 29},
    )
    # The parameters in effect: as given, and the defaults the boot derived.
    params = data["parameters"]
    assert params["cow_spacesize"] == "1G"
    assert params["archisodevice"] == "/dev/disk/by-label/LIVE"
    assert params["cow_persistent"] == "PO"
    assert params["cow_directory"] == "persistent_LIVE/x86_64"
    assert [w.split(",")[0] for w in data["warnings"]] == [
        "archisoflags= is an old archiso parameter"
    ]
    assert data["medium"] == {
        "mountpoint": BOOTMNT,
        "found_by": "archisolabel",
        "device": "/dev/sr0",
        "fstype": "iso9660",
        "iso_file": None,
        "iso_device": None,
        "released": False,
    }
    root, share = data["images"]
    assert root["mount"] == "/" and root["type"] == "fs.sfs" and root["aitab_line"] == 1
    assert root["read_from"] == ROOT_IMG and not root["copied_to_ram"]
    assert root["mounted"] == {
        "source": "/dev/mapper/arch_root",
        "fstype": "ext4",
        "read_only": False,
    }
    assert root["snapshot"]["mode"] == "PO" and root["snapshot"]["chunk_sectors"] == 8
    assert root["cow_file"] == {"path": COW, "bytes": 268435456, "kept": False}
    assert share["mounted"]["fstype"] == "squashfs" and share["mounted"]["read_only"]
    assert share["snapshot"] is None and share["cow_file"] is None
    assert data["timings"] == {"mount_seconds": 1.5, "hook_seconds": 2.0}
    assert data["cow"]["grow_max"] == 1 << 29
    assert json.loads(json.dumps(data)) == data  # plain JSON, nothing that only Python reads


def test_copies_in_ram_and_a_released_medium() -> None:
    plan = plan_for("archisolabel=LIVE copytoram=y")
    copies = {ROOT_IMG: "/run/archiso/copytoram/root.fs.sfs"}
    without_medium = [r for r in RESOURCES if r.get("target") != BOOTMNT]
    medium = MediumReport("archisolabel", "/dev/sdb1", None, released=True)
    data = build_report(
        plan.options,
        plan,
        medium=medium,
        resources=without_medium,
        copies=copies,
        timings={},
        cow={},
    )
    root, share = data["images"]
    assert root["read_from"] == "/run/archiso/copytoram/root.fs.sfs" and root["copied_to_ram"]
    assert share["read_from"] == SHARE_IMG and not share["copied_to_ram"]
    assert data["medium"]["released"] and data["medium"]["mountpoint"] is None
    assert data["parameters"]["copytoram"] == "y"


def test_an_image_the_state_does_not_show_is_reported_as_not_mounted() -> None:
    plan = plan_for("archisolabel=LIVE")
    data = build_report(
        plan.options,
        plan,
        medium=MediumReport("archisolabel", "/dev/sr0", "iso9660"),
        resources=[],
        copies={},
        timings={},
        cow={},
    )
    assert [(i["name"], i["mounted"], i["snapshot"]) for i in data["images"]] == [
        ("root", None, None),
        ("share", None, None),
    ]


@pytest.mark.parametrize(
    ("cmdline", "premounted", "expected"),
    [
        ("archisolabel=L", False, "archisolabel"),
        ("archisolabel=L archisodevice=UUID=1234-5678", False, "archisodevice"),
        ("archisosearchuuid=1234-5678", False, "archisosearchuuid"),
        ("archisosearchfilename=/live.id archisolabel=L", False, "archisosearchfilename"),
        ("img_dev=/dev/vda1 img_loop=/arch.iso", False, "img_dev"),
        ("img_dev=/dev/vda1 img_label=DATA img_loop=/arch.iso archisolabel=L", False, "img_label"),
        ("archisolabel=L", True, "already mounted"),
        ("archiso_http_srv=http://10.0.2.2/ archisolabel=L", False, "archiso_http_srv"),
        ("archiso_nbd_srv=10.0.2.2", False, "archiso_nbd_srv"),
        ("archiso_nfs_srv=10.0.2.2:/srv/arch", False, "archiso_nfs_srv"),
    ],
)
def test_how_the_medium_was_found(cmdline: str, premounted: bool, expected: str) -> None:
    assert found_by(parse_options(cmdline), premounted=premounted) == expected


def test_written_atomically_and_readable_by_all_whatever_the_umask(tmp_path: Path) -> None:
    path = tmp_path / "report.json"
    path.write_text("old")
    old_umask = os.umask(0o077)
    try:
        report.write(str(path), {"version": 1, "images": []})
    finally:
        os.umask(old_umask)
    assert json.loads(path.read_text()) == {"version": 1, "images": []}
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]  # no temporary left


def test_a_failed_write_leaves_the_old_report_and_no_temporary(tmp_path: Path) -> None:
    path = tmp_path / "report.json"
    path.write_text('{"version": 1}\n')
    with pytest.raises(TypeError):
        report.write(str(path), {"not JSON": object()})
    assert path.read_text() == '{"version": 1}\n'
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]


def finished_boot(tmp_path: Path, cmdline: str, stream: io.StringIO) -> tuple[Boot, BootPlan]:
    """A Boot as its run() leaves it after success (nothing here touches the kernel)."""
    plan = plan_for(cmdline)
    boot = Boot(plan.options, "/new_root", Log(stream=stream), state_file=str(tmp_path / "s.json"))
    boot.state.resources = [dict(r) for r in RESOURCES]
    boot.state.timings = {"mount_seconds": 1.25}
    return boot, plan


def test_save_for_a_finished_boot_writes_beside_the_state_file(tmp_path: Path) -> None:
    stream = io.StringIO()
    boot, plan = finished_boot(tmp_path, "archisolabel=LIVE", stream)
    boot.refs["medium"] = "/dev/sr0"
    boot.save_report(plan)
    data = json.loads((tmp_path / "report.json").read_text())
    assert data["medium"]["device"] == "/dev/sr0" and data["medium"]["found_by"] == "archisolabel"
    assert data["timings"]["mount_seconds"] == 1.25
    assert data["timings"]["uptime_seconds"] > 0  # this machine's uptime, from /proc/uptime
    assert [i["name"] for i in data["images"]] == ["root", "share"]
    assert stream.getvalue() == ""


def test_save_for_a_medium_mounted_by_another_hook(tmp_path: Path) -> None:
    boot, plan = finished_boot(tmp_path, "archisolabel=LIVE", io.StringIO())
    boot.state.resources = [r for r in boot.state.resources if r.get("target") != BOOTMNT]
    boot.save_report(plan)
    medium = json.loads((tmp_path / "report.json").read_text())["medium"]
    assert medium["found_by"] == "already mounted" and not medium["released"]


def test_save_for_a_boot_from_an_nfs_server_after_copytoram(tmp_path: Path) -> None:
    boot, plan = finished_boot(tmp_path, "archiso_nfs_srv=10.0.2.2:/srv/arch", io.StringIO())
    # NFS copies to RAM and unmounts the export: nothing of the medium is left.
    boot.state.resources = [r for r in boot.state.resources if r.get("target") != BOOTMNT]
    boot.image_paths[ROOT_IMG] = "/run/archiso/copytoram/root.fs.sfs"
    boot.save_report(plan)
    data = json.loads((tmp_path / "report.json").read_text())
    assert data["medium"]["found_by"] == "archiso_nfs_srv" and data["medium"]["released"]
    assert data["images"][0]["copied_to_ram"]


def test_a_report_that_cannot_be_written_is_a_warning(tmp_path: Path) -> None:
    stream = io.StringIO()
    boot, plan = finished_boot(tmp_path / "missing-dir", "archisolabel=LIVE", stream)
    boot.save_report(plan)  # does not raise: the live root is ready all the same
    assert stream.getvalue().startswith(
        f"archiso-hook: warning: could not write the boot report {tmp_path}/missing-dir/"
        "report.json: [Errno 2] No such file or directory"
    )
