"""What the hook set up, in order, kept in /run/archiso/state.json.

Later commands read it: `status` reports on it, teardown undoes it in reverse.
/run survives switch_root (it is moved into the new root), so does this file.

The file is one JSON document (a full save) followed by zero or more lines, each one
change to the resources since: {"add": {...}} or {"remove": [kind, key, value]}. The
hook records every loop device and mount the moment it exists, so that a hook killed
half-way leaves an accurate list; appending a line keeps that O(1) per resource, where
rewriting the whole file each time made a boot quadratic in its aitab entries.
"""

from __future__ import annotations

import json
import os
from typing import Any

import attrs

from archiso_hook.plan import STATE_FILE

VERSION = 1


@attrs.define
class State:
    newroot: str
    resources: list[dict[str, Any]] = attrs.Factory(list)
    images: list[dict[str, Any]] = attrs.Factory(list)
    complete: bool = False
    timings: dict[str, float] = attrs.Factory(dict)
    # What `watch` may do with the COW space: {"space", "tmpfs", "grow", "grow_max"}.
    cow: dict[str, Any] = attrs.Factory(dict)

    def add(self, kind: str, /, **fields: Any) -> None:
        self.resources.append({"kind": kind, **fields})

    def remove(self, kind: str, key: str, value: Any) -> None:
        self.resources = [
            r for r in self.resources if not (r["kind"] == kind and r.get(key) == value)
        ]

    def save(self, path: str = STATE_FILE) -> None:
        """The whole state, atomically, readable by root only: one line through json's
        C encoder (indent= and attrs.asdict() would run in Python)."""
        fields = {field.name: getattr(self, field.name) for field in attrs.fields(State)}
        text = json.dumps({"version": VERSION, **fields}) + "\n"
        # /run/archiso: the report beside this file is for every user; this one is 0600.
        os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
        tmp = f"{path}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)

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
        """The saved state with the changes appended since replayed. A last line cut
        short (the hook killed while writing it) is left out; anything else malformed
        raises ValueError."""
        with open(path, encoding="utf-8") as f:
            text = f.read()
        data, end = json.JSONDecoder().raw_decode(text.lstrip())
        if not isinstance(data, dict):
            raise ValueError(f"{path}: not a state file")
        # A newer hook may record more: what this version does not know, it ignores.
        known = {field.name for field in attrs.fields(cls)}
        state = cls(**{key: value for key, value in data.items() if key in known})
        changes = text.lstrip()[end:].split("\n")
        for number, line in enumerate(changes):
            if not line.strip():
                continue
            try:
                change = json.loads(line)
            except ValueError:
                if number == len(changes) - 1:  # no newline after it: cut short
                    break
                raise
            if "add" in change:
                state.resources.append(change["add"])
            elif "remove" in change:
                state.remove(*change["remove"])
        return state


def _append(path: str, change: dict[str, Any]) -> None:
    # One write(2) of one line with O_APPEND: a reader sees the line whole or not at all.
    data = (json.dumps(change) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
    try:
        while data:
            data = data[os.write(fd, data) :]
    finally:
        os.close(fd)
