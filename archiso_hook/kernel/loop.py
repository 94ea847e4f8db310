"""Loop devices through the kernel's ioctls (include/uapi/linux/loop.h), no losetup.

The loop ioctls are plain numbers (0x4C00 + n), not _IOC-encoded, so they are
the same on every architecture.
"""

from __future__ import annotations

import contextlib
import errno
import os
from types import TracebackType

import attrs

from archiso_hook.errors import KernelError
from archiso_hook.kernel.cstruct import Struct
from archiso_hook.kernel.ioctl import IoctlError, ioctl

LOOP_SET_FD = 0x4C00
LOOP_CLR_FD = 0x4C01
LOOP_SET_STATUS64 = 0x4C04
LOOP_GET_STATUS64 = 0x4C05
LOOP_SET_CAPACITY = 0x4C07
LOOP_CONFIGURE = 0x4C0A  # Linux 5.8: fd, status and block size in one call
LOOP_CTL_GET_FREE = 0x4C82

LO_FLAGS_READ_ONLY = 1
LO_FLAGS_AUTOCLEAR = 4
LO_FLAGS_PARTSCAN = 8
LO_FLAGS_DIRECT_IO = 16

LO_NAME_SIZE = 64
LO_KEY_SIZE = 32

# The same on 32- and 64-bit: every __u64 is at a multiple of 8.
LOOP_INFO64 = Struct(
    "loop_info64",
    (
        ("lo_device", "Q"),  # __u64 lo_device;
        ("lo_inode", "Q"),  # __u64 lo_inode;
        ("lo_rdevice", "Q"),  # __u64 lo_rdevice;
        ("lo_offset", "Q"),  # __u64 lo_offset;
        ("lo_sizelimit", "Q"),  # __u64 lo_sizelimit;
        ("lo_number", "I"),  # __u32 lo_number;
        ("lo_encrypt_type", "I"),  # __u32 lo_encrypt_type;
        ("lo_encrypt_key_size", "I"),  # __u32 lo_encrypt_key_size;
        ("lo_flags", "I"),  # __u32 lo_flags;
        ("lo_file_name", f"{LO_NAME_SIZE}s"),  # __u8 lo_file_name[LO_NAME_SIZE];
        ("lo_crypt_name", f"{LO_NAME_SIZE}s"),  # __u8 lo_crypt_name[LO_NAME_SIZE];
        ("lo_encrypt_key", f"{LO_KEY_SIZE}s"),  # __u8 lo_encrypt_key[LO_KEY_SIZE];
        ("lo_init", "2Q"),  # __u64 lo_init[2];
    ),
)
LOOP_CONFIG = Struct(
    "loop_config",
    (
        ("fd", "I"),  # __u32 fd;
        ("block_size", "I"),  # __u32 block_size;
        ("info", LOOP_INFO64),  # struct loop_info64 info;
        ("__reserved", "8Q"),  # __u64 __reserved[8];
    ),
)


@attrs.frozen
class LoopInfo:
    """The parts of loop_info64 we set or report."""

    offset: int = 0
    sizelimit: int = 0
    flags: int = 0
    file_name: str = ""
    number: int = 0
    device: int = 0  # st_dev of the backing file
    inode: int = 0

    def pack(self) -> bytes:
        name = os.fsencode(self.file_name)[: LO_NAME_SIZE - 1]
        return LOOP_INFO64.pack(
            lo_device=self.device,
            lo_inode=self.inode,
            lo_offset=self.offset,
            lo_sizelimit=self.sizelimit,
            lo_number=self.number,
            lo_flags=self.flags,
            lo_file_name=name,
        )

    @classmethod
    def unpack(cls, raw: bytes | bytearray) -> LoopInfo:
        info = LOOP_INFO64.unpack(raw)
        return cls(
            offset=info.lo_offset,
            sizelimit=info.lo_sizelimit,
            flags=info.lo_flags,
            number=info.lo_number,
            device=info.lo_device,
            inode=info.lo_inode,
            file_name=os.fsdecode(info.lo_file_name.split(b"\0", 1)[0]),
        )


def pack_config(fd: int, info: LoopInfo, block_size: int = 0) -> bytes:
    return LOOP_CONFIG.pack(fd=fd, block_size=block_size, info=info.pack())


