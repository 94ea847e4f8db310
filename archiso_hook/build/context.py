"""What the image builders share: an image's job, the build's context, the image written,
and the build's epoch (SOURCE_DATE_EPOCH) with the UUIDs derived from it."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from pathlib import Path

import attrs

from archiso_hook.aitab import AitabEntry, ImageType
from archiso_hook.build.extsize import TreeUsage
from archiso_hook.build.hosttools import Log
from archiso_hook.errors import InputError


@attrs.frozen
class BuiltImage:
    """One image written to the medium."""

    name: str
    arch: str
    type: ImageType
    path: Path
    size: int  # bytes (apparent size: *.fs files are sparse)
    checksum: Path  # <path>.sha512, or the checksum.<arch>.md5 that lists it


@attrs.frozen
class Job:
    entry: AitabEntry
    source: Path
    usage: TreeUsage


@attrs.frozen
class Context:
    log: Log
    epoch: int
    root_owned: bool  # make every file root-owned (the builder is not root)
    scratch: Path  # removed after the build
    basedir: str
    aitab: Path
    per_image_checksums: bool = True

    def where(self, entry: AitabEntry) -> str:
        return f"{self.aitab}:{entry.line}"


# --------------------------------------------------------------------------- epoch

_EPOCH_MAX = 2**32 - 1  # squashfs stores times as unsigned 32-bit seconds


def source_date_epoch(environ: Mapping[str, str]) -> int | None:
    """SOURCE_DATE_EPOCH from `environ`, or None if unset."""
    text = environ.get("SOURCE_DATE_EPOCH", "")
    if not text:
        return None
    if not text.isdigit() or not 1 <= int(text) <= _EPOCH_MAX:
        raise InputError(
            f"SOURCE_DATE_EPOCH={text} is not valid: expected seconds since 1970, 1..{_EPOCH_MAX}"
        )
    return int(text)


def clamp_epoch(seconds: int) -> int:
    # 0 would mean "now" to E2FSPROGS_FAKE_TIME.
    return min(max(seconds, 1), _EPOCH_MAX)


# A fixed namespace: UUIDs of images depend only on what they are and their epoch.
_UUID_NAMESPACE = uuid.UUID("a8988908-e4b4-4f8f-9ed1-618d0eac2721")


def image_uuid(basedir: str, arch: str, name: str, epoch: int) -> uuid.UUID:
    return uuid.uuid5(_UUID_NAMESPACE, f"{basedir}/{arch}/{name}@{epoch}")
