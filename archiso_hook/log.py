"""Boot log: one human-readable line per step, on the console and in /dev/kmsg.

Each line goes to /dev/kmsg with its syslog level (so it reaches the journal).
The kernel echoes kmsg lines below console_loglevel to the console itself; only
the lines it will not show are printed by us, so nothing appears twice. Under
`quiet` (console_loglevel 4) that leaves warnings and errors on the console.
"""

from __future__ import annotations

import os
import sys
from typing import TextIO

TAG = "archiso-hook"
ERR, WARNING, NOTICE, INFO, DEBUG = 3, 4, 5, 6, 7


def _console_loglevel() -> int:
    try:
        with open("/proc/sys/kernel/printk", encoding="ascii") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 0


class Log:
    """Writes to a console stream and, at boot, to /dev/kmsg."""

    def __init__(
        self,
        *,
        stream: TextIO | None = None,
        kmsg: bool = False,
        quiet: bool = False,
        debug: bool = False,
    ) -> None:
        self.stream = stream or sys.stderr
        self.quiet = quiet
        self.show_debug = debug
        self.kmsg = kmsg and os.access("/dev/kmsg", os.W_OK)
        # Levels below this are printed by the kernel when we write them to kmsg.
        self._kernel_echoes_below = _console_loglevel() if self.kmsg else 0

    def _emit(self, level: int, text: str) -> None:
        prefix = {ERR: "error: ", WARNING: "warning: "}.get(level, "")
        for line in text.splitlines() or [""]:
            # The same words wherever a line is read: console, kernel echo, journal.
            message = f"{TAG}: {prefix}{line}"
            if self.kmsg:
                self._write_kmsg(level, message)
            if level < self._kernel_echoes_below:
                continue
            if self.quiet and level > WARNING:
                continue
            self.stream.write(message + "\n")
        self.stream.flush()

    def _write_kmsg(self, level: int, line: str) -> None:
        # Opened per line, as mkinitcpio's log_kmsg does: the kernel rate-limits each
        # open file (printk.devkmsg=ratelimit: 10 lines per 5 s) and drops the rest.
        try:
            fd = os.open("/dev/kmsg", os.O_WRONLY | os.O_CLOEXEC)
        except OSError:
            self.kmsg = False
            self._kernel_echoes_below = 0
            return
        try:
            os.write(fd, f"<{level}>{line}\n".encode("utf-8", "replace"))
        except OSError:
            pass
        finally:
            os.close(fd)

    def error(self, text: str) -> None:
        self._emit(ERR, text)

    def warning(self, text: str) -> None:
        self._emit(WARNING, text)

    def info(self, text: str) -> None:
        self._emit(INFO, text)

    def progress(self, text: str) -> None:
        """Progress of a long copy: the console only (not the journal), not under quiet."""
        if not self.quiet:
            self.stream.write(f"{TAG}: {text}\n")
            self.stream.flush()

    def debug(self, text: str) -> None:
        """Only with rd.debug: the planned step before each action."""
        if self.show_debug:
            self._emit(DEBUG, text)
