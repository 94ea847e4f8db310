"""The executor against a kernel kept in memory: for every plan of a generated set and
every call N the boot makes to the kernel, a failure injected at call N leaves nothing
acquired (every resource released, newest first) and no state file behind; a release
that fails stays in the state file, for the next attempt and the shutdown.

The kernel here is a model of what the executor asks (seam.Kernel): mounts, loop
devices, dm devices, files, links and NBD devices as sets, and the devices, images and
aitab of a medium. What it proves is the executor's bookkeeping, not the kernel's
behaviour: that is the VM tests' (tests/vm/), with Debian's kernel.
"""

from __future__ import annotations

import errno
import io
import itertools
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from archiso_hook.boot import cowfile, resources
from archiso_hook.boot.executor import Boot
from archiso_hook.boot.failure import BootFailedError
from archiso_hook.boot.state import State
from archiso_hook.errors import HookError, KernelError
from archiso_hook.kernel import dm
from archiso_hook.log import Log
from archiso_hook.options import parse_options
from archiso_hook.paths import BOOTMNT, IMG_DEV_MNT

IMAGE_SIZE = 64 << 20


def head_of(fstype: str, size: int = IMAGE_SIZE) -> bytes:
    """The first bytes of a whole image of `fstype`, as fsprobe reads them."""
    head = bytearray(0x10048)
    if fstype == "squashfs":
        head[0:4] = b"hsqs"
        head[40:48] = size.to_bytes(8, "little")
    elif fstype == "ext4":
        head[0x438:0x43A] = b"\x53\xef"
        head[0x404:0x408] = (size // 1024).to_bytes(4, "little")
    elif fstype == "iso9660":
        head[0x8001:0x8006] = b"CD001"
    return bytes(head)


@attrs.define
class FakeLoop:
    number: int
    backing: str
    size_bytes: int
    closed: bool = False

    @property
    def path(self) -> str:
        return f"/dev/loop{self.number}"

    @property
    def devno(self) -> str:
        return f"7:{self.number}"

    def size(self) -> int:
        return self.size_bytes

    def close(self) -> None:
        self.closed = True


class InjectedError(KernelError):
    pass


@attrs.define
class Lease:
    interface: str = "eth0"
    address: str = "10.0.2.15"
    prefixlen: int = 24
    how: str = "dhcp"
    dns: tuple[str, ...] = ()
    server: str | None = "10.0.2.2"


@attrs.define
class Export:
    size: int


@attrs.define
class Attached:
    device: str
    address: str
    export: Export


class FakeKernel:
    """The kernel and the medium, in memory; `fail_at`: the call (1-based) that fails."""

    def __init__(self, files: dict[str, str], *, fail_at: int | None = None) -> None:
        self.files = files  # path on a medium or in RAM -> its filesystem type ("" for text)
        self.text: dict[str, str] = {}
        self.fail_at = fail_at
        self.calls = 0
        self.mounts: dict[str, tuple[str, str]] = {}
        self.loops: dict[str, FakeLoop] = {}
        self.maps: dict[str, str] = {}  # name -> state
        self.created: dict[str, int] = {}  # files made by the boot
        self.links: set[str] = set()
        self.nbds: set[str] = set()
        self.acquired: list[str] = []  # what, in the order made
        self.released: list[str] = []
        self.refuse_release: set[str] = set()
        self._numbers = itertools.count()
        self.waiting = False  # inside wait_for_device's `meanwhile` jobs
        self.failed: tuple[str, bool] | None = None  # the call that failed, and if waiting

    def _call(self, what: str) -> None:
        self.calls += 1
        if self.calls == self.fail_at:
            self.failed = (what, self.waiting)
            raise InjectedError(f"injected failure at call {self.calls} ({what})", errno.EIO)

    def _made(self, key: str) -> None:
        self.acquired.append(key)

    def _gone(self, key: str) -> None:
        if key in self.refuse_release:
            raise KernelError(f"cannot release {key}", errno.EBUSY)
        self.released.append(key)

    def held(self) -> set[str]:
        return (
            {f"mount:{t}" for t in self.mounts}
            | {f"loop:{p}" for p in self.loops}
            | {f"dm:{n}" for n in self.maps}
            | {f"file:{p}" for p in self.created}
            | {f"net:{i}" for i in self.links}
            | {f"nbd:{d}" for d in self.nbds}
        )

    # --- seam.Kernel ---
    def load_modules(self, names: Sequence[str]) -> list[str]:
        self._call("load_modules")
        return []

    def wait_for_device(self, device: str, timeout: float, log: Log, *, what: str,
                        hint: str | None = None,
                        meanwhile: Sequence[Callable[[], None]] = ()) -> str:  # fmt: skip
        self._call("wait_for_device")
        self.waiting = True
        for job in meanwhile:
            job()
        self.waiting = False
        return "/dev/sr0" if device.startswith("/dev/disk/") else device

    def search(self, uuid: str | None, filename: str, timeout: float, log: Log) -> str:
        self._call("search")
        return "/dev/sda1"

    def filesystem_type(self, source: str) -> str | None:
        self._call("filesystem_type")
        return "iso9660" if source.startswith(("/dev/sr", "/dev/loop")) else "ext4"

    def filesystems(self) -> set[str]:
        return {"iso9660", "squashfs", "ext4", "tmpfs", "vfat", "nfs"}

    def is_optical(self, device: str) -> bool:
        return device.startswith("/dev/sr")

    def mount(self, source: str, target: str, fstype: str | None, flags: int,
              data: str | None, *, look_only: bool = False) -> None:  # fmt: skip
        self._call(f"mount {target}")
        if fstype is None:  # a remount
            assert target in self.mounts
            return
        assert target not in self.mounts, f"{target} mounted twice"
        self.mounts[target] = (source, fstype)
        self._made(f"mount:{target}")

    def unmount(self, target: str) -> None:
        self._gone(f"mount:{target}")
        del self.mounts[target]

    def mounted(self, target: str) -> tuple[str, str] | None:
        return self.mounts.get(target)

    def journal_unclean(self, source: str, fstype: str) -> bool:
        return False

    def attach_loop(self, backing: str, *, read_only: bool) -> FakeLoop:
        self._call(f"attach_loop {backing}")
        device = FakeLoop(next(self._numbers), backing, self.file_size(backing))
        self.loops[device.path] = device
        self._made(f"loop:{device.path}")
        return device

    def detach_loop(self, device: Any) -> None:
        self._gone(f"loop:{device.path}")
        del self.loops[device.path]

    def dm_version(self) -> tuple[int, int, int]:
        return (4, 47, 0)

    def dm_create(self, name: str, uuid: str) -> str:
        self._call(f"dm_create {name}")
        assert uuid == f"ARCHISO-{name}"
        self.maps[name] = "created"
        self._made(f"dm:{name}")
        return f"254:{len(self.maps)}"

    def dm_load(self, name: str, table: dm.Target) -> None:
        self._call(f"dm_load {name}")
        self.maps[name] = "loaded"

    def dm_resume(self, name: str) -> str:
        self._call(f"dm_resume {name}")
        self.maps[name] = "active"
        return "254:0"

    def dm_snapshot_state(self, name: str) -> str:
        self._call(f"dm_snapshot_state {name}")
        return "Active"

    def dm_remove(self, name: str) -> None:
        self._gone(f"dm:{name}")
        del self.maps[name]

    def make_directory(self, path: str, mode: int) -> None:
        self._call(f"make_directory {path}")

    def mount_point(self, path: str) -> None:
        self._call(f"mount_point {path}")

    def exists(self, path: str, *, follow: bool = True) -> bool:
        return path in self.files or path in self.created

    def file_size(self, path: str) -> int:
        if path in self.created:
            return self.created[path]
        if path not in self.files:
            raise FileNotFoundError(errno.ENOENT, "No such file or directory", path)
        return IMAGE_SIZE

    def file_usage(self, path: str) -> cowfile.Usage:
        return cowfile.Usage(self.file_size(path), 0)

    def read_head(self, path: str) -> bytes:
        self._call(f"read_head {path}")
        return head_of(self.files[path])

    def read_text(self, path: str) -> str:
        self._call(f"read_text {path}")
        return self.text[path]

    def free_bytes(self, path: str) -> int:
        return 1 << 30

    def create_file(self, path: str, size: int) -> None:
        self._call(f"create_file {path}")
        self.created[path] = size
        self._made(f"file:{path}")

    def remove_file(self, path: str) -> None:
        self._gone(f"file:{path}")
        del self.created[path]

    def close(self) -> None:
        pass

    # --- seam.Network ---
    def attach_nbd(self, host: str, port: int, name: str, timeout: int) -> Attached:
        self._call("attach_nbd")
        self.nbds.add("/dev/nbd0")
        self._made("nbd:/dev/nbd0")
        return Attached("/dev/nbd0", host, Export(IMAGE_SIZE))

    def detach_nbd(self, device: str) -> None:
        self._gone(f"nbd:{device}")
        self.nbds.discard(device)

    def bring_up(self, config: Any, bootif: str | None, timeout: float, log: Log) -> Lease:
        self._call("bring_up")
        self.links.add("eth0")
        self._made("net:eth0")
        return Lease()

    def take_down(self, interface: str) -> None:
        self._gone(f"net:{interface}")
        self.links.discard(interface)

    def write_resolv_conf(self, lease: Any, path: str | None = None) -> bool:
        return False


# A medium of each kind the boot knows from a disk or a server, and the aitab lines.
MEDIA = {
    "label": "archisolabel=ARCH_2026",
    "device": "archisodevice=/dev/sr0",
    "iso file": "img_dev=/dev/sda1 img_loop=/live/arch.iso",
    "nbd": "ip=dhcp archiso_nbd_srv=10.0.2.2",
    "nfs": "ip=dhcp archiso_nfs_srv=10.0.2.2:/srv/arch",
}
COW = ["", "cow_spacesize=512M", "cow_persistent=P", "cow_device=/dev/sdb1 cow_directory=cow",
       "cow_label=COW", "cow_chunksize=16"]  # fmt: skip
ENTRIES = [
    ("root", "/", "ext4"),
    ("extra", "/opt", "none"),
    ("data", "/srv/data", "ext4"),
    ("share", "/usr/share/doc", "none"),
]


def medium_files(basedir: str, entries: Sequence[tuple[str, str, str]]) -> dict[str, str]:
    """The images on the medium (or in RAM, for an ISO file's loop device: the same
    paths under BOOTMNT), and the ext4 images inside squashfs ones."""
    files = {}
    for name, _mnt, fs_type in entries:
        image = f"{BOOTMNT}/{basedir}/x86_64/{name}"
        if fs_type == "none":
            files[f"{image}.sfs"] = "squashfs"
        else:
            files[f"{image}.fs.sfs"] = "squashfs"
            files[f"/run/archiso/sfs/{name}/{name}.fs"] = "ext4"
    files[f"{IMG_DEV_MNT}/live/arch.iso"] = "iso9660"
    return files


def boot_with(
    tmp_path: Path, cmdline: str, entries: Sequence[tuple[str, str, str]], fail_at: int | None
) -> tuple[Boot, FakeKernel, io.StringIO]:
    newroot = tmp_path / "new_root"
    newroot.mkdir(parents=True, exist_ok=True)
    options = parse_options(f"archisobasedir=arch copytoram=n {cmdline}")
    kernel = FakeKernel(medium_files("arch", entries), fail_at=fail_at)
    aitab = "".join(f"{n} {m} x86_64 xz {f} 50%\n" for n, m, f in entries)
    kernel.text[f"{BOOTMNT}/arch/aitab"] = aitab
    stream = io.StringIO()
    state_file = str(tmp_path / "run" / "state.json")
    boot = Boot(options, str(newroot), Log(stream=stream), state_file=state_file,
                kernel=kernel, network=kernel)  # fmt: skip
    return boot, kernel, stream


def run(boot: Boot) -> bool:
    try:
        boot.run()
    except BootFailedError:
        return False
    return True


def tolerated(failed: tuple[str, bool] | None, medium: str) -> bool:
    """The failures a boot goes on after: a module preloaded while the medium is awaited
    (the step that needs it loads it again), and an NFS mount of one protocol version
    (the next is tried)."""
    return failed == ("load_modules", True) or (
        medium == "nfs" and failed == (f"mount {BOOTMNT}", False)
    )


plans = st.tuples(
    st.sampled_from(sorted(MEDIA)),
    st.sampled_from(COW),
    st.lists(st.sampled_from(ENTRIES[1:]), max_size=3, unique=True),
)


@settings(max_examples=25, deadline=None)
@given(plan=plans)
def test_a_failure_at_any_call_leaves_nothing_acquired(
    tmp_path_factory: pytest.TempPathFactory, plan: tuple[str, str, list[tuple[str, str, str]]]
) -> None:
    medium, cow, extra = plan
    entries = [ENTRIES[0], *extra]
    cmdline = f"{MEDIA[medium]} {cow}"
    whole, kernel, log = boot_with(tmp_path_factory.mktemp("whole"), cmdline, entries, None)
    assert run(whole), f"{cmdline}: the boot itself fails: {log.getvalue()}"
    calls = kernel.calls
    assert kernel.held() and calls > 3
    for n in range(1, calls + 1):
        tmp = tmp_path_factory.mktemp(f"fail{n}")
        boot, kernel, _ = boot_with(tmp, cmdline, entries, n)
        if run(boot):
            assert tolerated(kernel.failed, medium), f"call {n}: {kernel.failed} unnoticed"
            continue
        assert kernel.held() == set(), f"{cmdline}, failure at call {n}: {kernel.held()} left"
        assert kernel.released == list(reversed(kernel.acquired)), f"call {n}: order"
        assert not (tmp / "run" / "state.json").exists(), f"call {n}: a state file is left"


def test_a_release_that_fails_stays_in_the_state_file(tmp_path: Path) -> None:
    whole, kernel, _ = boot_with(tmp_path / "a", MEDIA["label"], ENTRIES[:2], None)
    assert run(whole)
    boot, kernel, _ = boot_with(tmp_path / "b", MEDIA["label"], ENTRIES[:2], kernel.calls)
    kernel.refuse_release = {"loop:/dev/loop0"}
    assert not run(boot)
    assert kernel.held() == {"loop:/dev/loop0"}
    state = State.load(str(tmp_path / "b" / "run" / "state.json"))
    assert [resources.key(resources.from_record(r)) for r in state.resources] == ["loop:/dev/loop0"]


def test_the_injection_is_seen(tmp_path: Path) -> None:
    """The model fails where it is told to: the property above can fail."""
    kernel = FakeKernel({}, fail_at=2)
    kernel.load_modules(["loop"])
    with pytest.raises(HookError, match="injected failure at call 2"):
        kernel.mount("/dev/sr0", BOOTMNT, "iso9660", 0, None)