class LoopDevice:
    """An attached loop device whose fd we hold; closing it lets AUTOCLEAR do its work."""

    def __init__(self, number: int, fd: int, backing: str, read_only: bool) -> None:
        self.number = number
        self.fd: int | None = fd
        self.backing = backing
        self.read_only = read_only

    @property
    def path(self) -> str:
        return f"/dev/loop{self.number}"

    @property
    def devno(self) -> str:
        """major:minor, how device-mapper tables name devices without a path lookup."""
        st = os.stat(self.path)
        return f"{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}"

    def size(self) -> int:
        """Size in bytes, as the block layer sees it."""
        return os.lseek(self._fd(), 0, os.SEEK_END)

    def info(self) -> LoopInfo:
        buf = bytearray(LOOP_INFO64.size)
        what = f"read the status of {self.path}"
        ioctl(self._fd(), LOOP_GET_STATUS64, buf, name="LOOP_GET_STATUS64", what=what)
        return LoopInfo.unpack(buf)

    def set_capacity(self) -> None:
        """Re-read the backing file's size (after it grew)."""
        set_capacity(self._fd(), self.path)

    def detach(self) -> None:
        """Clear the device now (succeeds at once when nobody else holds it open)."""
        ioctl(self._fd(), LOOP_CLR_FD, name="LOOP_CLR_FD", what=f"detach {self.path}")
        self.close()

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def _fd(self) -> int:
        if self.fd is None:
            raise ValueError(f"{self.path} is closed")
        return self.fd

    def __enter__(self) -> LoopDevice:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"LoopDevice({self.path} -> {self.backing}{', ro' if self.read_only else ''})"


def set_capacity(fd: int, path: str) -> None:
    """LOOP_SET_CAPACITY on an open loop device: re-read its backing file's size."""
    ioctl(fd, LOOP_SET_CAPACITY, name="LOOP_SET_CAPACITY", what=f"update the capacity of {path}")


def attach(
    backing: str,
    *,
    read_only: bool,
    autoclear: bool = True,
    offset: int = 0,
    sizelimit: int = 0,
    control: str = "/dev/loop-control",
    attempts: int = 8,
) -> LoopDevice:
    """Attach a file to a free loop device: LOOP_CONFIGURE, or SET_FD + SET_STATUS64 before 5.8.

    Autoclear (the default) ties the device's life to its users: once our fd is
    closed and no mount or dm table holds it, the kernel detaches it by itself.
    """
    flags = (LO_FLAGS_READ_ONLY if read_only else 0) | (LO_FLAGS_AUTOCLEAR if autoclear else 0)
    try:
        file_fd = os.open(backing, (os.O_RDONLY if read_only else os.O_RDWR) | os.O_CLOEXEC)
    except OSError as e:
        raise KernelError(
            f"cannot open {backing} for a loop device: {e.strerror}", e.errno or 0
        ) from None
    try:
        st = os.fstat(file_fd)
        info = LoopInfo(
            offset=offset,
            sizelimit=sizelimit,
            flags=flags,
            file_name=backing,
            device=st.st_dev,
            inode=st.st_ino,
        )
        try:
            ctl = os.open(control, os.O_RDWR | os.O_CLOEXEC)
        except OSError as e:
            raise KernelError(
                f"cannot open {control}: {e.strerror}",
                e.errno or 0,
                hint="is the loop module loaded?",
            ) from None
        try:
            for _ in range(attempts):
                number = ioctl(
                    ctl, LOOP_CTL_GET_FREE, name="LOOP_CTL_GET_FREE", what="find a free loop device"
                )
                device = _configure(number, file_fd, info, read_only)
                if device is not None:
                    return device
        finally:
            os.close(ctl)
        raise KernelError(
            f"cannot attach {backing}: every free loop device was taken first", errno.EBUSY
        )
    finally:
        os.close(file_fd)


def _configure(number: int, file_fd: int, info: LoopInfo, read_only: bool) -> LoopDevice | None:
    """Bind file_fd to loop<number>; None if another process got there first."""
    path = f"/dev/loop{number}"
    try:
        fd = os.open(path, (os.O_RDONLY if read_only else os.O_RDWR) | os.O_CLOEXEC)
    except OSError as e:
        raise KernelError(f"cannot open {path}: {e.strerror}", e.errno or 0) from None
    try:
        bound = _bind(fd, file_fd, info, path)
    except BaseException:
        os.close(fd)
        raise
    if not bound:
        os.close(fd)
        return None
    return LoopDevice(number, fd, info.file_name, read_only)


def _bind(fd: int, file_fd: int, info: LoopInfo, path: str) -> bool:
    """Attach; False when the device turned out to be busy (taken by someone else)."""
    what = f"attach {info.file_name} to {path}"
    try:
        config = bytearray(pack_config(file_fd, info))
        ioctl(fd, LOOP_CONFIGURE, config, name="LOOP_CONFIGURE", what=what)
        return True
    except IoctlError as e:
        if e.errno == errno.EBUSY:
            return False
        if e.errno not in (errno.EINVAL, errno.ENOTTY):
            raise
    # Before Linux 5.8: bind, then set the flags (read-only follows the backing fd's mode).
    try:
        ioctl(fd, LOOP_SET_FD, file_fd, name="LOOP_SET_FD", what=what)
    except IoctlError as e:
        if e.errno == errno.EBUSY:
            return False
        raise
    try:
        status = bytearray(info.pack())
        ioctl(fd, LOOP_SET_STATUS64, status, name="LOOP_SET_STATUS64", what=what)
    except IoctlError:
        with contextlib.suppress(IoctlError):  # the error to report is the one above
            ioctl(fd, LOOP_CLR_FD, name="LOOP_CLR_FD", what=f"detach {path} again")
        raise
    return True
