"""The state file: what `status` and the teardown read back."""

from __future__ import annotations

import io
import json
import os
import stat
from pathlib import Path

import pytest

from archiso_hook.boot import resources
from archiso_hook.boot.state import (
    RECORDS,
    VERSION,
    State,
    StateBusyError,
    check_record,
    locked,
    release_earlier,
)
from archiso_hook.errors import HookError
from archiso_hook.log import Log

LOOP0 = {"device": "/dev/loop0", "backing": "/run/archiso/bootmnt/a.sfs", "read_only": True}
LOOP1 = {"device": "/dev/loop1", "backing": "/run/archiso/bootmnt/b.sfs", "read_only": True}
ROOT = {"target": "/new_root", "source": "/dev/mapper/arch_root", "fstype": "ext4",
        "read_only": False, "live_path": None}  # fmt: skip


def test_a_saved_state_loads_back_the_same(tmp_path: Path) -> None:
    cow = {"space": "/run/archiso/cowspace", "tmpfs": True, "grow": True, "grow_max": 2**30}
    state = State("/new_root", timings={"mount_seconds": 1.5}, cow=cow)
    state.add("loop", **LOOP0)
    state.add("mount", **ROOT)
    state.remove("loop", "device", "/dev/loop0")
    path = tmp_path / "archiso" / "state.json"
    state.save(str(path))
    assert State.load(str(path)) == state
    assert json.loads(path.read_text())["version"] == VERSION
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert os.listdir(path.parent) == ["state.json"]  # no temporary file left
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
    state.add_saved(path, "loop", **LOOP0)
    state.add_saved(path, "mount", **ROOT)
    state.add_saved(path, "loop", **LOOP1)
    state.remove_saved(path, "loop", "device", "/dev/loop0")
    assert State.load(path) == state
    assert [r.get("device") for r in State.load(path).resources] == [None, "/dev/loop1"]
    # One line per change after the saved document: appending costs the same at any size.
    assert len(Path(path).read_text().splitlines()) == 1 + 4


def test_a_full_save_replaces_the_appended_changes(tmp_path: Path) -> None:
    path = str(tmp_path / "state.json")
    state = State("/new_root")
    state.save(path)
    state.add_saved(path, "loop", **LOOP0)
    state.complete = True
    state.save(path)
    assert len(Path(path).read_text().splitlines()) == 1
    assert State.load(path) == state


