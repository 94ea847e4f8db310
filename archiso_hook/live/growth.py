"""When to grow a COW, by how much, and when to warn: pure decisions for `watch`.

A snapshot whose COW fills is an orderly overflow at best (PO: writes fail, reads
work) and a dead root at worst (N, or a cowspace tmpfs that filled first). So the
watchdog grows a COW ahead of the writes: whenever the room left is less than what
the measured write rate fills in a few seconds, or less than a quarter of what is
used, up to a ceiling set by cow_grow_max= and by the RAM actually available.
Warnings refer to that ceiling: they mean the space really is running out.
"""

from __future__ import annotations

import attrs

MiB = 1 << 20
WARN_AT = (80, 90, 95)
MIN_HEADROOM = 64 * MiB
RATE_SECONDS = 3.0  # keep room for this many seconds of writes at the measured rate
RAM_RESERVE = 128 * MiB  # what growing may never take from the system


@attrs.frozen
class Usage:
    """One snapshot, now."""

    allocated: int  # bytes of the COW in use (data and metadata)
    size: int  # bytes the COW device has
    ceiling: int  # bytes it may grow to (cow_grow_max, its origin's need), >= size


def headroom(allocated: int, rate: float) -> int:
    """Free COW bytes to keep: the most of a floor, a share of use, and seconds of writes."""
    return max(MIN_HEADROOM, allocated // 4, int(rate * RATE_SECONDS))


def grow_to(usage: Usage, rate: float, ram_available: int, chunk: int) -> int | None:
    """The size to grow the COW to now, or None to leave it (no need, or no room).

    The new size is chunk-aligned, at least doubles a small COW (fewer, cheaper steps),
    never passes the ceiling, and never takes RAM the system needs.
    """
    want = usage.allocated + headroom(usage.allocated, rate)
    if usage.size >= min(want, usage.ceiling):
        return None
    target = min(usage.ceiling, max(want, usage.size * 2))
    target = min(target, usage.size + max(0, ram_available - RAM_RESERVE))
    target = target // chunk * chunk
    return target if target > usage.size else None


def warning_level(usage: Usage) -> int | None:
    """The highest of 80/90/95 % of the ceiling that use has reached, if any."""
    if usage.ceiling <= 0:
        return None
    percent = 100 * usage.allocated / usage.ceiling
    reached = [level for level in WARN_AT if percent >= level]
    return reached[-1] if reached else None


@attrs.define
class RateMeter:
    """Bytes per second over the last few samples (writes come in bursts)."""

    window: float = 2.0
    samples: list[tuple[float, int]] = attrs.Factory(list)

    def add(self, when: float, allocated: int) -> float:
        self.samples.append((when, allocated))
        while len(self.samples) > 2 and when - self.samples[0][0] > self.window:
            self.samples.pop(0)
        (t0, a0), (t1, a1) = self.samples[0], self.samples[-1]
        return max(0.0, (a1 - a0) / (t1 - t0)) if t1 > t0 else 0.0
