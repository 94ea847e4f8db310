"""The hook's own coldplug: kernel uevents as the kernel writes them, the modaliases of
the host's own sysfs, and which drivers an alias loads, in which order, with the module
indexes of a real kernel (loading goes to the fake kernel of test_kmod). The QEMU tests
boot `HOOKS=(base archiso)` on it (tests/vm)."""

from __future__ import annotations

import errno
import glob
import os
from pathlib import Path

import pytest

from archiso_hook.boot.coldplug import Coldplug, bus_modaliases, static_nodes
from archiso_hook.kernel.uevent import Uevent, device_node
from archiso_hook.log import Log
from tests.unit.test_kmod import FIXTURE, FakeKernel, fixture_index

# What the kernel sends when virtio_pci finds a virtio block device (kobject_uevent_env).
VIRTIO_ADD = (
    b"add@/devices/pci0000:00/0000:00:04.0/virtio1\0ACTION=add\0"
    b"DEVPATH=/devices/pci0000:00/0000:00:04.0/virtio1\0SUBSYSTEM=virtio\0"
    b"MODALIAS=virtio:d00000002v00001AF4\0SEQNUM=1423\0"
)


def test_a_kernel_uevent_is_parsed() -> None:
    event = Uevent.parse(VIRTIO_ADD)
    assert event is not None
    assert (event.action, event.subsystem) == ("add", "virtio")
    assert event.devpath == "/devices/pci0000:00/0000:00:04.0/virtio1"
    assert event.env["MODALIAS"] == "virtio:d00000002v00001AF4"


@pytest.mark.parametrize(
    "message",
    [b"libudev\0\xfe\xed\xca\xfe", b"", b"add\0ACTION=add\0", b"add@relative\0ACTION=add"],
)
def test_what_is_not_a_kernel_uevent_is_skipped(message: bytes) -> None:
    assert Uevent.parse(message) is None


def test_bus_modaliases_are_the_hosts_own() -> None:
    expected = set()
    for path in glob.glob("/sys/bus/*/devices/*/modalias"):
        try:
            expected.add(Path(path).read_text().strip())
        except OSError:
            continue
    found = list(bus_modaliases())
    assert set(found) == expected - {""}
    assert list(bus_modaliases("/nonexistent")) == []


def _coldplug(kernel: FakeKernel) -> Coldplug:
    plug = Coldplug(Log(quiet=True), fixture_index(kernel))
    return plug


def test_each_alias_loads_its_driver_with_its_dependencies_once() -> None:
    kernel = FakeKernel()
    plug = _coldplug(kernel)
    try:
        plug.load_for(["virtio:d00000002v00001AF4", "pci:v0000DEADd0000BEEFsv*", ""])
        plug.handle([Uevent.parse(VIRTIO_ADD)])  # type: ignore[list-item]
    finally:
        plug.close()
    assert kernel.inserted.count("virtio_blk") == 1
    assert kernel.inserted[-1] == "virtio_blk"  # its dependencies come first
    assert plug.loaded == kernel.inserted


def test_a_driver_that_fails_does_not_stop_the_others() -> None:
    kernel = FakeKernel(refuse={"virtio_blk": errno.ENODEV})
    plug = _coldplug(kernel)
    try:
        plug.load_for(["virtio:d00000002v00001AF4"])
    finally:
        plug.close()
    assert "virtio_blk" not in kernel.inserted


def test_device_nodes_are_made_only_for_add_events_with_a_safe_name(tmp_path: Path) -> None:
    def event(action: str, name: str) -> Uevent:
        env = {"SUBSYSTEM": "block", "DEVNAME": name, "MAJOR": "7", "MINOR": "9"}
        return Uevent(action, "/devices/virtual/block/x", env)

    (tmp_path / "there").write_text("")
    assert device_node(event("add", "there"), str(tmp_path)) == str(tmp_path / "there")
    assert device_node(event("remove", "gone"), str(tmp_path)) is None
    assert device_node(event("add", "../escape"), str(tmp_path)) is None
    assert not (tmp_path.parent / "escape").exists()
    if os.geteuid() == 0:
        made = device_node(event("add", "mapper/made"), str(tmp_path))
        assert made == str(tmp_path / "mapper" / "made")
        assert os.major(os.stat(made).st_rdev) == 7


def test_static_nodes_are_those_of_modules_devname() -> None:
    text = (FIXTURE / "modules.devname").read_text()
    assert static_nodes(text) == [("loop-control", "c", 10, 237), ("mapper/control", "c", 10, 236)]
    assert static_nodes("# comment\nfuse fuse x10:229\nbad line\nbtrfs btrfs-control c10\n") == []