def test_a_last_line_cut_short_is_left_out(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    state = State("/new_root")
    state.save(str(path))
    state.add_saved(str(path), "loop", **LOOP0)
    with path.open("a") as f:
        f.write('{"add": {"kind": "mou')  # the hook killed mid-write
    assert State.load(str(path)) == state


def test_a_malformed_line_before_the_last_is_skipped_and_named(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    State("/new_root").save(str(path))
    with path.open("a") as f:
        f.write('{"add": \n')
        f.write(json.dumps({"add": {"kind": "loop", **LOOP0}}) + "\n")
    state, problems = State.read(str(path))
    assert state.resources == [{"kind": "loop", **LOOP0}]
    assert problems == [f"{path}: line 2 skipped: not JSON"]


def test_an_indented_state_from_an_earlier_hook_loads(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    path.write_text(json.dumps({"version": VERSION, "newroot": "/r", "complete": True}, indent=2))
    assert State.load(str(path)) == State("/r", complete=True)


@pytest.mark.parametrize(
    ("record", "why"),
    [
        ({"kind": "loop", **LOOP0, "device": "/dev/sda"}, "its field 'device' is '/dev/sda'"),
        ({"kind": "loop", "device": "/dev/loop0"}, "its field 'backing' is missing"),
        ({"kind": "loop", **LOOP0, "read_only": "yes"}, "its field 'read_only' is 'yes'"),
        ({"kind": "mount", **ROOT, "target": "new_root"}, "its field 'target' is 'new_root'"),
        ({"kind": "file", "path": "/c", "apparent_bytes": -1, "kept": False},
         "its field 'apparent_bytes' is -1"),
        ({"kind": "file", "path": "/c", "apparent_bytes": True, "kept": False},
         "its field 'apparent_bytes' is True"),
        ({"kind": "nbd", "device": "/dev/nbd0/../sda", "server": "s:1", "export": ""},
         "its field 'device' is '/dev/nbd0/../sda'"),
        ({"kind": "teleport"}, "unknown kind 'teleport'"),
        (["loop"], "not a record"),
    ],
)  # fmt: skip
def test_a_record_is_checked_field_by_field(record: object, why: str) -> None:
    assert check_record(record) == why


def test_every_kind_of_resource_reads_back_as_it_was_recorded() -> None:
    # RECORDS comes from the resource types: a record of each passes its checks and
    # gives the same value again.
    samples: list[resources.Resource] = [
        resources.Mount("/run/archiso/bootmnt", "/dev/sr0", "iso9660", True, None),
        resources.Loop("/dev/loop0", "/run/archiso/bootmnt/arch/x86_64/airootfs.sfs", True),
        resources.Snapshot("arch_root", "/dev/mapper/arch_root", "254:0", "/dev/loop0",
                           "/dev/loop1", "PO", 8, "0 8 snapshot 7:0 7:1 PO 8",
                           "/run/archiso/cowspace/root.cow", 4096),
        resources.Link("eth0", "10.0.2.15/24", "dhcp"),
        resources.Nbd("/dev/nbd0", "10.0.2.2:10809", "arch", "10.0.2.2", 10809, 1 << 20, 60),
        resources.CowFile("/run/archiso/cowspace/root.cow", 1 << 20, False),
    ]  # fmt: skip
    assert {type(r).KIND for r in samples} == set(RECORDS)
    for resource in samples:
        record = resources.record(resource)
        assert check_record(record) is None, record
        assert resources.from_record(record) == resource
        assert resources.key(resource) == f"{resource.KIND}:{record[resource.KEY]}"


def test_bad_records_are_skipped_and_the_rest_kept(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    good = {"kind": "loop", **LOOP1}
    path.write_text(
        json.dumps(
            {
                "newroot": "/new_root",
                "resources": [{"kind": "loop", "device": 7}, good],
                "timings": {"x": "slow"},
                "complete": "yes",
            }
        )
        + "\n"
        + json.dumps({"add": {"kind": "dm", "name": "a/b"}})
        + "\n"
        + json.dumps({"remove": "everything"})
        + "\n"
        + json.dumps([1, 2])
        + "\n"
    )
    state, problems = State.read(str(path))
    assert state == State("/new_root", resources=[good])
    assert problems == [
        f"{path}: its 'complete' is not what a state holds: ignored",
        f"{path}: its 'timings' is not what a state holds: ignored",
        f"{path}: resources record 1 skipped: its field 'device' is 7",
        f"{path}: line 2 skipped: its field 'name' is 'a/b'",
        f"{path}: line 3 skipped: a removal of 'everything'",
        f"{path}: line 4 skipped: neither an addition nor a removal",
    ]


@pytest.mark.parametrize(
    "content",
    [b"", b"\xff\xfe garbage", b"[1, 2]", b'{"resources": []}', b'{"newroot": 7}', b"null"],
)
def test_a_file_that_is_no_state_is_one_clear_error(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "state.json"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=rf"^{path} is not a state file"):
        State.read(str(path))


def test_leftovers_of_an_earlier_attempt_load_back_checked(tmp_path: Path) -> None:
    path = str(tmp_path / "state.json")
    state = State("/new_root", leftovers=[{"kind": "loop", **LOOP0}])
    state.add("loop", **LOOP1)
    state.save(path)
    assert State.load(path) == state
    assert [r["device"] for r in State.load(path).every_record()] == ["/dev/loop0", "/dev/loop1"]


def test_the_lock_names_its_holder_to_the_next(tmp_path: Path) -> None:
    path = str(tmp_path / "archiso" / "state.json")
    with locked(path, command="mount"):
        with pytest.raises(StateBusyError) as caught, locked(path, command="watch", wait=0.1):
            pass  # pragma: no cover
        assert caught.value.message.endswith(f"archiso-hook mount (pid {os.getpid()})")
    with locked(path, command="shutdown", wait=0):  # released when the block ended
        pass


def test_a_lock_dies_with_its_holder(tmp_path: Path) -> None:
    path = str(tmp_path / "state.json")
    pid = os.fork()
    if pid == 0:  # pragma: no cover  (the child)
        with locked(path, command="mount"):
            os.kill(os.getpid(), 9)
    os.waitpid(pid, 0)
    with locked(path, command="mount", wait=0):
        pass


def test_two_writers_never_share_a_temporary_file(tmp_path: Path) -> None:
    path = str(tmp_path / "state.json")
    # A temporary file a killed writer of our pid left behind is replaced, not appended to.
    Path(f"{path}.{os.getpid()}.tmp").write_text("half")
    State("/a").save(path)
    assert State.load(path) == State("/a")
    assert sorted(os.listdir(tmp_path)) == ["state.json"]


def _quiet_log() -> tuple[Log, io.StringIO]:
    out = io.StringIO()
    return Log(stream=out, kmsg=False), out


def test_release_earlier_with_no_earlier_state_releases_nothing(tmp_path: Path) -> None:
    log, out = _quiet_log()
    assert release_earlier(str(tmp_path / "state.json"), log) == []
    assert out.getvalue() == ""


def test_release_earlier_sets_an_unreadable_state_aside(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    path.write_text("{not json")
    log, out = _quiet_log()
    assert release_earlier(str(path), log) == []
    assert not path.exists() and (tmp_path / "state.json.bad").read_text() == "{not json"
    assert "set aside as" in out.getvalue()


def test_release_earlier_refuses_over_a_complete_boot(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    State(newroot="/new_root", complete=True).save(str(path))
    log, _ = _quiet_log()
    with pytest.raises(HookError, match="records a live root already set up at /new_root"):
        release_earlier(str(path), log)
    assert path.exists()  # the live root's record stays


def test_release_earlier_of_an_attempt_that_left_nothing(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    State(newroot="/new_root").save(str(path))
    log, out = _quiet_log()
    assert release_earlier(str(path), log) == []
    assert "earlier attempt" not in out.getvalue()
