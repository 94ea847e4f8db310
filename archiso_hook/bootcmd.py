"""The commands a boot and a shutdown run, read without argparse: `mount NEWROOT
[KEY=VALUE...]`, `handoff`, `watch --foreground` and `shutdown [VERB]`.

The hooks run them on every boot and every power-off, where each module imported costs
time (tens of milliseconds under emulation) and stays in RAM (the watchdog lives as long
as the system): `__main__` hands argv to `fast()`, then to `boot_command()`, and only
what neither knows goes to the full command line (`cli`, with --help and its errors).
Each command is a "module:function" (`BOOT_COMMANDS`), imported when it is run.
`fast()` ends the process without the interpreter's teardown.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence

from archiso_hook.cmdline import split_cmdline
from archiso_hook.errors import HookError, exit_code, printable
from archiso_hook.lazy import function
from archiso_hook.log import Log

SHUTDOWN_VERBS = ("poweroff", "reboot", "halt", "kexec")
WATCH_INTERVAL = 0.25  # seconds, `watch --interval`'s default
BOOT_COMMANDS = {
    "mount": "archiso_hook.commands.mount:mount",  # (newroot, overrides)
    "handoff": "archiso_hook.live.handoff:run",  # (log)
    "shutdown": "archiso_hook.live.shutdown:run",  # (verb, log)
    "watch": "archiso_hook.live.watch:run_foreground",  # (log, interval)
}


def read_cmdline(path: str = "/proc/cmdline") -> str:
    """The kernel command line: for `mount`, and for `plan` and the other commands' log."""
    try:
        with open(path, encoding="utf-8", errors="surrogateescape") as f:
            return f.read()
    except OSError as e:
        raise HookError(f"cannot read {path}: {e.strerror}") from None


def boot_log() -> Log:
    """The log of a command run at boot or shutdown: to the kernel log too, and honouring
    quiet and rd.debug (read leniently: a bad archiso parameter is mount's to report)."""
    try:
        words = {key: value for key, value in split_cmdline(read_cmdline())}
    except HookError:
        words = {}
    quiet = "quiet" in words and words["quiet"] in (None, "y", "yes", "1")
    return Log(kmsg=True, quiet=quiet, debug="rd.debug" in words)


def is_plain_mount(argv: Sequence[str]) -> bool:
    """`mount NEWROOT [KEY=VALUE...]`: no option, nothing argparse must look at."""
    return (
        len(argv) >= 2
        and argv[0] == "mount"
        and not argv[1].startswith("-")
        and all("=" in word and not word.startswith("-") for word in argv[2:])
    )


def boot_command(argv: Sequence[str]) -> Callable[[], int] | None:
    """The command `argv` asks for if it is one a boot runs, as the hooks run it; None
    for anything else, which the full parser reads (with --help and its errors)."""
    match list(argv):
        case ["mount", newroot, *overrides] if is_plain_mount(argv):
            return lambda: function(BOOT_COMMANDS["mount"])(newroot, overrides)
        case ["handoff"]:
            return lambda: function(BOOT_COMMANDS["handoff"])(boot_log())
        case ["shutdown", *verbs] if len(verbs) <= 1 and set(verbs) <= set(SHUTDOWN_VERBS):
            verb = verbs[0] if verbs else "poweroff"
            return lambda: function(BOOT_COMMANDS["shutdown"])(verb, boot_log())
        case ["watch", "--foreground"]:
            return lambda: function(BOOT_COMMANDS["watch"])(boot_log(), WATCH_INTERVAL)
    return None


def run_guarded(command: Callable[[], int]) -> int:
    """Run a command: its exit status, a HookError as one line and its status, a bug as
    one line asking for a report; never a traceback."""
    try:
        return int(command())
    except HookError as e:
        print(f"archiso-hook: error: {printable(str(e))}", file=sys.stderr)
        return exit_code(e)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # the reader went away (`plan | head`): nothing to report
        # What is still buffered for stdout must not fail again when Python exits.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # as a shell reports a command ended by SIGPIPE
    except Exception as e:  # noqa: BLE001
        print(
            f"archiso-hook: internal error: {type(e).__name__}: {e} (please report it)",
            file=sys.stderr,
        )
        return 1


def fast(argv: Sequence[str]) -> int | None:
    """Run `argv` if it is a plain `mount`, and end the process; None for anything else."""
    if not is_plain_mount(argv):
        return None
    code = run_guarded(lambda: function(BOOT_COMMANDS["mount"])(argv[1], argv[2:]))
    # Nothing is left to clean up: skip the interpreter's teardown (a tenth of a second
    # and more under emulation), as the watchdog does.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
