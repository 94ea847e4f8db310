"""`archiso-hook mount NEWROOT [KEY=VALUE...]`, the command the boot runs, without argparse.

The runtime hook runs it on every boot, where each module imported costs time (tens of
milliseconds under emulation): `__main__` hands this exact form to `fast()`, which
neither imports nor builds the command line's parser, and ends the process without the
interpreter's teardown. Every other form (options, --help, a missing NEWROOT) goes to
the full command line (`cli`), whose `mount` runs `mount()` below too.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from archiso_hook import __version__
from archiso_hook.errors import HookError, exit_code, printable


def read_cmdline(path: str = "/proc/cmdline") -> str:
    """The kernel command line: for `mount`, and for `plan` and the other commands' log."""
    try:
        with open(path, encoding="utf-8", errors="surrogateescape") as f:
            return f.read()
    except OSError as e:
        raise HookError(f"cannot read {path}: {e.strerror}") from None


def mount(newroot: str, words: Sequence[str]) -> int:
    """Mount the live root at `newroot`; `words` (KEY=VALUE) replace kernel parameters."""
    from archiso_hook.boot.executor import (  # noqa: PLC0415
        Boot,
        BootFailedError,
        already_mounted,
        report_failure,
    )
    from archiso_hook.log import Log  # noqa: PLC0415
    from archiso_hook.options import parse_options  # noqa: PLC0415

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
    from archiso_hook.boot import precompiled  # noqa: PLC0415

    if precompiled.installed is not None:
        log.debug(f"methods attrs generated so far: {precompiled.installed}")
    try:
        Boot(options, newroot, log).run()
    except BootFailedError as e:
        return e.code
    from archiso_hook.live import handoff  # noqa: PLC0415

    try:
        handoff.after_mount(log)
    except OSError as e:
        log.warning(f"the handoff is left to the cleanup hook: {e}")
    return 0


def is_plain_mount(argv: Sequence[str]) -> bool:
    """`mount NEWROOT [KEY=VALUE...]`: no option, nothing argparse must look at."""
    return (
        len(argv) >= 2
        and argv[0] == "mount"
        and not argv[1].startswith("-")
        and all("=" in word and not word.startswith("-") for word in argv[2:])
    )


def fast(argv: Sequence[str]) -> int | None:
    """Run `argv` if it is a plain `mount`, and end the process; None for anything else."""
    if not is_plain_mount(argv):
        return None
    try:
        code = mount(argv[1], argv[2:])
    except HookError as e:
        print(f"archiso-hook: error: {printable(str(e))}", file=sys.stderr)
        code = exit_code(e)
    except KeyboardInterrupt:
        code = 130
    except Exception as e:  # noqa: BLE001
        print(
            f"archiso-hook: internal error: {type(e).__name__}: {e} (please report it)",
            file=sys.stderr,
        )
        code = 1
    # Nothing is left to clean up: skip the interpreter's teardown (a tenth of a second
    # and more under emulation), as the watchdog does.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
