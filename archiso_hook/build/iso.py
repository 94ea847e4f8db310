"""The ISO 9660 image of the medium's tree (xorriso), with the loaders that make it boot
by itself (loaders.py), and the checks of its volume label and place."""

from __future__ import annotations

import tempfile
from pathlib import Path

from archiso_hook.build import loaders, menus
from archiso_hook.build.hosttools import Log, run_tool
from archiso_hook.errors import InputError
from archiso_hook.sizes import human


def check_label(label: str | None) -> str:
    """An ISO 9660 volume ID: 1 to 32 printable ASCII characters."""
    if not label:
        raise InputError("an ISO needs a volume label (what archisolabel= names at boot)")
    if len(label) > 32:
        raise InputError(
            f"ISO volume label {label!r} has {len(label)} characters: ISO 9660 allows at most 32"
        )
    if not all(" " <= c <= "~" for c in label):
        raise InputError(
            f"ISO volume label {label!r} is not valid: expected printable ASCII "
            "characters (A-Z, 0-9 and _ are the safest)"
        )
    return label


def check_iso(out: Path, iso: Path, label: str | None) -> str:
    if inside(iso, out):
        raise InputError(f"the ISO {iso} cannot be inside {out}, which becomes its content")
    return check_label(label)


def inside(path: Path, directory: Path) -> bool:
    return path.resolve().is_relative_to(directory.resolve())


def make_iso(
    out: Path,
    iso: Path,
    label: str,
    epoch: int,
    log: Log,
    *,
    boot_loaders: loaders.Loaders | None = None,
) -> Path:
    """An ISO 9660 image of `out` (Rock Ridge names, level 3 for files over 4 GiB).

    With `boot_loaders`, one that boots by itself: isolinux, GRUB and their menus are written
    into `out`, and the EFI system partition is appended (loaders.py).
    """
    label = check_iso(out, iso, label)
    stamp = menus.volume_date(epoch)
    part = iso.with_name(f".{iso.name}.part")
    part.unlink(missing_ok=True)
    log(f"writing {iso} (label {label}) from {out}")
    with tempfile.TemporaryDirectory(prefix=".archiso-iso-", dir=iso.parent) as scratch:
        boot_args: list[str] = []
        if boot_loaders is not None:
            setup = loaders.write_loaders(
                out, boot_loaders, epoch=epoch, scratch=Path(scratch), log=log
            )
            boot_args = setup.xorriso_args()
        try:
            # -no_rc first: no start-up file of xorriso's can change the result.
            # -rational-rock: owners 0 and modes a+r, so the builder's uid does not leak in;
            # --modification-date also fixes the volume's "UUID" blkid and GRUB report.
            run_tool(
                ["xorriso", "-no_rc", "-as", "mkisofs", "-quiet", "-o", str(part), "-V", label,
                 "-iso-level", "3", "-rational-rock", f"--modification-date={stamp}",
                 "--set_all_file_dates", f"={epoch}", *boot_args, str(out)],
                log,
                env={"SOURCE_DATE_EPOCH": str(epoch)},
            )  # fmt: skip
            part.replace(iso)
        finally:
            part.unlink(missing_ok=True)
    log(f"wrote {iso} ({human(iso.stat().st_size)})")
    return iso
