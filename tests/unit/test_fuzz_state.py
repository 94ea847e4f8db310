"""Property tests of the state file the hook reads back (/run/archiso/state.json): a
damaged one gives what it can, with one line a problem, or one clear error; what is
kept is usable as RECORDS says and reads back the same once saved."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from archiso_hook.boot.state import RECORDS, State, check_record
from tests.unit.strategies import (
    SURROGATES,
    counted,
)

pytestmark = pytest.mark.usefixtures("fuzz_tally")


STATE_PATH = "/run/archiso/state.json"


def _record_value(check_name: str) -> st.SearchStrategy[Any]:
    # As the hook writes: any text but NUL; names that are not UTF-8 surrogateescaped.
    chars = (
        st.characters(min_codepoint=1, max_codepoint=0xD7FF)
        | st.characters(min_codepoint=0xE000)
        | SURROGATES
    )
    text = st.text(chars, max_size=12)
    return {
        "_text": text,
        "_path": text.map(lambda s: "/" + s),
        "_count": st.integers(0, 1 << 40),
        "_flag": st.booleans(),
        "_dm_name": st.from_regex(r"[A-Za-z0-9_.+-]{1,16}", fullmatch=True),  # as plan makes
        "_devno": st.tuples(st.integers(0, 511), st.integers(0, 1 << 20)).map(
            lambda d: f"{d[0]}:{d[1]}"
        ),
        "_path_or_none": st.none() | text.map(lambda s: "/" + s),
    }.get(check_name, st.integers(0, 9).map(lambda n: f"/dev/{check_name}{n}"))


@st.composite
def records(draw: st.DrawFn) -> dict[str, Any]:
    kind = draw(st.sampled_from(sorted(RECORDS)))
    record: dict[str, Any] = {"kind": kind}
    for name, check in RECORDS[kind].items():
        label = getattr(check, "__name__", "")
        if label == "<lambda>":  # _device(prefix): /dev/<prefix>N
            label = {"device": "loop" if kind in ("loop", "dm") else "nbd"}.get(name, "loop")
        record[name] = draw(_record_value(label))
    return record


@st.composite
def state_files(draw: st.DrawFn) -> str:
    """A state as the hook writes it: a saved document, then appended changes."""
    head = {
        "version": 1,
        "newroot": "/new_root",
        "resources": draw(st.lists(records(), max_size=4)),
        "complete": draw(st.booleans()),
    }
    lines = [json.dumps(head)]
    for _ in range(draw(st.integers(0, 4))):
        if draw(st.booleans()):
            lines.append(json.dumps({"add": draw(records())}))
        else:
            lines.append(json.dumps({"remove": ["loop", "device", "/dev/loop0"]}))
    return "\n".join(lines) + "\n"


@st.composite
def damaged_state_files(draw: st.DrawFn) -> bytes:
    """A state file, then one damage: cut short, bytes replaced, or a line inserted."""
    data = draw(state_files()).encode()
    at = draw(st.integers(0, len(data)))
    how = draw(st.sampled_from(["cut", "replace", "insert"]))
    if how == "cut":
        return data[:at]
    junk = draw(st.binary(max_size=12) | st.sampled_from([b"\n", b'"', b"{", b"}", b"null"]))
    if how == "replace":
        return data[:at] + junk + data[at + len(junk) :]
    return data[:at] + junk + data[at:]


def check_state_read(data: bytes, tmp: Path) -> None:
    path = tmp / "state.json"
    path.write_bytes(data)
    try:
        state, problems = State.read(str(path))
    except ValueError as e:
        assert str(e).startswith(f"{path} is not a state file"), e
        return
    # Whatever it kept, every reader may use as RECORDS says, and a save reads back the same.
    for record in state.every_record():
        assert check_record(record) is None, record
    for problem in problems:
        assert problem.startswith(f"{path}: ") and "\n" not in problem, problem
    state.save(str(path))
    assert State.read(str(path)) == (state, [])


@given(damaged_state_files() | st.binary(max_size=200))
@example(b'{"newroot": "/r", "resources": [{"kind": "loop", "device": "/dev/loop0"}]}')
@example(b'{"newroot": "/r"}\n{"remove": ["loop"]}\n{"add": []}\n')
@example(b'{"newroot": "/r", "cow": {"space": 1}}')
@example(b'{"newroot": "/r"}\n\xff\xfe\n')
@counted
def test_state_read_on_damaged_files(data: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        check_state_read(data, Path(tmp))


@given(state_files())
@counted
def test_state_files_read_back_whole(text: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "state.json"
        path.write_text(text)
        _, problems = State.read(str(path))
        assert problems == []
