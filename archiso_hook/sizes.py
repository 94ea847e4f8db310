"""Sizes as users write them on the kernel command line and in aitab files."""

from __future__ import annotations

import re

import attrs

from archiso_hook.errors import InputError

MiB = 1024 * 1024

# tmpfs(5) accepts a k/m/g/t/p/e suffix or a percentage; so do we.
_SUFFIXES = {
    "": 1,
    "k": 1 << 10,
    "m": 1 << 20,
    "g": 1 << 30,
    "t": 1 << 40,
    "p": 1 << 50,
    "e": 1 << 60,
}
# Matched whole (`$` also matches before a trailing newline), ASCII only (the Kelvin sign
# is a k to re.IGNORECASE), at most 20 digits (2**64 has 20; int() refuses over 4300).
_SIZE_RE = re.compile(r"([0-9]{1,20})([kmgtpe]?)", re.IGNORECASE | re.ASCII)
_PERCENT_RE = re.compile(r"([0-9]{1,20})%")


@attrs.frozen
class Size:
    """An absolute size in bytes, or a percentage of some whole (RAM, free space)."""

    value: int
    percent: bool = False

    def resolve(self, whole: int) -> int:
        """Bytes, given what a percentage is a share of."""
        return whole * self.value // 100 if self.percent else self.value

    def __str__(self) -> str:
        if self.percent:
            return f"{self.value}%"
        for suffix in "EPTGMK":
            unit = _SUFFIXES[suffix.lower()]
            if self.value >= unit and self.value % unit == 0:
                return f"{self.value // unit}{suffix}"
        return str(self.value)


def parse_size(text: str, *, what: str, allow_percent: bool = True, max_percent: int = 100) -> Size:
    """Parse `256M`, `1G`, `4096` (bytes) or `75%`; `what` names the setting in errors."""
    accepted = "a size such as 256M or 1G" + (f", or 1%..{max_percent}%" if allow_percent else "")
    match = _PERCENT_RE.fullmatch(text)
    if match:
        percent = int(match.group(1))
        if not allow_percent or not 1 <= percent <= max_percent:
            raise InputError(f"{what}={text} is not valid: expected {accepted}")
        return Size(percent, percent=True)
    match = _SIZE_RE.fullmatch(text)
    size = int(match.group(1)) * _SUFFIXES[match.group(2).lower()] if match else 0
    if not 0 < size < 1 << 63:  # the kernel's size arithmetic is 64-bit
        raise InputError(f"{what}={text} is not valid: expected {accepted}")
    return Size(size)


def human(n: float) -> str:
    """Bytes for a person: 256.0 MiB."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")
