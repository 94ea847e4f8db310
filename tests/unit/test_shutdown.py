"""The shutdown's decisions that need no kernel: which loop is ours, which pid is the
watchdog's, and that nothing it meets stops it from returning (as PID 1: powering off).
Taking real dm devices and loops apart is proven in tests/vm (test_10_boot, test_70_faults)."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import pytest

from archiso_hook import paths
from archiso_hook.boot import release
from archiso_hook.live import pidfile, shutdown
from archiso_hook.log import Log

MOVED = (("/run/", "/oldroot/run/"), ("/run/", "/oldrun/"))
SFS = "/run/archiso/bootmnt/arch/x86_64/airootfs.sfs"


@pytest.mark.parametrize(
    ("bound", "ours"),
    [
        (SFS, True),  # still in the initramfs: the same path
        ("/oldroot/run/archiso/bootmnt/arch/x86_64/airootfs.sfs", True),  # after the switch
        ("/oldrun/archiso/bootmnt/arch/x86_64/airootfs.sfs", True),  # /run moved aside
        (SFS + " (deleted)", True),
        ("/arch/x86_64/airootfs.sfs", True),  # its mount detached lazily: from its root
        ("/home/user/other.img", False),
        ("/oldrun/archiso/bootmnt/arch/x86_64/other.sfs", False),
        ("/airootfs.sfs", False),  # one component says too little
        ("/oldroot/run/archiso/bootmnt/arch/x86_64/airootfs.sfs.bak", False),
    ],
)
def test_a_loop_is_ours_only_when_bound_to_the_recorded_file(bound: str, ours: bool) -> None:
    assert release.same_backing(SFS, bound, MOVED) is ours


def _log() -> tuple[Log, io.StringIO]:
    out = io.StringIO()
    return Log(stream=out), out


@pytest.mark.parametrize("text", ["-1", "0", "1", "abc", "99999999999", "", "²"])
def test_a_pid_file_that_names_no_process_of_ours_signals_nothing(
    tmp_path: Path, text: str
) -> None:
    (tmp_path / "run" / "archiso").mkdir(parents=True)
    (tmp_path / "run" / "archiso" / "watch.pid").write_text(text)
    log, out = _log()
    shutdown.stop_watchdog(log, root=str(tmp_path))  # PID 1 (init) or -1 (all): never
    assert "no signal sent" in out.getvalue()


def test_a_pid_reused_by_another_process_is_left_alone(tmp_path: Path) -> None:
    (tmp_path / "run" / "archiso").mkdir(parents=True)
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        # Its pid, with the start time of the watchdog that had it before.
        started = pidfile.start_time(other.pid)
        assert started is not None
        (tmp_path / "run" / "archiso" / "watch.pid").write_text(f"{other.pid} {started - 1}\n")
        log, out = _log()
        shutdown.stop_watchdog(log, root=str(tmp_path))
        assert other.poll() is None, "a process that is not the watchdog was signalled"
        assert f"the watchdog (pid {other.pid}) is not running" in out.getvalue()
    finally:
        other.kill()
        other.wait()


def test_the_watchdog_itself_is_stopped(tmp_path: Path) -> None:
    (tmp_path / "run" / "archiso").mkdir(parents=True)
    watchdog = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        cmdline = Path(f"/proc/{watchdog.pid}/cmdline")
        pidfile.write(str(tmp_path / "run" / "archiso" / "watch.pid"), watchdog.pid)
        log, out = _log()
        shutdown.stop_watchdog(log, root=str(tmp_path))
        # Signalled: dead (a zombie has an empty command line), or reaped already.
        assert not cmdline.exists() or cmdline.read_bytes() == b""
        assert f"stopped the watchdog (pid {watchdog.pid})" in out.getvalue()
    finally:
        watchdog.kill()


def test_a_corrupt_state_file_is_said_and_skipped(tmp_path: Path) -> None:
    bad, good = tmp_path / "bad.json", tmp_path / "good.json"
    bad.write_bytes(b"\x00\x01 not json")
    good.write_text('{"newroot": "/new_root", "resources": [{"kind": "loop"}]}')
    log, out = _log()
    assert shutdown.find_state(log, (str(bad), str(tmp_path / "none.json"))) is None
    assert f"cannot use the state file: {bad} is not a state file" in out.getvalue()
    state = shutdown.find_state(log, (str(bad), str(good)))
    assert state is not None and state.resources == []
    assert f"{good}: resources record 1 skipped: its field 'device' is missing" in out.getvalue()


def test_whatever_fails_the_shutdown_still_returns(monkeypatch: pytest.MonkeyPatch) -> None:
    # As PID 1 what follows is reboot(2); here (not PID 1) the return shows it is reached.
    def broken(*args: object, **kwargs: object) -> list[str]:
        raise RuntimeError("an ioctl the kernel did not expect")

    monkeypatch.setattr(shutdown, "teardown", broken)
    log, out = _log()
    assert shutdown.run("reboot", log) == 1
    assert "RuntimeError: an ioctl the kernel did not expect; going on with the reboot" in (
        out.getvalue()
    )
    assert os.getpid() != 1


def test_the_watchdog_on_a_corrupt_state_says_so_and_stops(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from archiso_hook.boot.state import State  # noqa: PLC0415
    from archiso_hook.live import watch  # noqa: PLC0415

    def corrupt(path: str = "") -> None:
        raise ValueError("/run/archiso/state.json is not a state file: it names no new root")

    monkeypatch.setattr(State, "load", staticmethod(corrupt))
    log, out = _log()
    assert watch.run_foreground(log, 0.25) == 1
    assert "watch: cannot read the boot's state, nothing to watch: /run/archiso/state.json is" in (
        out.getvalue()
    )


def test_release_takes_only_what_is_still_the_hooks(tmp_path: Path) -> None:
    """COW files and mounts, from their records: what a killed hook's retry releases."""
    made, kept, link = tmp_path / "made.cow", tmp_path / "kept.cow", tmp_path / "link.cow"
    made.write_bytes(b"x")
    kept.write_bytes(b"y")
    link.symlink_to(kept)
    records = [
        {"kind": "file", "path": str(kept), "apparent_bytes": 1, "kept": True},
        {"kind": "file", "path": str(made), "apparent_bytes": 1, "kept": False},
        {"kind": "file", "path": str(link), "apparent_bytes": 1, "kept": False},
        {"kind": "file", "path": str(tmp_path / "gone.cow"), "apparent_bytes": 1, "kept": False},
        {"kind": "mount", "target": str(tmp_path / "not-mounted"), "source": "/dev/loop9",
         "fstype": "squashfs", "read_only": True, "live_path": None},
    ]  # fmt: skip
    log, out = _log()
    assert release.release(records, log) == []
    assert not made.exists()  # made by the hook: removed
    assert kept.read_bytes() == b"y" and link.is_symlink()  # the user's, and not a file
    assert f"released: removed {made}" in out.getvalue()
    assert f"not releasing {link} (not a regular file): it is no longer the hook's" in (
        out.getvalue()
    )


