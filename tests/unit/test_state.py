"""The state file: what `status` and the teardown read back."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from archiso_hook.state import VERSION, State


def test_a_saved_state_loads_back_the_same(tmp_path: Path) -> None:
    state = State("/new_root", timings={"mount_seconds": 1.5}, cow={"grow": True})
    state.add("loop", device="/dev/loop0", backing="/run/archiso/bootmnt/a.sfs", read_only=True)
    state.add("mount", target="/new_root", source="/dev/mapper/arch_root")
    state.remove("loop", "device", "/dev/loop0")
    path = tmp_path / "archiso" / "state.json"
    state.save(str(path))
    assert State.load(str(path)) == state
    assert json.loads(path.read_text())["version"] == VERSION
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert not (tmp_path / "archiso" / "state.json.tmp").exists()
    # The directory also holds the boot report, which every user may read.
    assert os.stat(path.parent).st_mode & 0o005 == 0o005


def test_fields_a_newer_hook_wrote_are_ignored(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    path.write_text(json.dumps({"version": VERSION + 1, "newroot": "/r", "later": [1]}))
    assert State.load(str(path)) == State("/r")


def test_changes_appended_after_a_save_load_back(tmp_path: Path) -> None:
    path = str(tmp_path / "state.json")
    state = State("/new_root", images=[{"img": "root"}])
    state.save(path)
    state.add_saved(path, "loop", device="/dev/loop0", backing="/a.sfs")
    state.add_saved(path, "mount", target="/new_root", source="/dev/loop0", path="/x")
    state.add_saved(path, "loop", device="/dev/loop1", backing="/b.sfs")
    state.remove_saved(path, "loop", "device", "/dev/loop0")
    assert State.load(path) == state
    assert [r.get("device") for r in State.load(path).resources] == [None, "/dev/loop1"]
    # One line per change after the saved document: appending costs the same at any size.
    assert len(Path(path).read_text().splitlines()) == 1 + 4


def test_a_full_save_replaces_the_appended_changes(tmp_path: Path) -> None:
    path = str(tmp_path / "state.json")
    state = State("/new_root")
    state.save(path)
    state.add_saved(path, "loop", device="/dev/loop0")
    state.complete = True
    state.save(path)
    assert len(Path(path).read_text().splitlines()) == 1
    assert State.load(path) == state


def test_a_last_line_cut_short_is_left_out(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    state = State("/new_root")
    state.save(str(path))
    state.add_saved(str(path), "loop", device="/dev/loop0")
    with path.open("a") as f:
        f.write('{"add": {"kind": "mou')  # the hook killed mid-write
    assert State.load(str(path)) == state


def test_a_malformed_line_before_the_last_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    State("/new_root").save(str(path))
    with path.open("a") as f:
        f.write('{"add": \n{"add": {"kind": "loop"}}\n')
    with pytest.raises(ValueError):
        State.load(str(path))


def test_an_indented_state_from_an_earlier_hook_loads(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    path.write_text(json.dumps({"version": VERSION, "newroot": "/r", "complete": True}, indent=2))
    assert State.load(str(path)) == State("/r", complete=True)
