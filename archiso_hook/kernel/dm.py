"""Device-mapper through its ioctls (include/uapi/linux/dm-ioctl.h), no dmsetup.

Every call sends a struct dm_ioctl followed by a payload (target specs and their
parameter strings) in one buffer, and the kernel answers in the same buffer.
"""

from __future__ import annotations

import contextlib
import enum
import errno
import os
import stat
from types import TracebackType

import attrs

from archiso_hook.errors import KernelError
from archiso_hook.kernel.cstruct import Struct, cstring
from archiso_hook.kernel.ioctl import IocLayout, ioctl, layout_for
from archiso_hook.kernel.klog import KernelLogWindow

DM_IOCTL_TYPE = 0xFD
DM_VERSION = (4, 0, 0)  # the oldest 4.x ABI: everything we send exists since then
DM_NAME_LEN = 128
DM_UUID_LEN = 129
DM_MAX_TYPE_NAME = 16

DM_IOCTL = Struct(
    "dm_ioctl",
    (
        ("version", "3I"),  # __u32 version[3];
        ("data_size", "I"),  # __u32 data_size;  (with this struct)
        ("data_start", "I"),  # __u32 data_start;  (from the start of this struct)
        ("target_count", "I"),  # __u32 target_count;
        ("open_count", "i"),  # __s32 open_count;
        ("flags", "I"),  # __u32 flags;
        ("event_nr", "I"),  # __u32 event_nr;
        ("padding", "I"),  # __u32 padding;
        ("dev", "Q"),  # __u64 dev;
        ("name", f"{DM_NAME_LEN}s"),  # char name[DM_NAME_LEN];
        ("uuid", f"{DM_UUID_LEN}s"),  # char uuid[DM_UUID_LEN];
        ("data", "7s"),  # char data[7];
    ),
)
# Followed by its parameter string, NUL-terminated and padded to 8 bytes.
DM_TARGET_SPEC = Struct(
    "dm_target_spec",
    (
        ("sector_start", "Q"),  # __u64 sector_start;
        ("length", "Q"),  # __u64 length;
        ("status", "i"),  # __s32 status;
        ("next", "I"),  # __u32 next;
        ("target_type", f"{DM_MAX_TYPE_NAME}s"),  # char target_type[DM_MAX_TYPE_NAME];
    ),
)
DM_NAME_LIST = Struct(
    "dm_name_list",
    (
        ("dev", "Q"),  # __u64 dev;
        ("next", "I"),  # __u32 next;  (from the start of this record)
        ("name", "0s"),  # char name[];
    ),
)


class Cmd(enum.IntEnum):
    VERSION = 0
    REMOVE_ALL = 1
    LIST_DEVICES = 2
    DEV_CREATE = 3
    DEV_REMOVE = 4
    DEV_RENAME = 5
    DEV_SUSPEND = 6
    DEV_STATUS = 7
    DEV_WAIT = 8
    TABLE_LOAD = 9
    TABLE_CLEAR = 10
    TABLE_DEPS = 11
    TABLE_STATUS = 12


class Flag(enum.IntFlag):
    READONLY = 1 << 0
    SUSPEND = 1 << 1
    PERSISTENT_DEV = 1 << 3
    STATUS_TABLE = 1 << 4
    ACTIVE_PRESENT = 1 << 5
    INACTIVE_PRESENT = 1 << 6
    BUFFER_FULL = 1 << 8
    SKIP_LOCKFS = 1 << 10
    NOFLUSH = 1 << 11
    QUERY_INACTIVE = 1 << 12
    UEVENT_GENERATED = 1 << 13
    UUID = 1 << 14
    SECURE_DATA = 1 << 15
    DATA_OUT = 1 << 16
    DEFERRED_REMOVE = 1 << 17


def request_number(cmd: Cmd, layout: IocLayout | None = None) -> int:
    """_IOWR(DM_IOCTL, cmd, struct dm_ioctl): 0xC138FD00 | cmd on x86."""
    return (layout or layout_for()).iowr(DM_IOCTL_TYPE, cmd, DM_IOCTL.size)


@attrs.frozen
class Target:
    """One line of a table: `start length type params`, in 512-byte sectors."""

    start: int
    length: int
    type: str
    params: str

    def __str__(self) -> str:
        return f"{self.start} {self.length} {self.type} {self.params}"


@attrs.frozen
class DeviceInfo:
    name: str
    uuid: str
    major: int
    minor: int
    open_count: int
    event_nr: int
    flags: Flag
    target_count: int

    @property
    def devno(self) -> str:
        return f"{self.major}:{self.minor}"


def _align8(n: int) -> int:
    return (n + 7) & ~7