def test_the_state_is_looked_for_where_the_live_systems_run_may_be() -> None:
    assert shutdown.state_paths() == (
        "/oldroot/run/archiso/state.json",  # the live system's /run, under the old root
        "/oldrun/archiso/state.json",  # moved aside (move_run_aside)
        "/run/archiso/state.json",  # still in the initramfs: a failed boot's retry
    )
    assert shutdown.state_paths("/mnt/live")[0] == "/mnt/live/run/archiso/state.json"


def test_the_first_state_file_there_is_wins(tmp_path: Path) -> None:
    first, second = tmp_path / "first.json", tmp_path / "second.json"
    first.write_text('{"newroot": "/first"}\n')
    second.write_text('{"newroot": "/second"}\n')
    (tmp_path / "dir.json").mkdir()
    log, out = _log()
    paths = [str(tmp_path / p) for p in ("none.json", "dir.json", "first.json", "second.json")]
    state = shutdown.find_state(log, tuple(paths))
    assert state is not None and state.newroot == "/first"
    # A directory where the file should be is said, and the next place is tried.
    assert out.getvalue().count("cannot use the state file") == 1
    assert shutdown.find_state(log, (str(tmp_path / "none.json"),)) is None


@pytest.mark.parametrize(
    ("path", "root", "below"),
    [
        ("/oldroot", "/oldroot", True),
        ("/oldroot/run/archiso/bootmnt", "/oldroot", True),
        ("/oldroot2", "/oldroot", False),  # a sibling whose name starts the same
        ("/old", "/oldroot", False),
        ("/oldrun/archiso", "/oldrun/", True),
        ("/", "/oldroot", False),
    ],
)
def test_what_is_under_a_root(path: str, root: str, below: bool) -> None:
    assert paths.under(path, root) is below


def test_records_of_devices_that_are_gone_are_not_left_busy(tmp_path: Path) -> None:
    """A loop no longer bound and an NBD device not connected: nothing to undo, nothing
    reported busy, nothing said (the host's own loops and mappings are not ours)."""
    state_file = tmp_path / "state.json"
    state_file.write_text(
        '{"newroot": "/new_root", "resources": ['
        '{"kind": "loop", "device": "/dev/loop4093", "backing": "/run/archiso/a.sfs",'
        ' "read_only": true},'
        '{"kind": "nbd", "device": "/dev/nbd4093", "server": "10.0.2.2", "export": "root"}]}\n'
    )
    log, out = _log()
    state = shutdown.find_state(log, (str(state_file),))
    assert state is not None and len(state.resources) == 2
    assert shutdown.teardown(state, log, root=str(tmp_path / "oldroot"), also=()) == []
    assert out.getvalue() == ""
