"""What the kernel logged while we did something: device-mapper and filesystems
explain their EINVALs only in the kernel log, so failures quote it."""

from __future__ import annotations

import os
from types import TracebackType


class KernelLogWindow:
    """Records read from /dev/kmsg that were logged after this object was created.

    A no-op where /dev/kmsg cannot be read (not root, or no such device).
    """

    def __init__(self) -> None:
        try:
            self._fd: int | None = os.open("/dev/kmsg", os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
            os.lseek(self._fd, 0, os.SEEK_END)
        except OSError:
            self._fd = None

    def lines(self, *, facility_kernel_only: bool = True) -> list[str]:
        """Messages logged since creation; only the kernel's own unless told otherwise."""
        out: list[str] = []
        while self._fd is not None:
            try:
                record = os.read(self._fd, 8192).decode("utf-8", "replace")
            except BlockingIOError:
                break
            except OSError:  # EPIPE: a record was overwritten under us; keep what we have
                continue
            prefix, _, message = record.partition(";")
            priority = int(prefix.split(",")[0]) if prefix.split(",")[0].isdigit() else 0
            if facility_kernel_only and priority >> 3 != 0:
                continue
            out.append(message.split("\n", 1)[0])
        return out

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> KernelLogWindow:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
