"""Paths inside the new root, resolved as the live system will see them.

A mount point is a path in the images (`/lib/modules`), and the images may
hold symlinks on the way (`/lib -> usr/lib`). Resolved naively in the
initramfs, an absolute link would point into the initramfs itself, and a
relative `..` chain could leave the new root: here `/` is the new root, as
openat2(RESOLVE_IN_ROOT) would make it.
"""

from __future__ import annotations

import os

from archiso_hook.errors import HookError

MAX_SYMLINKS = 40  # as the kernel's path walk


def resolve_in_root(root: str, path: str) -> str:
    """`path` (absolute, as seen from inside `root`) as a host path that stays in `root`."""
    pending = [p for p in path.split("/") if p]
    resolved: list[str] = []
    links = 0
    while pending:
        part = pending.pop(0)
        if part == ".":
            continue
        if part == "..":
            if resolved:
                resolved.pop()
            continue
        candidate = os.path.join(root, *resolved, part)
        if not os.path.islink(candidate):
            resolved.append(part)
            continue
        links += 1
        if links > MAX_SYMLINKS:
            raise HookError(
                f"{path} in the new root goes through more than {MAX_SYMLINKS} "
                "symbolic links (a loop?)"
            )
        target = os.readlink(candidate)
        if target.startswith("/"):
            resolved = []
        pending = [p for p in target.split("/") if p] + pending
    return os.path.join(root, *resolved)
