"""What the hook set up, in order, kept in /run/archiso/state.json.

Later commands read it: `status` reports on it, teardown undoes it in reverse.
/run survives switch_root (it is moved into the new root), so does this file.

The file is one JSON document (a full save) followed by zero or more lines, each one
change to the resources since: {"add": {...}} or {"remove": [kind, key, value]}. The
hook records every loop device and mount the moment it exists, so that a hook killed
half-way leaves an accurate list; appending a line keeps that O(1) per resource, where
rewriting the whole file each time made a boot quadratic in its aitab entries.

Whoever reads it trusts nothing in it: the shutdown runs as PID 1 and must power off
whatever a killed hook or a full disk left there. `State.read` checks every record
field by field against RECORDS and skips a bad one with a sentence saying why; only a
file that is not a state file at all is an error. Writers take `locked()` first.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from collections.abc import Iterator
from typing import Any

import attrs

from archiso_hook.boot.resources import RECORDS, Check, check_record
from archiso_hook.boot.resources import count as _count
from archiso_hook.boot.resources import flag as _flag
from archiso_hook.boot.resources import path as _path
from archiso_hook.errors import HookError
from archiso_hook.kernel import syscalls
from archiso_hook.lazy import function
from archiso_hook.log import Log
from archiso_hook.paths import STATE_FILE

VERSION = 1

# The top-level fields and what each must be; a wrong one is reset to its default.
_FIELD_CHECKS: dict[str, Check] = {
    "newroot": _path,
    "resources": lambda v: isinstance(v, list),
    "leftovers": lambda v: isinstance(v, list),
    "images": lambda v: isinstance(v, list),
    "complete": _flag,
    "timings": lambda v: (
        isinstance(v, dict)
        and all(isinstance(x, int | float) and not isinstance(x, bool) for x in v.values())
    ),
    "cow": lambda v: (
        isinstance(v, dict)
        and (
            not v
            or (
                _path(v.get("space"))
                and _flag(v.get("tmpfs"))
                and _flag(v.get("grow"))
                and _count(v.get("grow_max"))
            )
        )
    ),
}


__all__ = ["RECORDS", "State", "StateBusyError", "check_record", "locked"]


@attrs.define
class State:
    newroot: str
    resources: list[dict[str, Any]] = attrs.Factory(list)
    images: list[dict[str, Any]] = attrs.Factory(list)
    complete: bool = False
    timings: dict[str, float] = attrs.Factory(dict)
    # What `watch` may do with the COW space: {"space", "tmpfs", "grow", "grow_max"}.
    cow: dict[str, Any] = attrs.Factory(dict)
    # What an earlier attempt set up and could not release: tried again by the next
    # attempt and by the shutdown.
    leftovers: list[dict[str, Any]] = attrs.Factory(list)

    def add(self, kind: str, /, **fields: Any) -> None:
        self.resources.append({"kind": kind, **fields})

    def remove(self, kind: str, key: str, value: Any) -> None:
        self.resources = [
            r for r in self.resources if not (r["kind"] == kind and r.get(key) == value)
        ]

    def every_record(self) -> list[dict[str, Any]]:
        """Leftovers of earlier attempts, then this one's resources: in the order made."""
        return self.leftovers + self.resources

    def save(self, path: str = STATE_FILE) -> None:
        """The whole state, atomically, readable by root only: one line through json's
        C encoder (indent= and attrs.asdict() would run in Python)."""
        fields = {field.name: getattr(self, field.name) for field in attrs.fields(State)}
        text = json.dumps({"version": VERSION, **fields}) + "\n"
        # /run/archiso: the report beside this file is for every user; this one is 0600.
        os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
        tmp = f"{path}.{os.getpid()}.tmp"  # ours alone: a writer elsewhere has its own
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)  # left by a process of the same pid that was killed
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(text)
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    def add_saved(self, path: str, kind: str, /, **fields: Any) -> None:
        """add(), and the same appended to the file `save(path)` wrote."""
        self.add(kind, **fields)
        _append(path, {"add": self.resources[-1]})

    def remove_saved(self, path: str, kind: str, key: str, value: Any) -> None:
        """remove(), and the same appended to the file `save(path)` wrote."""
        self.remove(kind, key, value)
        _append(path, {"remove": [kind, key, value]})

    @classmethod
    def load(cls, path: str = STATE_FILE) -> State:
        """The saved state with the changes appended since replayed; what `read` skips
        is left out silently. OSError, or ValueError for a file that is no state file."""
        return cls.read(path)[0]

    @classmethod
    def read(cls, path: str = STATE_FILE) -> tuple[State, list[str]]:
        """The state, and a sentence for each part of it skipped as untrustworthy.

        A last line cut short (the hook killed while writing it) is left out without a
        word. Raises OSError, or ValueError when the first document is not a state."""
        with open(path, "rb") as f:
            text = f.read().decode("utf-8", errors="replace").lstrip()
        try:
            data, end = json.JSONDecoder().raw_decode(text)
        except ValueError:
            raise ValueError(f"{path} is not a state file: it does not start with JSON") from None
        if not isinstance(data, dict) or not _path(data.get("newroot")):
            raise ValueError(f"{path} is not a state file: it names no new root")
        problems: list[str] = []
        # A newer hook may record more: what this version does not know, it ignores.
        fields: dict[str, Any] = {}
        for name, check in _FIELD_CHECKS.items():
            if name not in data:
                continue
            if check(data[name]):
                fields[name] = data[name]
            else:
                problems.append(f"{path}: its {name!r} is not what a state holds: ignored")
        state = cls(**fields)
        for name in ("resources", "leftovers"):
            records = []
            for number, record in enumerate(getattr(state, name), 1):
                why = check_record(record)
                if why is None:
                    records.append(record)
                else:
                    problems.append(f"{path}: {name} record {number} skipped: {why}")
            setattr(state, name, records)
        changes = text[end:].split("\n")
        first_line = text[:end].count("\n") + 1  # changes[0] is the rest of this line
        for number, line in enumerate(changes):
            if not line.strip():
                continue
            why = _replay(state, line)
            if why is None:
                continue
            if number == len(changes) - 1 and why == "not JSON":
                break  # no newline after it: cut short
            problems.append(f"{path}: line {first_line + number} skipped: {why}")
        return state, problems


