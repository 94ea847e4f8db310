"""The state file: what `status` and the teardown read back."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

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


def test_fields_a_newer_hook_wrote_are_ignored(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    path.write_text(json.dumps({"version": VERSION + 1, "newroot": "/r", "later": [1]}))
    assert State.load(str(path)) == State("/r")
