"""COW sizing: pure arithmetic, used by the executor once the origins' sizes are known."""

from __future__ import annotations

from archiso_hook.cmdline import CowMode
from archiso_hook.errors import InputError
from archiso_hook.sizes import MiB, Size

SECTOR = 512
MIN_COW = 1 * MiB


def cow_need(origin_bytes: int, mode: CowMode, chunk_sectors: int) -> int:
    """COW bytes that let every chunk of the origin be written once.

    A transient store keeps its metadata in RAM. A persistent one writes a header
    chunk, then areas of one metadata chunk (chunk_bytes / 16 exceptions) followed
    by the data chunks it describes (drivers/md/dm-snap-persistent.c).
    """
    chunk = chunk_sectors * SECTOR
    data_chunks = -(-origin_bytes // chunk)
    if mode is CowMode.N:
        return data_chunks * chunk
    per_area = chunk // 16
    metadata_chunks = -(-data_chunks // per_area)
    return (1 + metadata_chunks + data_chunks) * chunk


def cow_sizes(origins: list[int], capacity: int, mode: CowMode, chunk_sectors: int) -> list[int]:
    """Apparent COW file sizes whose sum never exceeds `capacity`.

    A tmpfs that fills under a dm-snapshot makes the COW write fail, which
    invalidates the snapshot; a COW that fills first is an orderly overflow.
    Each image gets what it needs if all fit, else a share proportional to it.
    """
    chunk = chunk_sectors * SECTOR
    needs = [cow_need(o, mode, chunk_sectors) for o in origins]
    if sum(needs) <= capacity:
        return needs
    total = sum(needs)
    sizes = [capacity * need // total // chunk * chunk for need in needs]
    minimum = max(MIN_COW, 3 * chunk)
    if any(size < min(minimum, need) for size, need in zip(sizes, needs, strict=True)):
        raise InputError(
            f"the cowspace ({Size(capacity)}) is too small for {len(origins)} snapshot(s): each "
            f"needs at least {Size(minimum)}; raise cow_spacesize="
        )
    return sizes
