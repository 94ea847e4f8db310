"""Finding the boot medium (archiso_hook/boot/medium.py) without a guest: the device
specs it waits for, what counts as a device present, the wait's order of work, and the
filesystem of an image. Waiting for real devices on udev events, with the messages of
a medium that never comes, is booted in tests/vm/test_20_medium.py and test_70_faults.py.

The waits here listen to udev's netlink socket for an uninteresting subsystem ("net"):
a wait for "block" would turn on the host's media polling (enable_media_polling)."""

from __future__ import annotations

import io
import os
import stat
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from archiso_hook.boot import medium
from archiso_hook.boot.blockid import Identity
from archiso_hook.cmdline import device_path
from archiso_hook.log import Log


@pytest.mark.parametrize(
    ("spec", "path"),
    [
        ("LABEL=ARCH_202611", "/dev/disk/by-label/ARCH_202611"),
        ("LABEL=ARCH 2011", "/dev/disk/by-label/ARCH\\x202011"),  # as udev escapes it
        ("LABEL=a/b", "/dev/disk/by-label/a\\x2fb"),
        ("UUID=2026-11-01-12-00-00-00", "/dev/disk/by-uuid/2026-11-01-12-00-00-00"),
        ("PARTUUID=4c3a1d0e-02", "/dev/disk/by-partuuid/4c3a1d0e-02"),
        ("PARTLABEL=arch live", "/dev/disk/by-partlabel/arch\\x20live"),
        ("/dev/sr0", "/dev/sr0"),
        ("/dev/disk/by-id/usb-stick-part1", "/dev/disk/by-id/usb-stick-part1"),
        ("label=x", "label=x"),  # tags are upper case: not one
        ("ID=x", "ID=x"),
    ],
)
def test_device_specs_become_the_links_udev_makes(spec: str, path: str) -> None:
    assert device_path(spec) == path


def _log() -> tuple[Log, io.StringIO]:
    out = io.StringIO()
    return Log(stream=out), out


def _free_loop_device() -> str | None:
    """A loop block device of this host bound to nothing (opening it reads nothing)."""
    for name in sorted(os.listdir("/sys/block"), reverse=True):
        if name.startswith("loop") and not os.path.exists(f"/sys/block/{name}/loop"):
            path = f"/dev/{name}"
            if os.path.exists(path) and stat.S_ISBLK(os.stat(path).st_mode):
                return path
    return None


def test_only_a_block_device_is_present(tmp_path: Path) -> None:
    regular = tmp_path / "medium.iso"
    regular.write_bytes(b"\0" * 4096)
    assert medium.present(str(regular)) is None  # an image file is not a device
    assert medium.present(str(tmp_path / "missing")) is None
    (tmp_path / "dangling").symlink_to(tmp_path / "missing")
    assert medium.present(str(tmp_path / "dangling")) is None
    assert medium.present("/dev/null") is None  # a character device
    device = _free_loop_device()
    if device is None:
        pytest.skip("no free loop device on this host")
    link = tmp_path / "by-label-ARCH"
    link.symlink_to(device)
    assert medium.present(str(link)) == device  # a udev link: the node it names


def test_sysfs_numbers_read_as_zero_when_they_are_not_numbers(tmp_path: Path) -> None:
    (tmp_path / "size").write_text("2097152\n")
    (tmp_path / "removable").write_text("x\n")
    assert medium._sysfs_int(str(tmp_path / "size")) == 2097152
    assert medium._sysfs_int(str(tmp_path / "removable")) == 0
    assert medium._sysfs_int(str(tmp_path / "missing")) == 0


@pytest.fixture
def under_udev(monkeypatch: pytest.MonkeyPatch) -> None:
    """wait_until's loop with udev running (on events from the host's kernel): without it
    the hook would be its own coldplug, and load drivers for the host's devices."""
    monkeypatch.setattr(medium, "udevd_running", lambda: True)


@pytest.mark.usefixtures("under_udev")
def test_a_device_there_at_once_needs_no_wait() -> None:
    log, out = _log()
    ran: list[str] = []
    found = medium.wait_until(
        lambda: "/dev/sr0", 30, "the boot medium", log, meanwhile=[lambda: ran.append("x")]
    )
    assert found == ("/dev/sr0", "")
    assert ran == [] and out.getvalue() == ""  # no work done, nothing said


