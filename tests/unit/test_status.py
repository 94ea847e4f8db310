"""`archiso-hook status` (archiso_hook/live/status.py): its text made from a status, and
a status collected from a state file, checked against this machine as it is (files in a
temporary directory, /proc/self/mountinfo, sysfs, psutil). What it reports of a booted
live system's loops and snapshots is checked in tests/vm (the live root's
`archiso-hook status --json`)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from archiso_hook.boot.state import State
from archiso_hook.errors import HookError
from archiso_hook.live import pidfile, status

MiB = 1 << 20
GiB = 1 << 30


def _status(**changes: Any) -> dict[str, Any]:
    """A status as collect() makes it, of a boot with nothing in it."""
    base: dict[str, Any] = {
        "complete": True,
        "newroot": "/new_root",
        "timings": {},
        "mounts": [],
        "loops": [],
        "snapshots": [],
        "cow_files": [],
        "cow_policy": {},
        "leftovers": 0,
        "watch": {"running": False},
    }
    return {**base, **changes}


def test_the_first_line_says_whether_the_setup_is_complete() -> None:
    assert status.format_text(_status()) == "archiso-hook: complete setup for /new_root"
    text = status.format_text(_status(complete=False, leftovers=2))
    assert text.splitlines() == [
        "archiso-hook: INCOMPLETE setup for /new_root",
        "  2 thing(s) an earlier attempt could not release are listed too: the shutdown "
        "tries again",
    ]


def test_mounts_and_loops_say_where_they_are_and_what_is_gone() -> None:
    text = status.format_text(
        _status(
            mounts=[
                {"target": "/new_root", "mounted_at": "/", "fstype": "overlay",
                 "source": "overlay", "present": True},
                {"target": "/new_root/usr", "mounted_at": None, "fstype": "squashfs",
                 "source": "/dev/loop1", "present": False},
            ],
            loops=[
                {"device": "/dev/loop0", "backing": "/run/archiso/bootmnt/a.sfs",
                 "present": True},
                {"device": "/dev/loop1", "backing": "/run/archiso/bootmnt/b.sfs",
                 "present": False},
            ],
        )
    )  # fmt: skip
    assert text.splitlines()[1:] == [
        f"  mount    {'/':<28} overlay   overlay",
        f"  mount    {'NOT MOUNTED':<28} squashfs  /dev/loop1",
        f"  loop     {'/dev/loop0':<28} /run/archiso/bootmnt/a.sfs",
        f"  loop     {'/dev/loop1':<28} /run/archiso/bootmnt/b.sfs  (gone)",
    ]


def test_snapshots_show_their_use_their_state_or_why_they_are_missing() -> None:
    device = "/dev/mapper/arch_root-image"
    text = status.format_text(
        _status(
            snapshots=[
                {"device": device, "present": True, "state": "active", "mode": "P",
                 "allocated_sectors": 2 * 1024 * 100, "total_sectors": 2 * 1024 * 400,
                 "used_percent": 25.0},
                {"device": device, "present": True, "state": "Invalid",
                 "allocated_sectors": None},
                {"device": device, "present": False, "error": "no such device"},
            ]
        )
    )  # fmt: skip
    assert text.splitlines()[1:] == [
        f"  snapshot {device:<28} active: 100.0 MiB of 400.0 MiB COW used (25.0%), mode P",
        f"  snapshot {device:<28} Invalid",
        f"  snapshot {device:<28} MISSING: no such device",
    ]


@pytest.mark.parametrize(
    ("watch", "policy", "line"),
    [
        ({"running": True, "pid": 42, "state": "sleeping", "rss_bytes": 12 * MiB,
          "cpu_seconds": 0.5}, {"grow": True, "grow_max": 2 * GiB},
         "  watch    pid 42 (sleeping), 12.0 MiB RSS, 0.5 s CPU, grows COW files up to 2.0 GiB"),
        ({"running": True, "pid": 42, "state": "sleeping", "rss_bytes": 12 * MiB,
          "cpu_seconds": 3.0}, {"grow": False, "grow_max": 0},
         "  watch    pid 42 (sleeping), 12.0 MiB RSS, 3 s CPU, growth off"),
        ({"running": False}, {"grow": True, "grow_max": GiB},
         "  watch    NOT RUNNING: COW files will not grow, nor warn when full"),
        ({"pid": 42, "running": False}, {}, None),  # no COW to watch: nothing to say
        ({"running": False, "not_needed": "none can fill"}, {"grow": True, "grow_max": GiB},
         "  watch    not needed: none can fill"),
    ],
)  # fmt: skip
def test_the_watchdog_line(watch: dict[str, Any], policy: dict[str, Any], line: str | None) -> None:
    lines = status.format_text(_status(watch=watch, cow_policy=policy)).splitlines()[1:]
    assert lines == ([line] if line else [])


def test_memory_cowspace_other_mappings_and_cow_files() -> None:
    text = status.format_text(
        _status(
            memory={"total_bytes": 2 * GiB, "available_bytes": 1536 * MiB},
            cowspace={"path": "/run/archiso/cowspace", "total_bytes": GiB,
                      "used_bytes": 256 * MiB, "free_bytes": 768 * MiB},
            device_mapper={"version": "4.48.0", "devices": [
                {"name": "arch_root-image", "devno": "254:0", "ours": True},
                {"name": "cryptswap", "devno": "254:1", "ours": False},
            ]},
            cow_files=[
                {"path": "/run/archiso/cowspace/persistent/root.cow", "present": True,
                 "apparent_bytes": GiB, "allocated_bytes": 3 * MiB},
                {"path": "/run/archiso/cowspace/gone.cow", "present": False},
            ],
        )
    )  # fmt: skip
    assert text.splitlines()[1:] == [
        "  memory   1.5 GiB available of 2.0 GiB",
        f"  cowspace {'/run/archiso/cowspace':<28} 256.0 MiB used of 1.0 GiB, 768.0 MiB free",
        f"  other dm /dev/mapper/{'cryptswap':<17} 254:1",
        f"  cow file {'/run/archiso/cowspace/persistent/root.cow':<28} 3.0 MiB in RAM of 1.0 GiB",
    ]


def test_no_state_file_and_a_broken_one_are_clear_errors(tmp_path: Path) -> None:
    missing = tmp_path / "state.json"
    with pytest.raises(HookError, match="does not exist: the hook has not set anything up"):
        status.collect(str(missing))
    missing.write_text("not json\n")
    with pytest.raises(HookError, match=rf"^cannot read {missing}: {missing} is not a state"):
        status.collect(str(missing))


def test_collect_checks_each_record_against_the_system(tmp_path: Path) -> None:
    """Mounts from this machine's mountinfo, loops from sysfs, COW files from the disk."""
    cow = tmp_path / "root.cow"
    with cow.open("wb") as f:
        f.truncate(64 * MiB)  # sparse: nothing allocated yet
        f.seek(MiB)
        f.write(b"x" * 8192)
    state = State(newroot="/new_root", complete=True)
    state.cow = {"space": str(tmp_path), "tmpfs": True, "grow": True, "grow_max": GiB}
    state.add("mount", target="/", source="/dev/root", fstype="ext4", read_only=False,
              live_path=None)  # fmt: skip
    state.add("mount", target=str(tmp_path / "new_root"), source="overlay", fstype="overlay",
              read_only=False, live_path="/")  # fmt: skip
    state.add("mount", target=str(tmp_path / "gone"), source="/dev/loop9", fstype="squashfs",
              read_only=True, live_path=str(tmp_path / "gone-too"))  # fmt: skip
    state.add("loop", device="/dev/loop4093", backing=str(tmp_path / "a.sfs"), read_only=True)
    state.add("file", path=str(cow), apparent_bytes=64 * MiB, kept=False)
    state.add("file", path=str(tmp_path / "removed.cow"), apparent_bytes=MiB, kept=False)
    state.timings = {"total": 1.5}
    state.save(str(tmp_path / "state.json"))

    out = status.collect(str(tmp_path / "state.json"))
    json.dumps(out)  # --json prints it as it is
    assert (out["complete"], out["newroot"], out["timings"]) == (True, "/new_root", {"total": 1.5})
    assert out["cow_policy"] == state.cow and out["leftovers"] == 0
    assert [(m["target"], m["mounted_at"], m["present"]) for m in out["mounts"]] == [
        ("/", "/", True),
        (str(tmp_path / "new_root"), "/", True),  # after switch_root: seen at its live path
        (str(tmp_path / "gone"), None, False),
    ]
    assert "kind" not in out["mounts"][0]
    (loop,) = out["loops"]
    assert loop["device"] == "/dev/loop4093"
    assert loop["present"] is False and loop["kernel_backing_file"] is None
    present, removed = out["cow_files"]
    assert present["present"] and present["apparent_bytes"] == 64 * MiB
    assert 8192 <= present["allocated_bytes"] < 64 * MiB
    assert removed == {"path": str(tmp_path / "removed.cow"), "apparent_bytes": MiB,
                       "kept": False, "present": False}  # fmt: skip
    assert out["snapshots"] == [] and "device_mapper" not in out  # no dm record: no ioctl
    assert out["memory"]["available_bytes"] <= out["memory"]["total_bytes"]
    assert "cowspace" not in out  # the COW space is a directory here, not a mount
    text = status.format_text(out)
    assert f"  mount    {'NOT MOUNTED':<28} squashfs  /dev/loop9" in text.splitlines()
    assert f"  loop     {'/dev/loop4093':<28} {tmp_path / 'a.sfs'}  (gone)" in text.splitlines()


def test_the_watchdog_is_named_by_its_pid_file(tmp_path: Path) -> None:
    pid_file = tmp_path / "watch.pid"
    assert status._watchdog(str(pid_file)) == {"running": False}  # no file
    pid_file.write_text("garbage\n")
    assert status._watchdog(str(pid_file)) == {"running": False}
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        pidfile.write(str(pid_file), child.pid)
        info = status._watchdog(str(pid_file))
        assert info["pid"] == child.pid and info["running"] is True
        assert info["rss_bytes"] > 0 and info["cpu_seconds"] >= 0
        assert info["state"] in {"running", "sleeping", "disk-sleep"}
        start = pidfile.start_time(child.pid)
        assert start is not None
        # The same pid with another start time: another process, not the watchdog.
        pid_file.write_text(f"{child.pid} {start + 1}\n")
        assert status._watchdog(str(pid_file)) == {"pid": child.pid, "running": False}
    finally:
        child.kill()
        child.wait()
    pid_file.write_text(f"{child.pid} {start}\n")  # the watchdog it named has exited
    assert status._watchdog(str(pid_file)) == {"pid": child.pid, "running": False}
