"""Modules handed to the running kernel: finit_module(2), or init_module(2) with the image
decompressed here when the kernel cannot; `LiveKernel`, the only part that is not pure."""

from __future__ import annotations

import errno
import importlib
import os
from collections.abc import Callable
from typing import Protocol

import attrs

from archiso_hook.errors import HookError
from archiso_hook.kernel.syscalls import syscall

SYSFS_MODULES = "/sys/module"


def fs_path(value: str | os.PathLike[str]) -> str:
    """A path as a plain string (the converter of attrs fields that take a Path too)."""
    return os.fspath(value)


def _optional_path(value: str | os.PathLike[str] | None) -> str | None:
    return None if value is None else os.fspath(value)


@attrs.frozen
class Module:
    """A module of the initramfs, or one built into the kernel (no path)."""

    name: str
    path: str | None = attrs.field(converter=_optional_path)
    deps: tuple[str, ...] = ()  # as modules.dep lists them; modprobe loads them in reverse

    @property
    def builtin(self) -> bool:
        return self.path is None


class Kernel(Protocol):
    """What ModuleIndex needs of the running kernel; tests give a fake."""

    def release(self) -> str:
        """`uname -r`, for messages."""
        ...

    def is_loaded(self, name: str) -> bool:
        """Whether the module is live in the kernel, or built in with parameters."""
        ...

    def insert(self, module: Module) -> bool:
        """Insert a module: False if the kernel already had it.

        Raises OSError with the kernel's errno when it refuses the module, HookError
        for anything else.
        """
        ...


# The wording of kmod's insmod for the errnos of init_module(2).
_ERRNO_TEXT = {
    errno.ENOEXEC: "Invalid module format",
    errno.ENOENT: "Unknown symbol in module",
    errno.ESRCH: "Module has wrong symbol version",
    errno.EINVAL: "Invalid parameters",
}
_MISMATCH = "the initramfs's modules do not match the running kernel {release}"
_ERRNO_HINTS = {
    errno.ENOEXEC: _MISMATCH,
    errno.ENOENT: _MISMATCH + ", or a dependency is missing; see dmesg",
    errno.ESRCH: _MISMATCH,
    errno.EPERM: "loading modules needs CAP_SYS_MODULE and kernel.modules_disabled=0",
    errno.EKEYREJECTED: "the kernel only accepts modules signed by a key it trusts",
    errno.ENOKEY: "the kernel only accepts modules signed by a key it trusts",
    errno.EBADMSG: "the module's signature is malformed",
    errno.ENOMEM: "out of memory",
    errno.ENOSYS: "the running kernel cannot load modules (no CONFIG_MODULES)",
}


def load_error(module: Module, error: OSError, release: str) -> HookError:
    """What to say when the kernel refused a module, as kmod's insmod says it."""
    code = error.errno or 0
    return HookError(
        f"cannot load kernel module {module.name}: {_ERRNO_TEXT.get(code, os.strerror(code))}",
        hint=_ERRNO_HINTS.get(code, "see dmesg").format(release=release),
    )


MODULE_INIT_COMPRESSED_FILE = 4  # finit_module(2) flag, Linux 5.17+ with MODULE_DECOMPRESS

_COMPRESSION_MAGICS = {
    b"\x1f\x8b": "gzip",
    b"\xfd7zXZ\x00": "xz",
    b"\x28\xb5\x2f\xfd": "zstd",
}


def compression_of(head: bytes) -> str | None:
    """The compression of a module file from its first bytes (None: a plain ELF)."""
    for magic, name in _COMPRESSION_MAGICS.items():
        if head.startswith(magic):
            return name
    return None


# The compressions Python can undo, by the standard module that does: imported only for
# a compressed module, which a kernel that decompresses them itself never needs.
_DECOMPRESSORS = {"gzip": "gzip", "xz": "lzma"}


def decompress(name: str, data: bytes, compression: str) -> bytes:
    """A module's ELF image, decompressed in Python for kernels that cannot."""
    module = _DECOMPRESSORS.get(compression)
    if module is not None:
        decompressed: bytes = importlib.import_module(module).decompress(data)
        return decompressed
    raise HookError(
        f"cannot load kernel module {name}: it is {compression}-compressed and the running"
        " kernel cannot decompress modules (no CONFIG_MODULE_DECOMPRESS)",
        hint="use a kernel that decompresses modules, or build the image with"
        " uncompressed or xz-compressed modules",
    )


@attrs.frozen
class Syscalls:
    """finit_module(2) and init_module(2); each raises OSError on failure."""

    finit_module: Callable[[int, bytes, int], None]
    init_module: Callable[[bytes, bytes], None]

    @classmethod
    def from_libc(cls) -> Syscalls:
        """The real ones, through syscall(2): glibc has no finit_module() wrapper."""
        finit, init = syscall("finit_module"), syscall("init_module")
        return cls(
            finit_module=finit,
            init_module=lambda image, params: init(image, len(image), params),
        )


@attrs.define
class LiveKernel:
    """The running kernel: /sys/module, and the module syscalls (bound on first use).

    `options` are each module's parameters, as modprobe passes them to the kernel
    (`{"loop": b"max_loop=8"}`): the caller reads them from the kernel command line.
    """

    sysfs: str = attrs.field(default=SYSFS_MODULES, converter=fs_path)
    syscalls: Syscalls | None = None
    options: dict[str, bytes] = attrs.Factory(dict)

    def release(self) -> str:
        return os.uname().release

    def is_loaded(self, name: str) -> bool:
        directory = os.path.join(self.sysfs, name)
        try:
            with open(os.path.join(directory, "initstate"), encoding="ascii") as f:
                state = f.read().strip()
        except FileNotFoundError:
            # Built-in modules with parameters have a directory but no initstate.
            return os.path.isdir(directory)
        # "coming" or "going": insert anyway; the kernel waits for the other load.
        return state == "live"

    def insert(self, module: Module) -> bool:
        if module.path is None:
            return False
        if self.syscalls is None:
            self.syscalls = Syscalls.from_libc()
        try:
            fd = os.open(module.path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as error:
            raise HookError(
                f"cannot read kernel module {module.name}: {error.strerror} ({module.path})",
                hint="the initramfs is incomplete: rebuild it",
            ) from error
        with os.fdopen(fd, "rb") as file:
            compression = compression_of(file.read(6))
            flags = 0 if compression is None else MODULE_INIT_COMPRESSED_FILE
            params = self.options.get(module.name, b"")
            try:
                self.syscalls.finit_module(fd, params, flags)
                return True
            except OSError as error:
                if error.errno == errno.EEXIST:
                    return False
                # No finit_module (Linux < 3.8), or no in-kernel decompression (unknown
                # flag before 5.17, EOPNOTSUPP without MODULE_DECOMPRESS, EINVAL for
                # another algorithm than the kernel's).
                unsupported = {errno.ENOSYS}
                if compression is not None:
                    unsupported |= {errno.EINVAL, errno.EOPNOTSUPP}
                if error.errno not in unsupported:
                    raise
            file.seek(0)
            image = file.read()
        if compression is not None:
            image = decompress(module.name, image, compression)
        try:
            self.syscalls.init_module(image, params)
        except OSError as error:
            if error.errno == errno.EEXIST:
                return False
            raise
        return True
