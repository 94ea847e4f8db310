"""Checksum files beside images: `<image>.sha512` (sha512sum format), or `<image>.md5`
on older media. Pure parsing: reading and comparing is transfer.py's."""

from __future__ import annotations

import os
import re

import attrs

from archiso_hook.errors import InputError

# Preferred first.
ALGORITHMS = (("sha512", 128), ("md5", 32))
_LINE = re.compile(r"^([0-9A-Fa-f]+) [ *](.+)$")


@attrs.frozen
class Expected:
    algorithm: str
    digest: str  # lower-case hex
    source: str  # the checksum file


def checksum_file_for(image: str) -> str | None:
    """The checksum file beside `image`, sha512 preferred; None if there is none."""
    for algorithm, _ in ALGORITHMS:
        path = f"{image}.{algorithm}"
        if os.path.exists(path):
            return path
    return None


def parse(text: str, path: str, image_name: str) -> Expected:
    """The digest a checksum file gives for `image_name` (a bare file name).

    Every line must name a file in the checksum file's own directory: a path with
    `..`, an absolute path or a subdirectory is refused, so a checksum file cannot
    vouch for anything else.
    """
    algorithm, length = next((a, n) for a, n in ALGORITHMS if path.endswith(f".{a}"))
    found: str | None = None
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.startswith("#"):
            continue
        match = _LINE.match(line.rstrip("\r"))
        if not match or len(match.group(1)) != length:
            raise InputError(
                f"{path}:{lineno}: not a {algorithm} checksum line "
                f"(expected {length} hex digits, two spaces and a file name)"
            )
        name = match.group(2).removeprefix("./")
        if "/" in name or name in {".", ".."}:
            raise InputError(
                f"{path}:{lineno}: lists {match.group(2)!r}, a path outside "
                "the directory of the image; refusing this checksum file"
            )
        if name == image_name:
            found = match.group(1).lower()
    if found is None:
        raise InputError(f"{path}: has no {algorithm} checksum for {image_name}")
    return Expected(algorithm, found, path)