def _replay(state: State, line: str) -> str | None:
    try:
        change = json.loads(line)
    except ValueError:
        return "not JSON"
    if isinstance(change, dict) and "add" in change:
        why = check_record(change["add"])
        if why is None:
            state.resources.append(change["add"])
        return why
    if isinstance(change, dict) and "remove" in change:
        target = change["remove"]
        if (
            isinstance(target, list)
            and len(target) == 3
            and isinstance(target[0], str)
            and isinstance(target[1], str)
        ):
            state.remove(*target)
            return None
        return f"a removal of {target!r}"
    return "neither an addition nor a removal"


def _append(path: str, change: dict[str, Any]) -> None:
    # One write(2) of one line with O_APPEND: a reader sees the line whole or not at all.
    data = (json.dumps(change) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
    try:
        while data:
            data = data[os.write(fd, data) :]
    finally:
        os.close(fd)


class StateBusyError(HookError):
    """Another archiso-hook command holds the state file's lock."""


@contextlib.contextmanager
def locked(path: str = STATE_FILE, *, command: str, wait: float = 10.0) -> Iterator[None]:
    """Be the state file's only writer (`mount`, `watch` and `shutdown` take it) for
    the block; after `wait` seconds of another holding it, StateBusyError naming it.

    flock(2) on STATE.lock beside it: the kernel releases it when its holder dies, so a
    hook killed half-way never leaves the next attempt locked out."""
    lock_path = f"{path}.lock"
    os.makedirs(os.path.dirname(lock_path), mode=0o755, exist_ok=True)
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise StateBusyError(
                        f"{path} is being changed by {_holder(fd)}",
                        hint="wait for it to finish; only one archiso-hook command may set "
                        "up or take down the live system at a time",
                    ) from None
                time.sleep(0.05)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} {command}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock


def _holder(fd: int) -> str:
    try:
        pid, command = os.pread(fd, 256, 0).decode("ascii").split(None, 1)
        return f"archiso-hook {command.strip()} (pid {int(pid)})"
    except (OSError, ValueError):
        return "another archiso-hook command"


def already_mounted(newroot: str, state_file: str = STATE_FILE) -> bool:
    """A complete earlier run (from the emergency shell, say) left the live root mounted."""
    try:
        state = State.load(state_file)
    except (OSError, ValueError, TypeError):
        return False
    return state.complete and state.newroot == newroot and syscalls.is_mountpoint(newroot)


def release_earlier(state_file: str, log: Log) -> list[dict[str, Any]]:
    """Before a boot: an earlier attempt's records (killed half-way, or a rollback that
    failed). What is still set up is released first (boot/release.py, imported only
    then); what cannot be is returned, to stay recorded as leftovers. A state file that
    cannot be read is set aside as STATE.bad; one of a complete boot is an error."""
    try:
        earlier, problems = State.read(state_file)
    except FileNotFoundError:
        return []
    except (OSError, ValueError) as e:
        log.warning(f"{e}: set aside as {state_file}.bad")
        with contextlib.suppress(OSError):
            os.replace(state_file, f"{state_file}.bad")
        return []
    for problem in problems:
        log.warning(problem)
    if earlier.complete:
        raise HookError(
            f"{state_file} records a live root already set up at {earlier.newroot}",
            hint="`archiso-hook status` shows what it holds; unmount it first, or boot "
            "with what is there",
        )
    records = earlier.every_record()
    if not records:
        return []
    log.warning(f"an earlier attempt left {len(records)} thing(s) set up: releasing them first")
    left: list[dict[str, Any]] = function("archiso_hook.boot.release:release")(records, log)
    return left
