"""mount(2), umount2(2), reboot(2) and the module syscalls through libc, with errno in
every error.

Every C function the hook calls through ctypes is declared here, once, for the whole
process: libc's functions in `_SIGNATURES`, the system calls that glibc has no wrapper
for (called through syscall(2), by number) in `SYSCALLS`.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Callable
from typing import Any

from archiso_hook.errors import HookError, KernelError
from archiso_hook.kernel.klog import KernelLogWindow

# include/uapi/linux/mount.h
MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_REMOUNT = 32
MS_BIND = 4096
MS_MOVE = 8192
MS_REC = 16384
MS_PRIVATE = 1 << 18
# include/linux/fs.h (umount2 flags)
MNT_FORCE = 1
MNT_DETACH = 2

_SIGNATURES: dict[str, tuple[list[Any], Any]] = {
    "mount": (
        [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p],
        ctypes.c_int,
    ),
    "umount2": ([ctypes.c_char_p, ctypes.c_int], ctypes.c_int),
    "ioctl": ([ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p], ctypes.c_int),
    "reboot": ([ctypes.c_int], ctypes.c_int),
}

# The argument types (after the number) and the numbers by process ABI of the system calls
# called through syscall(2).
_ArgTypes = tuple[type[ctypes.c_int | ctypes.c_ulong | ctypes.c_char_p], ...]
SYSCALLS: dict[str, tuple[_ArgTypes, dict[str, int]]] = {
    "finit_module": (
        (ctypes.c_int, ctypes.c_char_p, ctypes.c_int),  # fd, param_values, flags
        {"x86_64": 313, "i386": 350, "aarch64": 273},
    ),
    "init_module": (
        (ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p),  # image, len, param_values
        {"x86_64": 175, "i386": 128, "aarch64": 105},
    ),
}


def _load_libc() -> ctypes.CDLL:
    # dlopen(NULL): libc is already mapped into every process, so no find_library
    # (which needs ldconfig or gcc, neither of them in an initramfs).
    libc = ctypes.CDLL(None, use_errno=True)
    for name, (argtypes, restype) in _SIGNATURES.items():
        function = getattr(libc, name)
        function.argtypes = argtypes
        function.restype = restype
    return libc


_libc = _load_libc()


def libc() -> ctypes.CDLL:
    """The process's libc, its functions declared as `_SIGNATURES` says."""
    return _libc


def process_abi() -> str:
    """The ABI whose system call numbers this process uses."""
    machine = os.uname().machine
    if machine in {"x86_64", "i386", "i486", "i586", "i686"}:
        # The numbers are the process's: a 32-bit program on a 64-bit kernel uses i386's.
        return "x86_64" if ctypes.sizeof(ctypes.c_void_p) == 8 else "i386"
    return machine


def syscall(name: str) -> Callable[..., None]:
    """A system call of `SYSCALLS` as a function that raises OSError on failure."""
    argtypes, numbers = SYSCALLS[name]
    abi = process_abi()
    if abi not in numbers:
        raise HookError(f"no number known for the {name} system call on {abi}")
    number = numbers[abi]
    prototype = ctypes.CFUNCTYPE(ctypes.c_long, ctypes.c_long, *argtypes, use_errno=True)
    function = prototype(("syscall", _libc))

    def call(*args: object) -> None:
        if function(number, *args) == -1:
            code = ctypes.get_errno()
            raise OSError(code, os.strerror(code))

    return call


def _b(value: str | None) -> bytes | None:
    return None if value is None else os.fsencode(value)


def mount(
    source: str, target: str, fstype: str | None, flags: int = 0, data: str | None = None
) -> None:
    with KernelLogWindow() as klog:
        if _libc.mount(_b(source), _b(target), _b(fstype), flags, _b(data)) == 0:
            return
        errno = ctypes.get_errno()
        what = f"{fstype} " if fstype else ""
        raise KernelError(
            f"cannot mount {what}{source} at {target}: {os.strerror(errno)}",
            errno,
            kernel_log=klog.lines(),
        )


def umount(target: str, flags: int = 0) -> None:
    if _libc.umount2(_b(target), flags) != 0:
        errno = ctypes.get_errno()
        raise KernelError(f"cannot unmount {target}: {os.strerror(errno)}", errno)


def reboot(command: int) -> None:
    """reboot(2); returns only when the kernel refused (then raises KernelError)."""
    if _libc.reboot(command) != 0:
        errno = ctypes.get_errno()
        raise KernelError(f"reboot({command:#x}) failed: {os.strerror(errno)}", errno)


def mountpoints() -> dict[str, tuple[str, str]]:
    """Mount points of this mount namespace: target -> (source, fstype), last one wins."""
    points: dict[str, tuple[str, str]] = {}
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
        for line in f:
            fields = line.split()
            sep = fields.index("-")
            target = _unescape(fields[4])
            points[target] = (_unescape(fields[sep + 2]), fields[sep + 1])
    return points


def _unescape(field: str) -> str:
    """mountinfo writes space, tab, newline and backslash as octal escapes."""
    if "\\" not in field:
        return field
    return (
        field.replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
    )


def is_mountpoint(path: str) -> bool:
    return os.path.realpath(path) in mountpoints()
