"""What the hook set up, in order, kept in /run/archiso/state.json.

Later commands read it: `status` reports on it, teardown undoes it in reverse.
/run survives switch_root (it is moved into the new root), so does this file.
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

    def add(self, kind: str, **fields: Any) -> None:
        self.resources.append({"kind": kind, **fields})

    def remove(self, kind: str, key: str, value: Any) -> None:
        self.resources = [
            r for r in self.resources if not (r["kind"] == kind and r.get(key) == value)
        ]

    def save(self, path: str = STATE_FILE) -> None:
        """Atomically, readable by root only.

        Saved after every resource, so a boot with n images writes it 2n times: one
        line through json's C encoder (indent= and attrs.asdict() would run in Python,
        a cost per save that grows with the resources: quadratic over a boot).
        """
        fields = {field.name: getattr(self, field.name) for field in attrs.fields(State)}
        text = json.dumps({"version": VERSION, **fields}) + "\n"
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        tmp = f"{path}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str = STATE_FILE) -> State:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        # A newer hook may record more: what this version does not know, it ignores.
        known = {field.name for field in attrs.fields(cls)}
        return cls(**{key: value for key, value in data.items() if key in known})
