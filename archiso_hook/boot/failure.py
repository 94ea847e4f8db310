"""A boot that failed, said in plain words: one sentence, the kernel's own lines, a hint."""

from __future__ import annotations

import importlib

from archiso_hook.errors import HookError, KernelError, exit_code, printable
from archiso_hook.log import Log


class BootFailedError(Exception):
    """The boot failed; it was reported and everything was undone. Carries the exit code."""

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


def report_failure(log: Log, exc: Exception, *, debug: bool) -> int:
    """Log what went wrong in plain words (a traceback only under rd.debug); the exit code."""
    if isinstance(exc, HookError):
        log.error(printable(exc.message))
        if isinstance(exc, KernelError) and exc.kernel_log:
            log.error(printable("the kernel said: " + " | ".join(exc.kernel_log[-3:])))
        if exc.hint:
            log.error(printable(f"hint: {exc.hint}"))
        return exit_code(exc)
    log.error(
        printable(
            f"internal error: {type(exc).__name__}: {exc} (please report it; with rd.debug on "
            "the kernel command line the traceback is printed)"
        )
    )
    if debug:
        # Only for a bug: the traceback module is not loaded at start-up.
        traceback = importlib.import_module("traceback")
        log.error("".join(traceback.format_exception(exc)))
    return 1
