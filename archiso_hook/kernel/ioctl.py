"""ioctl(2), the one way the hook makes one, and request numbers encoded as the kernel's
_IOC() does on each architecture.

include/uapi/asm-generic/ioctl.h: nr in bits 0-7, type in 8-15, then size and
direction. powerpc, mips and sparc use 13 size bits and 3 direction bits with
other direction values; everything else uses the generic 14/2 layout.
"""

from __future__ import annotations

import ctypes
import os
import platform
from collections.abc import Callable, Mapping

import attrs

from archiso_hook.errors import KernelError
from archiso_hook.kernel.syscalls import libc


class IoctlError(KernelError):
    """An ioctl the kernel refused: `ioctl` is its name, `errno` why."""

    def __init__(
        self,
        message: str,
        errno: int,
        *,
        ioctl: str,
        hint: str | None = None,
        kernel_log: list[str] | None = None,
    ) -> None:
        super().__init__(message, errno, hint, kernel_log)
        self.ioctl = ioctl


def ioctl(
    fd: int,
    request: int,
    arg: int | bytearray = 0,
    *,
    name: str,
    what: str,
    hints: Mapping[int, str] | None = None,
    kernel_log: Callable[[], list[str]] | None = None,
) -> int:
    """ioctl(2) with an integer argument, or a buffer the kernel reads and fills in place;
    returns what the call returns. On failure raises IoctlError, "cannot <what> (<name>):
    <strerror>", with the hint `hints` has for the errno and the lines `kernel_log` gives.

    Not fcntl.ioctl: for a buffer over 1024 bytes CPython makes that call holding the
    GIL, so a blocking one (DM_DEV_WAIT) would stop every thread. ctypes lets go of the
    GIL for the call.
    """
    if isinstance(arg, bytearray):
        pointer = (ctypes.c_char * len(arg)).from_buffer(arg)
        result: int = libc().ioctl(fd, request, ctypes.addressof(pointer))
    else:
        result = libc().ioctl(fd, request, arg)
    if result >= 0:
        return result
    errno = ctypes.get_errno()
    raise IoctlError(
        f"cannot {what} ({name}): {os.strerror(errno)}",
        errno,
        ioctl=name,
        hint=(hints or {}).get(errno),
        kernel_log=kernel_log() if kernel_log is not None else None,
    )


@attrs.frozen
class IocLayout:
    size_bits: int
    dir_none: int
    dir_write: int
    dir_read: int

    NR_BITS = 8
    TYPE_BITS = 8

    def encode(self, direction: int, type_: int, nr: int, size: int) -> int:
        if not 0 <= size < 1 << self.size_bits:
            raise ValueError(f"ioctl argument size {size} does not fit in {self.size_bits} bits")
        size_shift = self.NR_BITS + self.TYPE_BITS
        dir_shift = size_shift + self.size_bits
        return (direction << dir_shift) | (size << size_shift) | (type_ << self.NR_BITS) | nr

    def io(self, type_: int, nr: int) -> int:
        return self.encode(self.dir_none, type_, nr, 0)

    def ior(self, type_: int, nr: int, size: int) -> int:
        return self.encode(self.dir_read, type_, nr, size)

    def iow(self, type_: int, nr: int, size: int) -> int:
        return self.encode(self.dir_write, type_, nr, size)

    def iowr(self, type_: int, nr: int, size: int) -> int:
        return self.encode(self.dir_read | self.dir_write, type_, nr, size)


GENERIC = IocLayout(size_bits=14, dir_none=0, dir_write=1, dir_read=2)
POWERPC_MIPS_SPARC = IocLayout(size_bits=13, dir_none=1, dir_write=4, dir_read=2)

_LAYOUTS = {
    **dict.fromkeys(
        (
            "x86_64",
            "i386",
            "i486",
            "i586",
            "i686",
            "aarch64",
            "armv7l",
            "armv6l",
            "riscv64",
            "s390x",
            "loongarch64",
        ),
        GENERIC,
    ),
    **dict.fromkeys(
        ("ppc", "ppc64", "ppc64le", "mips", "mipsel", "mips64", "mips64el", "sparc", "sparc64"),
        POWERPC_MIPS_SPARC,
    ),
}


def layout_for(machine: str | None = None) -> IocLayout:
    """The _IOC layout of a machine (`uname -m`); an unknown one is an error, not a guess."""
    machine = machine or platform.machine()
    try:
        return _LAYOUTS[machine]
    except KeyError:
        raise ValueError(f"no ioctl encoding known for architecture {machine!r}") from None