def pack_ioctl(
    *,
    data_size: int,
    name: str = "",
    uuid: str = "",
    flags: int = 0,
    target_count: int = 0,
    event_nr: int = 0,
    dev: int = 0,
) -> bytes:
    name_b, uuid_b = name.encode(), uuid.encode()
    if len(name_b) >= DM_NAME_LEN:
        raise ValueError(f"device-mapper name {name!r} is longer than {DM_NAME_LEN - 1} bytes")
    if len(uuid_b) >= DM_UUID_LEN:
        raise ValueError(f"device-mapper uuid {uuid!r} is longer than {DM_UUID_LEN - 1} bytes")
    return DM_IOCTL.pack(
        version=DM_VERSION,
        data_size=data_size,
        data_start=DM_IOCTL.size,
        target_count=target_count,
        flags=flags,
        event_nr=event_nr,
        dev=dev,
        name=name_b,
        uuid=uuid_b,
    )


def pack_targets(targets: list[Target]) -> bytes:
    """Target specs for TABLE_LOAD; each `next` is relative to the spec it is in."""
    out = bytearray()
    for target in targets:
        params = target.params.encode() + b"\0"
        record = DM_TARGET_SPEC.size + _align8(len(params))
        out += DM_TARGET_SPEC.pack(
            sector_start=target.start,
            length=target.length,
            next=record,
            target_type=target.type.encode()[: DM_MAX_TYPE_NAME - 1],
        )
        out += params.ljust(_align8(len(params)), b"\0")
    return bytes(out)


def unpack_info(buf: bytes | bytearray) -> DeviceInfo:
    header = DM_IOCTL.unpack(buf)
    return DeviceInfo(
        name=cstring(header.name),
        uuid=cstring(header.uuid),
        major=os.major(header.dev),
        minor=os.minor(header.dev),
        open_count=header.open_count,
        event_nr=header.event_nr,
        flags=Flag(header.flags),
        target_count=header.target_count,
    )


def unpack_targets(buf: bytes | bytearray, count: int) -> list[Target]:
    """Targets of a TABLE_STATUS reply; there `next` is relative to the data area's start."""
    data_start = DM_IOCTL.unpack(buf).data_start
    targets: list[Target] = []
    offset = data_start
    for _ in range(count):
        spec = DM_TARGET_SPEC.unpack(buf, offset)
        params_at = offset + DM_TARGET_SPEC.size
        end = buf.index(b"\0", params_at)
        params = bytes(buf[params_at:end]).decode()
        targets.append(Target(spec.sector_start, spec.length, cstring(spec.target_type), params))
        offset = data_start + spec.next
    return targets


def unpack_names(buf: bytes | bytearray) -> list[tuple[str, int, int]]:
    """LIST_DEVICES reply: (name, major, minor) for every device."""
    out: list[tuple[str, int, int]] = []
    offset = DM_IOCTL.unpack(buf).data_start
    while True:
        record = DM_NAME_LIST.unpack(buf, offset)
        if record.dev == 0:  # the kernel's "no devices" record; no real mapping has dev 0
            return out
        name_at = offset + DM_NAME_LIST.offset("name")
        name = bytes(buf[name_at : buf.index(b"\0", name_at)]).decode("utf-8", "replace")
        out.append((name, os.major(record.dev), os.minor(record.dev)))
        if record.next == 0:
            return out
        offset += record.next


