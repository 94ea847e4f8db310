"""The one error type the hook raises for anything a user can fix."""

from __future__ import annotations


def printable(text: str) -> str:
    """One line whatever a user typed: control characters (a newline or a terminal
    escape in a quoted parameter) are shown escaped, as \\x1b."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


class HookError(Exception):
    """A failure explained in one sentence, with an optional hint on what to do.

    Everything the hook reports to a user at boot is a HookError: bad input,
    a missing medium, a kernel call that failed. Anything else reaching the
    top level is a bug and is reported as such, still without a traceback.
    """

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if self.hint is None else f"{self.message} ({self.hint})"


class InputError(HookError):
    """Bad input from the user: the command line, an aitab, an argument."""


def exit_code(error: HookError) -> int:
    """The status a command exits with for `error`: 2 for bad input, 1 for the rest."""
    return 2 if isinstance(error, InputError) else 1


class KernelError(HookError):
    """A system call or ioctl failed; carries the errno and what the kernel logged."""

    def __init__(
        self, message: str, errno: int, hint: str | None = None, kernel_log: list[str] | None = None
    ) -> None:
        super().__init__(message, hint)
        self.errno = errno
        self.kernel_log = kernel_log or []

    def __str__(self) -> str:
        text = super().__str__()
        if self.kernel_log:
            text += "; kernel: " + " | ".join(self.kernel_log[-3:])
        return text
