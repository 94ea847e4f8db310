"""Structs declared by field name (archiso_hook.kernel.cstruct); test_abi checks the kernel's
own declarations against the compiler."""

from __future__ import annotations

import pytest

from archiso_hook.kernel.cstruct import Struct, cstring

INNER = Struct("inner", (("a", "H"), ("b", "4s")), uapi=False)
OUTER = Struct(
    "outer",
    (("magic", "8s"), ("count", "I"), ("pair", "2H"), ("inner", INNER), ("tail", "0s")),
    order=">",
    uapi=False,
)


def test_fields_are_packed_in_order_without_padding() -> None:
    assert INNER.size == 6
    assert OUTER.size == 8 + 4 + 4 + 6
    assert [OUTER.offset(f) for f in OUTER.fields] == [0, 8, 12, 16, 22]
    assert OUTER.offset("inner.b") == 18
    assert OUTER.field_size("pair") == 4 and OUTER.field_size("tail") == 0


def test_a_field_left_out_is_zero_and_values_come_back_by_name() -> None:
    raw = OUTER.pack(magic=b"MAGIC", pair=(1, 2), inner={"b": b"xy"})
    assert raw == b"MAGIC\0\0\0" + bytes(4) + b"\0\x01\0\x02" + bytes(2) + b"xy\0\0"
    record = OUTER.unpack(b"junk" + raw, 4)
    assert record.magic == b"MAGIC\0\0\0" and record["count"] == 0
    assert record.pair == (1, 2)
    assert record.inner.b == b"xy\0\0" and dict(record.inner) == {"a": 0, "b": b"xy\0\0"}
    assert list(record) == ["magic", "count", "pair", "inner", "tail"]
    assert OUTER.pack(inner=INNER.pack(a=7)) == OUTER.pack(inner={"a": 7})


def test_a_record_is_read_only_and_names_its_struct_in_errors() -> None:
    record = INNER.unpack(INNER.pack(a=1))
    with pytest.raises(AttributeError, match="read-only"):
        record.a = 2
    with pytest.raises(AttributeError, match="struct inner has no field 'c'"):
        _ = record.c
    assert repr(record) == "inner(a=1, b=b'\\x00\\x00\\x00\\x00')"


def test_mistakes_in_a_declaration_or_a_pack_are_errors() -> None:
    with pytest.raises(TypeError, match="struct inner has no field 'c'"):
        INNER.pack(c=1)
    with pytest.raises(KeyError, match="no field 'c'"):
        INNER.offset("c")
    with pytest.raises(ValueError, match="declared twice"):
        Struct("x", (("a", "I"), ("a", "I")))
    with pytest.raises(ValueError, match="unknown format"):
        Struct("x", (("a", "I4"),))
    with pytest.raises(ValueError, match="would hide a method"):
        Struct("x", (("values", "I"),))


def test_cstring_stops_at_the_first_nul() -> None:
    assert cstring(b"arch\0junk") == "arch"
    assert cstring(b"\xff\0") == "\ufffd"
