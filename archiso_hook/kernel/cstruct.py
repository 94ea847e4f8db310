"""C structs declared once, field by field in C order, and read and written by field name.

    DM_TARGET_SPEC = Struct("dm_target_spec", (
        ("sector_start", "Q"),  # __u64 sector_start;
        ("length", "Q"),  # __u64 length;
        ...
    ))
    DM_TARGET_SPEC.pack(sector_start=0, length=2048, ...)   # fields left out are zero
    DM_TARGET_SPEC.unpack(buffer, offset).length

A field's format is one `struct` code with an optional count: "I", "3I" (a tuple of 3),
"128s" (bytes; "0s" for a flexible array member), or another Struct (a nested struct).
Fields are packed one after the other with no padding (byte order "=" by default, ">"
for a network protocol): a declaration spells out the C struct's padding as fields of
its own, and tests/unit/test_abi.py checks every field of a struct with a C name at the
compiler's offsetof() on each architecture the hook is built for.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

_FORMAT = re.compile(r"(\d*)([bBhHiIqQs])")


class Record(Mapping[str, Any]):
    """An unpacked struct: read-only, its fields by name (`r.flags` or `r["flags"]`)."""

    __slots__ = ("_struct_name", "_values")

    def __init__(self, struct_name: str, values: dict[str, Any]) -> None:
        object.__setattr__(self, "_struct_name", struct_name)
        object.__setattr__(self, "_values", values)

    def __getitem__(self, name: str) -> Any:
        return self._values[name]

    def __getattr__(self, name: str) -> Any:
        try:
            return self._values[name]
        except KeyError:
            raise AttributeError(f"struct {self._struct_name} has no field {name!r}") from None

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"struct {self._struct_name} read from the kernel is read-only")

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __repr__(self) -> str:
        fields = ", ".join(f"{name}={value!r}" for name, value in self._values.items())
        return f"{self._struct_name}({fields})"


class _Field:
    __slots__ = ("count", "item", "name", "nested", "offset", "size")

    def __init__(self, name: str, spec: str | Struct, offset: int, order: str) -> None:
        self.name = name
        self.offset = offset
        self.nested: Struct | None = None
        self.count: int
        self.item: str
        if isinstance(spec, Struct):
            self.nested = spec
            self.count, self.item = 1, f"{spec.size}s"
        else:
            match = _FORMAT.fullmatch(spec)
            if match is None:
                raise ValueError(f"field {name!r}: unknown format {spec!r}")
            count = int(match.group(1) or 1)
            code = match.group(2)
            # "128s" is one bytes item; "3I" is three ints.
            self.count = 1 if code == "s" else count
            self.item = f"{count}s" if code == "s" else f"{count}{code}"
        self.size: int = struct.calcsize(order + self.item)

    def default(self) -> object:
        if self.item.endswith("s"):
            return b""
        return 0 if self.count == 1 else (0,) * self.count


class Struct:
    """A C struct's layout: `fields` are (name, format) pairs in C order.

    `name` is the struct's tag (`dm_ioctl` for `struct dm_ioctl`); `uapi` says whether
    the kernel's UAPI headers declare it (then `c_name` is the tag, and test_abi
    compares the layout with the compiler's), not so for a network protocol's message.
    """

    def __init__(
        self,
        name: str,
        fields: Sequence[tuple[str, str | Struct]],
        *,
        order: str = "=",
        uapi: bool = True,
    ) -> None:
        self.name = name
        self.c_name = name if uapi else None
        self.order = order
        self._fields: dict[str, _Field] = {}
        offset = 0
        for field_name, spec in fields:
            if field_name in self._fields:
                raise ValueError(f"struct {name}: field {field_name!r} declared twice")
            if hasattr(Record, field_name):
                raise ValueError(f"struct {name}: field {field_name!r} would hide a method")
            field = self._fields[field_name] = _Field(field_name, spec, offset, order)
            offset += field.size
        self._struct = struct.Struct(order + "".join(f.item for f in self._fields.values()))
        self.size: int = self._struct.size

    @property
    def fields(self) -> tuple[str, ...]:
        return tuple(self._fields)

    def offset(self, name: str) -> int:
        """Where a field starts; `info.lo_flags` names a field of a nested struct."""
        outer, _, inner = name.partition(".")
        field = self._field(outer)
        if not inner:
            return field.offset
        if field.nested is None:
            raise KeyError(f"struct {self.name}: field {outer!r} is not a struct")
        return field.offset + field.nested.offset(inner)

    def field_size(self, name: str) -> int:
        return self._field(name).size

    def nested(self, name: str) -> Struct | None:
        return self._field(name).nested

    def _field(self, name: str) -> _Field:
        try:
            return self._fields[name]
        except KeyError:
            raise KeyError(f"struct {self.name} has no field {name!r}") from None

    def pack(self, **values: Any) -> bytes:
        """The struct's bytes; a field not given is zero. A nested struct's value may be
        its bytes or a mapping of its fields."""
        unknown = values.keys() - self._fields.keys()
        if unknown:
            raise TypeError(f"struct {self.name} has no field {sorted(unknown)[0]!r}")
        items: list[object] = []
        for field in self._fields.values():
            value = values.get(field.name, field.default())
            if field.nested is not None and isinstance(value, Mapping):
                value = field.nested.pack(**value)
            if field.count == 1:
                items.append(value)
            else:
                items.extend(value)
        return self._struct.pack(*items)

    def unpack(self, buffer: bytes | bytearray | memoryview, offset: int = 0) -> Record:
        """The struct at `offset` of `buffer` (which may be longer)."""
        items = iter(self._struct.unpack_from(buffer, offset))
        values: dict[str, Any] = {}
        for field in self._fields.values():
            if field.count == 1:
                value = next(items)
                if field.nested is not None:
                    value = field.nested.unpack(value)
            else:
                value = tuple(next(items) for _ in range(field.count))
            values[field.name] = value
        return Record(self.name, values)

    def __repr__(self) -> str:
        return f"Struct({self.name!r}, size={self.size})"


def cstring(raw: bytes) -> str:
    """A NUL-terminated char array as text (utf-8; bad bytes replaced)."""
    return raw.split(b"\0", 1)[0].decode("utf-8", "replace")
