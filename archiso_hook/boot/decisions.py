"""The boot's decisions as pure functions of what the system reported: whether to copy
the images to RAM, whether an image is what its aitab line says, what the watchdog may
grow. Beside cowsize.cow_sizes; tests/unit/test_decisions.py covers each boundary."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import attrs

from archiso_hook.boot import cowfile, fsprobe
from archiso_hook.cmdline import CopyMode
from archiso_hook.sizes import Size, human
from archiso_hook.steps import AUTO_MAX_IMAGES, AUTO_RESERVE, COPY_RESERVE


@attrs.frozen
class Memory:
    total: int
    available: int  # MemAvailable, what psutil calls `available` too


def copy_refusal(
    mode: CopyMode, needed: int, room: int, memory: Memory, optical: str | None
) -> str | None:
    """Why the images (`needed` bytes) are not copied to RAM, or None to copy them.

    `room`: what copytoram_size= allows; `optical`: the medium's device when it is an
    optical drive (auto does not copy from one: reading it at boot costs more than it
    saves)."""
    if needed > room:
        return f"the images need {human(needed)}, more than copytoram_size= allows ({human(room)})"
    if mode is CopyMode.AUTO:
        if optical:
            return f"the medium is on an optical drive ({optical})"
        if needed > AUTO_MAX_IMAGES:
            return f"the images are {human(needed)}, more than {human(AUTO_MAX_IMAGES)}"
        if memory.available < needed + AUTO_RESERVE:
            return (
                f"the images need {human(needed)} and {human(memory.available)} of "
                f"RAM is available; auto copies with {human(AUTO_RESERVE)} to spare"
            )
        return None
    if memory.available < needed + COPY_RESERVE:
        return (
            f"the images need {human(needed)} of RAM but only "
            f"{human(memory.available)} is available ({human(COPY_RESERVE)} must "
            "stay free for the system)"
        )
    return None


@attrs.frozen
class ImageProblem:
    message: str
    hint: str | None = None


def image_problem(path: str, head: bytes, fstype: str, size: int) -> ImageProblem | None:
    """Whether the image at `path` (its first bytes `head`, `size` bytes in all) is the
    whole `fstype` image its aitab line says; None when it is."""
    found = fsprobe.probe_bytes(head)
    if found != fstype:
        return ImageProblem(
            f"{path} is not a {fstype} image (found {found or 'no known filesystem'}): "
            "the file is corrupt or truncated, or the aitab line is wrong"
        )
    declared = fsprobe.declared_size(head, fstype)
    if declared is not None and declared > size:
        return ImageProblem(
            f"{path} is truncated: the {fstype} in it is {human(declared)} but the "
            f"file has {human(size)}",
            hint="the image was cut short (an interrupted copy or download): rebuild or "
            "rewrite the medium",
        )
    return None


def growth_policy(
    files: Sequence[cowfile.Usage],
    *,
    space: str,
    fstype: str,
    ram: int,
    grow_max: Size,
    grow: bool,
    free: int,
) -> dict[str, Any]:
    """What `watch` may do with the COW files: grow them up to cow_grow_max of RAM on a
    tmpfs, or on a device up to what the filesystem can still give (never more,
    counting what the files already have the right to grow into)."""
    if not files:
        return {}
    tmpfs = fstype == "tmpfs"
    sizes = sum(usage.apparent for usage in files)
    if tmpfs:
        most = grow_max.resolve(ram)
    else:
        most = sizes + max(0, cowfile.room_for_new_files(free, list(files)))
    return {"space": space, "tmpfs": tmpfs, "grow": grow, "grow_max": most}