class DeviceMapper:
    """A handle on /dev/mapper/control."""

    BUFFER_SIZE = 16 * 1024  # what libdevmapper starts with; doubled on BUFFER_FULL

    def __init__(self, control: str = "/dev/mapper/control") -> None:
        try:
            self._fd = os.open(control, os.O_RDWR | os.O_CLOEXEC)
        except OSError as e:
            raise KernelError(
                f"cannot open {control}: {e.strerror}",
                e.errno or 0,
                hint="is the dm_mod module loaded?",
            ) from None
        self._layout = layout_for()

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> DeviceMapper:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _call(
        self,
        cmd: Cmd,
        what: str,
        *,
        name: str = "",
        uuid: str = "",
        flags: int = 0,
        payload: bytes = b"",
        target_count: int = 0,
        event_nr: int = 0,
    ) -> bytearray:
        size = max(self.BUFFER_SIZE, DM_IOCTL.size + len(payload))
        with KernelLogWindow() as klog:
            while True:
                buf = bytearray(size)
                buf[: DM_IOCTL.size] = pack_ioctl(
                    data_size=size,
                    name=name,
                    uuid=uuid,
                    flags=flags,
                    target_count=target_count,
                    event_nr=event_nr,
                )
                buf[DM_IOCTL.size : DM_IOCTL.size + len(payload)] = payload
                ioctl(
                    self._fd,
                    request_number(cmd, self._layout),
                    buf,
                    name=f"DM_{cmd.name}",
                    what=what,
                    hints=_HINTS,
                    kernel_log=lambda: [line for line in klog.lines() if "device-mapper" in line],
                )
                if not DM_IOCTL.unpack(buf).flags & Flag.BUFFER_FULL:
                    return buf
                size *= 2

    def version(self) -> tuple[int, int, int]:
        version = DM_IOCTL.unpack(self._call(Cmd.VERSION, "read the device-mapper version"))
        major, minor, patch = version.version
        return major, minor, patch

    def create(self, name: str, uuid: str = "") -> DeviceInfo:
        return unpack_info(self._call(Cmd.DEV_CREATE, f"create {name}", name=name, uuid=uuid))

    def load(self, name: str, targets: list[Target], *, read_only: bool = False) -> None:
        table = "; ".join(str(t) for t in targets)
        self._call(
            Cmd.TABLE_LOAD,
            f"load the table '{table}' into {name}",
            name=name,
            flags=Flag.READONLY if read_only else 0,
            payload=pack_targets(targets),
            target_count=len(targets),
        )

    def resume(self, name: str) -> DeviceInfo:
        """DEV_SUSPEND without the SUSPEND flag: makes a loaded table live."""
        return unpack_info(self._call(Cmd.DEV_SUSPEND, f"resume {name}", name=name))

    def suspend(self, name: str, *, flush: bool = True) -> None:
        flags = Flag.SUSPEND | (0 if flush else Flag.NOFLUSH)
        self._call(Cmd.DEV_SUSPEND, f"suspend {name}", name=name, flags=flags)

    def remove(self, name: str, *, deferred: bool = False) -> None:
        self._call(
            Cmd.DEV_REMOVE,
            f"remove {name}",
            name=name,
            flags=Flag.DEFERRED_REMOVE if deferred else 0,
        )

    def info(self, name: str) -> DeviceInfo:
        return unpack_info(self._call(Cmd.DEV_STATUS, f"read the state of {name}", name=name))

    def status(self, name: str) -> list[Target]:
        """Each target's status line (for a snapshot: `<allocated>/<total> <metadata>`)."""
        buf = self._call(Cmd.TABLE_STATUS, f"read the status of {name}", name=name)
        return unpack_targets(buf, unpack_info(buf).target_count)

    def table(self, name: str) -> list[Target]:
        buf = self._call(
            Cmd.TABLE_STATUS, f"read the table of {name}", name=name, flags=Flag.STATUS_TABLE
        )
        return unpack_targets(buf, unpack_info(buf).target_count)

    def list_devices(self) -> list[tuple[str, int, int]]:
        return unpack_names(self._call(Cmd.LIST_DEVICES, "list devices"))

    def wait_event(self, name: str, event_nr: int) -> DeviceInfo:
        """Block until the device's event counter passes event_nr (DEV_WAIT)."""
        return unpack_info(
            self._call(Cmd.DEV_WAIT, f"wait for an event on {name}", name=name, event_nr=event_nr)
        )


_HINTS = {
    errno.EBUSY: "the device is still in use (mounted, or held by another mapping)",
    errno.ENXIO: "no such device-mapper device",
    errno.EEXIST: "a device-mapper device of that name exists already",
}


def make_node(name: str, major: int, minor: int, directory: str = "/dev/mapper") -> str:
    """Create /dev/mapper/<name> as a block node, whether or not udev runs.

    Like libdevmapper without udev: an existing node for the same device is kept.
    """
    path = os.path.join(directory, name)
    os.makedirs(directory, mode=0o755, exist_ok=True)
    wanted = os.makedev(major, minor)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        pass
    else:
        if stat.S_ISBLK(st.st_mode) and st.st_rdev == wanted:
            return path
        if stat.S_ISLNK(st.st_mode) and os.stat(path).st_rdev == wanted:
            return path
        os.unlink(path)
    os.mknod(path, stat.S_IFBLK | 0o600, wanted)
    return path


def remove_node(name: str, directory: str = "/dev/mapper") -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(os.path.join(directory, name))


@attrs.frozen
class SnapshotStatus:
    """A snapshot target's status: usage in sectors, or a state word."""

    allocated: int | None = None
    total: int | None = None
    metadata: int | None = None
    state: str = "Active"  # or Invalid, Overflow, Merge failed, Unknown

    @classmethod
    def parse(cls, line: str) -> SnapshotStatus:
        words = line.split()
        if len(words) == 2 and "/" in words[0]:
            allocated, total = words[0].split("/")
            return cls(int(allocated), int(total), int(words[1]))
        return cls(state=line.strip() or "Unknown")

    @property
    def used_fraction(self) -> float | None:
        if self.allocated is None or not self.total:
            return None
        return self.allocated / self.total
