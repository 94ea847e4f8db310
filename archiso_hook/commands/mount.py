"""`archiso-hook mount NEWROOT [KEY=VALUE...]`: the boot (boot/executor.py), then the
handoff to the live system (live/handoff.py) when it runs from the initramfs's copy."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from archiso_hook import __version__
from archiso_hook.boot import precompiled
from archiso_hook.boot.executor import Boot
from archiso_hook.boot.failure import BootFailedError, report_failure
from archiso_hook.boot.state import already_mounted
from archiso_hook.bootcmd import read_cmdline
from archiso_hook.live import handoff
from archiso_hook.log import Log
from archiso_hook.options import parse_options

if TYPE_CHECKING:
    import argparse


def mount(newroot: str, words: Sequence[str]) -> int:
    """Mount the live root at `newroot`; `words` (KEY=VALUE) replace kernel parameters."""
    log = Log(kmsg=True)
    if already_mounted(newroot):
        log.info(
            f"the live root is already mounted at {newroot} (archiso-hook status "
            "shows what was set up)"
        )
        return 0
    # From the emergency shell a user can correct a parameter for this attempt.
    overrides = [(key, value) for key, _, value in (word.partition("=") for word in words)]
    try:
        options = parse_options(read_cmdline(), overrides=overrides)
    except Exception as e:  # noqa: BLE001  (a bug must still end in the emergency shell)
        return report_failure(log, e, debug=False)
    log = Log(kmsg=True, quiet=options.quiet, debug=options.debug)
    source = options.network_source
    medium = (
        f"the {source} server" if source else options.medium or options.iso_device or "the medium"
    )
    log.info(
        f"archiso-hook {__version__}: mounting the {options.arch} images of {medium} at {newroot}"
    )
    for warning in options.warnings:
        log.warning(warning)
    if precompiled.installed is not None:
        log.debug(f"methods attrs generated so far: {precompiled.installed}")
    try:
        Boot(options, newroot, log).run()
    except BootFailedError as e:
        return e.code
    try:
        handoff.after_mount(log)
    except OSError as e:
        log.warning(f"the handoff is left to the cleanup hook: {e}")
    return 0


def run(args: argparse.Namespace) -> int:
    return mount(args.newroot, args.set)