def _after(ran: list[str], name: str) -> Callable[[], None]:
    return lambda: ran.append(name)


@pytest.mark.usefixtures("under_udev")
def test_the_device_is_looked_for_after_each_piece_of_work() -> None:
    """The work meanwhile (loading modules) is done piece by piece, each followed by a
    look: the device waits for one piece at most, and the rest is left for later."""
    log, out = _log()
    ran: list[str] = []
    looks: list[list[str]] = []

    def find() -> str | None:
        looks.append(list(ran))
        return "/dev/sr0" if "modules of the drive" in ran else None

    pieces = [_after(ran, "modules of the drive"), _after(ran, "modules of the filesystem")]
    found = medium.wait_until(find, 60, "the boot medium", log, subsystem="net", meanwhile=pieces)
    assert found == ("/dev/sr0", "")
    assert ran == ["modules of the drive"]
    assert looks == [[], [], ["modules of the drive"]]  # before subscribing, after, after work
    lines = out.getvalue().splitlines()
    assert lines[0].endswith("waiting up to 60 s for the boot medium")
    assert "found the boot medium: /dev/sr0, after " in lines[1]


@pytest.mark.usefixtures("under_udev")
def test_a_wait_that_runs_out_answers_none() -> None:
    log, _ = _log()
    ran: list[str] = []
    pieces = [_after(ran, "a"), _after(ran, "b"), _after(ran, "c")]
    found = medium.wait_until(lambda: None, 0.5, "nothing", log, subsystem="net", meanwhile=pieces)
    assert found == (None, "")  # only a wait for block devices lists what it saw
    assert ran == ["a", "b", "c"][: len(ran)]  # in order, as far as the time went


def test_the_filesystem_of_an_image(tmp_path: Path) -> None:
    image = tmp_path / "fs.img"
    with image.open("wb") as f:
        f.truncate(8 << 20)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-L", "ARCH", str(image)], check=True)
    assert medium.filesystem_type(str(image)) == "ext4"
    blank = tmp_path / "blank.img"
    blank.write_bytes(b"\0" * 65536)
    assert medium.filesystem_type(str(blank)) is None  # and udev knows no regular file


def test_a_device_without_a_filesystem_yet_is_read_again(monkeypatch: pytest.MonkeyPatch) -> None:
    """A disk can be seen before it reads (a USB drive not ready yet, a driver still
    probing it), and no event follows: its empty reading is kept REREAD_UNIDENTIFIED
    seconds only, where a filesystem found is kept until the media change."""
    readings = iter([None, Identity(None), Identity("iso9660", "ARCH")])
    calls: list[str] = []

    def identify(name: str) -> Identity | None:
        calls.append(name)
        return next(readings)

    monkeypatch.setattr(medium, "identify", identify)
    monkeypatch.setattr(medium, "_sysfs_int", lambda path, default=0: 27992)
    monkeypatch.setattr(medium, "_identities", {})
    monkeypatch.setattr(medium, "_unidentified", {})
    monkeypatch.setattr(medium, "REREAD_UNIDENTIFIED", 3600.0)
    assert medium.identity("sda") is None
    assert medium.identity("sda") is None and calls == ["sda"]  # not read again so soon
    monkeypatch.setattr(medium, "REREAD_UNIDENTIFIED", 0.0)
    assert medium.identity("sda") == Identity(None)
    assert medium.identity("sda") == Identity("iso9660", "ARCH")
    assert medium.identity("sda") == Identity("iso9660", "ARCH")
    assert calls == ["sda"] * 3  # the filesystem found is kept
    medium.forget_identities()
    with pytest.raises(StopIteration):  # a media change: read again
        medium.identity("sda")


def test_a_block_event_has_what_did_not_read_read_again(monkeypatch: pytest.MonkeyPatch) -> None:
    readings = iter([None, Identity("iso9660", "ARCH")])
    monkeypatch.setattr(medium, "identify", lambda name: next(readings))
    monkeypatch.setattr(medium, "_sysfs_int", lambda path, default=0: 27992)
    monkeypatch.setattr(medium, "_identities", {})
    monkeypatch.setattr(medium, "_unidentified", {})
    monkeypatch.setattr(medium, "REREAD_UNIDENTIFIED", 3600.0)
    assert medium.identity("sda") is None
    medium.forget_unidentified()  # the disk's add event, after its partitions' scan
    assert medium.identity("sda") == Identity("iso9660", "ARCH")
