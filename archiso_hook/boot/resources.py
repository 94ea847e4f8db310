"""What a boot acquires from the kernel, one typed value per kind: a mount, a loop device,
a snapshot, a COW file, an NBD device, a network link.

Each kind declares its fields once, with what each must be; from that come the record
the state file keeps (`record`), the check every reader of a record makes before it
trusts one (`check_record`, `RECORDS`), the value again (`from_record`), and the words
for its release (`Resource.release_text`). The boot registers one of these the moment
the kernel made it; `status`, the report, a retried boot and the shutdown read them back.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, ClassVar

import attrs

Check = Callable[[Any], bool]


def _text(value: Any) -> bool:
    """Text a system call can take: no NUL, and bytes again (a file name that is not
    UTF-8 was read with surrogateescape; a lone surrogate from a JSON escape is not)."""
    if not isinstance(value, str) or "\0" in value:
        return False
    try:
        value.encode("utf-8", errors="surrogateescape")
    except UnicodeEncodeError:
        return False
    return True


def _path(value: Any) -> bool:
    return _text(value) and value.startswith("/")


def _device(prefix: str) -> Check:
    pattern = re.compile(rf"/dev/{prefix}[0-9]+")
    return lambda value: isinstance(value, str) and pattern.fullmatch(value) is not None


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _flag(value: Any) -> bool:
    return isinstance(value, bool)


def _dm_name(value: Any) -> bool:  # what DM_DEV_CREATE takes: 1..127 bytes, no '/'
    return (
        _text(value) and value.isprintable() and 0 < len(value.encode()) < 128 and "/" not in value
    )


def _devno(value: Any) -> bool:
    return isinstance(value, str) and re.fullmatch(r"[0-9]+:[0-9]+", value) is not None


def _path_or_none(value: Any) -> bool:
    return value is None or _path(value)


path, text, count, flag = _path, _text, _count, _flag  # for the top-level checks of State


def _field(check: Check, *, optional: bool = False, default: Any = attrs.NOTHING) -> Any:
    """A field of a record: `check` says what it must be; `optional`: older hooks did not
    record it, so a record without it is still whole."""
    return attrs.field(default=default, metadata={"check": check, "optional": optional})


@attrs.frozen
class Mount:
    KIND: ClassVar[str] = "mount"
    KEY: ClassVar[str] = "target"
    target: str = _field(_path)
    source: str = _field(_text)
    fstype: str = _field(_text)
    read_only: bool = _field(_flag, optional=True, default=False)
    live_path: str | None = _field(_path_or_none, optional=True, default=None)

    @property
    def release_text(self) -> str:
        return f"unmount {self.target}"


@attrs.frozen
class Loop:
    KIND: ClassVar[str] = "loop"
    KEY: ClassVar[str] = "device"
    device: str = _field(_device("loop"))
    backing: str = _field(_path)
    read_only: bool = _field(_flag)

    @property
    def release_text(self) -> str:
        return f"detach {self.device}"


@attrs.frozen
class Snapshot:
    KIND: ClassVar[str] = "dm"
    KEY: ClassVar[str] = "name"
    name: str = _field(_dm_name)
    device: str = _field(_path)
    devno: str = _field(_devno)
    origin: str = _field(_device("loop"))
    cow: str = _field(_device("loop"))
    mode: str = _field(_text)
    chunk_sectors: int = _field(_count)
    table: str = _field(_text)
    cow_file: str = _field(_path)
    # What covering every chunk of the origin takes: the most the COW can use.
    cow_need: int = _field(_count)

    @property
    def release_text(self) -> str:
        return f"remove {self.device}"


@attrs.frozen
class Link:
    KIND: ClassVar[str] = "net"
    KEY: ClassVar[str] = "interface"
    interface: str = _field(_text)
    address: str = _field(_text)
    how: str = _field(_text)

    @property
    def release_text(self) -> str:
        return f"take {self.interface} down"


@attrs.frozen
class Nbd:
    KIND: ClassVar[str] = "nbd"
    KEY: ClassVar[str] = "device"
    device: str = _field(_device("nbd"))
    server: str = _field(_text)
    export: str = _field(_text)
    # What `watch` needs to reconnect it when the server restarts (nbd.Link).
    address: str = _field(_text, optional=True, default="")
    port: int = _field(_count, optional=True, default=0)
    size: int = _field(_count, optional=True, default=0)
    timeout: int = _field(_count, optional=True, default=0)

    @property
    def release_text(self) -> str:
        return f"detach {self.device}"


@attrs.frozen
class CowFile:
    KIND: ClassVar[str] = "file"
    KEY: ClassVar[str] = "path"
    path: str = _field(_path)
    apparent_bytes: int = _field(_count)
    kept: bool = _field(_flag)  # a persistent file found at boot: never removed

    @property
    def release_text(self) -> str:
        return f"remove {self.path}"


Resource = Mount | Loop | Snapshot | Link | Nbd | CowFile
KINDS: dict[str, type[Resource]] = {
    cls.KIND: cls for cls in (Mount, Loop, Snapshot, Link, Nbd, CowFile)
}

# Every record the hook writes: its fields and what each must be. A record missing one,
# or with one of another type, is skipped by every reader (and reported).
RECORDS: dict[str, dict[str, Check]] = {
    kind: {f.name: f.metadata["check"] for f in attrs.fields(cls)} for kind, cls in KINDS.items()
}
OPTIONAL = {
    (kind, f.name)
    for kind, cls in KINDS.items()
    for f in attrs.fields(cls)
    if f.metadata["optional"]
}


def check_record(record: Any) -> str | None:
    """Why this record cannot be trusted, or None when every field is as RECORDS says."""
    if not isinstance(record, dict):
        return "not a record"
    kind = record.get("kind")
    fields = RECORDS.get(kind) if isinstance(kind, str) else None
    if fields is None:
        return f"unknown kind {kind!r}"
    for name, check in fields.items():
        if name not in record:
            if (kind, name) in OPTIONAL:
                continue
            return f"its field {name!r} is missing"
        if not check(record[name]):
            return f"its field {name!r} is {record[name]!r}"
    return None


def record(resource: Resource) -> dict[str, Any]:
    """What the state file keeps of it."""
    return {"kind": resource.KIND, **attrs.asdict(resource, recurse=False)}


def from_record(data: dict[str, Any]) -> Resource:
    """The value of a record that `check_record` passed (fields it does not know are a
    newer hook's: left out)."""
    cls = KINDS[data["kind"]]
    names = {f.name for f in attrs.fields(cls)}
    return cls(**{k: v for k, v in data.items() if k in names})


def key(resource: Resource) -> str:
    """What names it among its kind's: `mount:/run/archiso/bootmnt`."""
    return f"{resource.KIND}:{getattr(resource, resource.KEY)}"
