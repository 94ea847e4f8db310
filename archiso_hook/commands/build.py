"""`archiso-hook build`: the images of an aitab, and a medium that boots by itself."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from archiso_hook.build.builder import BootOptions, build
from archiso_hook.build.imagesums import Signing
from archiso_hook.errors import HookError, InputError

if TYPE_CHECKING:
    import argparse


def run(args: argparse.Namespace) -> int:
    def log(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    boot = None
    if not args.no_boot:
        boot = BootOptions(
            files=dict(_boot_spec(spec) for spec in args.boot or ()),
            required=args.iso is not None,
            title=args.title,
            append=args.append,
            serial=args.serial,
            timeout=args.timeout,
        )
    try:
        result = build(
            Path(args.aitab),
            Path(args.src),
            Path(args.out),
            basedir=args.basedir,
            # Images marked `any` belong to every architecture's boot.
            arches={*args.arch, "any"} if args.arch else None,
            iso=Path(args.iso) if args.iso else None,
            label=args.label,
            boot=boot,
            checksum_layout=args.checksum_layout,
            signing=_signing(args),
            log=log,
        )
    except OSError as e:  # the output cannot be written: a full disk, a read-only place
        where = f" {e.filename}" if e.filename else ""
        raise HookError(f"cannot write{where}: {e.strerror or e}") from None
    for image in result.images:
        print(image.path)
    if result.iso:
        print(result.iso)
    return 0


def _signing(args: argparse.Namespace) -> Signing | None:
    """--sign-gpg KEY and --sign-cms CERT,KEY."""
    if args.sign_gpg is None and args.sign_cms is None:
        return None
    cms = None
    if args.sign_cms is not None:
        cert, comma, key = args.sign_cms.partition(",")
        if not comma or not cert or not key:
            raise InputError(f"--sign-cms {args.sign_cms}: expected CERT,KEY")
        for path in (cert, key):
            if not os.path.isfile(path):
                raise InputError(f"--sign-cms: {path} is not a file")
        cms = (Path(cert), Path(key))
    return Signing(gpg_key=args.sign_gpg, cms=cms)


def _boot_spec(spec: str) -> tuple[str, tuple[Path, Path]]:
    """`ARCH=KERNEL,INITRAMFS` of --boot."""
    arch, sep, files = spec.partition("=")
    kernel, comma, initramfs = files.rpartition(",")
    if not sep or not comma or not kernel or not initramfs:
        raise InputError(f"--boot {spec}: expected ARCH=KERNEL,INITRAMFS")
    return arch, (Path(kernel), Path(initramfs))
