"""Kernels and initramfs images small enough for unit tests, laid out as the real ones:
a bzImage setup header (arch/x86/include/uapi/asm/bootparam.h) and newc cpio archives
(the kernel's Documentation/driver-api/early-userspace/buffer-format.rst)."""

from __future__ import annotations

import struct
from collections.abc import Mapping
from pathlib import Path

XLF_KERNEL_64 = 1 << 0
XLF_EFI_HANDOVER_32 = 1 << 2
XLF_EFI_HANDOVER_64 = 1 << 3

ELF64 = b"\x7fELF\x02\x01\x01" + b"\0" * 9 + struct.pack("<HH", 2, 62)
ELF32 = b"\x7fELF\x01\x01\x01" + b"\0" * 9 + struct.pack("<HH", 2, 3)


def bzimage(
    arch: str = "x86_64",
    release: str = "6.1.0-57-amd64",
    *,
    mixed: bool = False,
    protocol: int = 0x020F,
    size: int = 0x4000,
) -> bytes:
    """A file with the bzImage header of such a kernel (and nothing to run)."""
    image = bytearray(size)
    struct.pack_into("<B", image, 0x1F1, 27)  # setup_sects
    struct.pack_into("<H", image, 0x1FE, 0xAA55)  # boot_flag
    image[0x202:0x206] = b"HdrS"
    struct.pack_into("<H", image, 0x206, protocol)
    version = f"{release} (builder@example) #1 SMP Debian".encode() + b"\0"
    image[0x1000 : 0x1000 + len(version)] = version
    struct.pack_into("<H", image, 0x20E, 0x1000 - 0x200)  # kernel_version
    flags = XLF_EFI_HANDOVER_64 if arch == "x86_64" else XLF_EFI_HANDOVER_32
    if arch == "x86_64":
        flags |= XLF_KERNEL_64 | (XLF_EFI_HANDOVER_32 if mixed else 0)
    struct.pack_into("<H", image, 0x236, flags)
    return bytes(image)


def newc(files: Mapping[str, bytes | None]) -> bytes:
    """A newc cpio archive: a directory for a None value, else a regular file."""
    out = bytearray()
    for ino, (name, data) in enumerate([*files.items(), ("TRAILER!!!", b"")], start=1):
        mode = 0o040755 if data is None else 0o100644
        body = b"" if data is None else data
        raw = name.encode() + b"\0"
        fields = (ino, mode, 0, 0, 1, 0, len(body), 0, 0, 0, 0, len(raw), 0)
        out += b"070701" + b"".join(b"%08X" % f for f in fields) + raw
        out += b"\0" * (-len(out) % 4) + body
        out += b"\0" * (-len(out) % 4)
    return bytes(out)


def initramfs_files(
    release: str = "6.1.0-57-amd64", *, hook_binary: bytes | None = ELF64, runtime_hook: bool = True
) -> dict[str, bytes | None]:
    """The files of an image built with HOOKS=(base udev archiso), in short."""
    files: dict[str, bytes | None] = {
        ".": None,
        "init": b"#!/usr/bin/ash\n",
        "hooks": None,
        "usr": None,
        "usr/lib": None,
        "usr/lib/modules": None,
        f"usr/lib/modules/{release}": None,
        f"usr/lib/modules/{release}/modules.dep": b"",
    }
    if runtime_hook:
        files["hooks/archiso"] = b"run_hook() { :; }\n"
    if hook_binary is not None:
        files["usr/lib/archiso-hook"] = None
        files["usr/lib/archiso-hook/archiso-hook"] = hook_binary + b"\0" * 100
    return files


def write_boot_pair(
    directory: Path, arch: str = "x86_64", release: str | None = None, **kw: object
) -> tuple[Path, Path]:
    """A kernel and a (plain cpio) initramfs for `arch` in `directory`."""
    release = release or ("6.1.0-57-amd64" if arch == "x86_64" else "6.1.0-57-686")
    directory.mkdir(parents=True, exist_ok=True)
    kernel = directory / f"vmlinuz-{arch}"
    kernel.write_bytes(bzimage(arch, release))
    initramfs = directory / f"initramfs-{arch}.img"
    binary = ELF64 if arch == "x86_64" else ELF32
    initramfs.write_bytes(newc(initramfs_files(release, hook_binary=binary, **kw)))  # type: ignore[arg-type]
    return kernel, initramfs
