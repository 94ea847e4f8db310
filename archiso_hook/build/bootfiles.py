"""The kernels and initramfs images a medium boots, read from their own bytes and checked
before anything is written (build host: `archiso-hook build --boot`).

- A kernel is an x86 bzImage. Its setup header (`struct setup_header`,
  arch/x86/include/uapi/asm/bootparam.h, at 0x1f1 of the file) says whether it is a
  64-bit kernel (`XLF_KERNEL_64`), whether it can also be started by a 32-bit UEFI
  (`XLF_EFI_HANDOVER_32`: mixed mode), and, through `kernel_version`, its release.
- An initramfs is one or more newc cpio archives, each plain or compressed, one after
  the other, as the kernel unpacks them (init/initramfs.c): mkinitcpio and dracut put an
  uncompressed early archive with CPU microcode before the compressed main one. Its
  file list says whether it carries archiso-hook (`/hooks/archiso` and
  `/usr/lib/archiso-hook/archiso-hook`), for which architecture (the ELF header of that
  binary), and for which kernel release its modules are (`/usr/lib/modules/<release>`).

zstd, lz4, lzop and bzip2 archives are read through the tools of those names (bz2 is not
in the frozen hook); gzip, xz and lzma with Python's own modules.
"""

from __future__ import annotations

import contextlib
import io
import lzma
import re
import struct
import subprocess
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Protocol

import attrs

from archiso_hook.build.hosttools import BASE_ENV, find_tool
from archiso_hook.errors import InputError

#: The architectures a medium boots, and how a boot loader names each.
BOOT_ARCHES = ("x86_64", "i686")

# --------------------------------------------------------------------------- kernel

SETUP_HEADER_OFFSET = 0x1F1
# struct setup_header {                       (at 0x1f1; __attribute__((packed)))
SETUP_HEADER_FIELDS = (
    ("setup_sects", "B"),  #                      __u8  setup_sects;
    ("root_flags", "H"),  #                       __u16 root_flags;
    ("syssize", "I"),  #                          __u32 syssize;
    ("ram_size", "H"),  #                         __u16 ram_size;
    ("vid_mode", "H"),  #                         __u16 vid_mode;
    ("root_dev", "H"),  #                         __u16 root_dev;
    ("boot_flag", "H"),  #                        __u16 boot_flag;
    ("jump", "H"),  #                             __u16 jump;
    ("header", "I"),  #                           __u32 header;
    ("version", "H"),  #                          __u16 version;
    ("realmode_swtch", "I"),  #                   __u32 realmode_swtch;
    ("start_sys_seg", "H"),  #                    __u16 start_sys_seg;
    ("kernel_version", "H"),  #                   __u16 kernel_version;
    ("type_of_loader", "B"),  #                   __u8  type_of_loader;
    ("loadflags", "B"),  #                        __u8  loadflags;
    ("setup_move_size", "H"),  #                  __u16 setup_move_size;
    ("code32_start", "I"),  #                     __u32 code32_start;
    ("ramdisk_image", "I"),  #                    __u32 ramdisk_image;
    ("ramdisk_size", "I"),  #                     __u32 ramdisk_size;
    ("bootsect_kludge", "I"),  #                  __u32 bootsect_kludge;
    ("heap_end_ptr", "H"),  #                     __u16 heap_end_ptr;
    ("ext_loader_ver", "B"),  #                   __u8  ext_loader_ver;
    ("ext_loader_type", "B"),  #                  __u8  ext_loader_type;
    ("cmd_line_ptr", "I"),  #                     __u32 cmd_line_ptr;
    ("initrd_addr_max", "I"),  #                  __u32 initrd_addr_max;
    ("kernel_alignment", "I"),  #                 __u32 kernel_alignment;
    ("relocatable_kernel", "B"),  #               __u8  relocatable_kernel;
    ("min_alignment", "B"),  #                    __u8  min_alignment;
    ("xloadflags", "H"),  #                       __u16 xloadflags;
    ("cmdline_size", "I"),  #                     __u32 cmdline_size;
)  # ... (the rest of the header is not read)
SETUP_HEADER = struct.Struct("<" + "".join(fmt for _, fmt in SETUP_HEADER_FIELDS))
BOOT_FLAG = 0xAA55
HDRS = 0x53726448  # "HdrS"
XLF_KERNEL_64 = 1 << 0
XLF_EFI_HANDOVER_32 = 1 << 2
XLF_EFI_HANDOVER_64 = 1 << 3
_XLOADFLAGS_PROTOCOL = 0x020C  # xloadflags exist since boot protocol 2.12 (Linux 3.8)


def setup_header_offset(field: str) -> int:
    """Where `field` of struct setup_header is, from the start of the file."""
    fmt = "<"
    for name, code in SETUP_HEADER_FIELDS:
        if name == field:
            return SETUP_HEADER_OFFSET + struct.calcsize(fmt)
        fmt += code
    raise KeyError(field)


@attrs.frozen
class KernelImage:
    """An x86 Linux kernel (bzImage), as its setup header describes it."""

    path: Path
    arch: str  # "x86_64" or "i686"
    release: str  # `uname -r`, e.g. "6.1.0-57-amd64" ("" if the header names none)
    protocol: tuple[int, int]
    #: a 64-bit kernel that a 32-bit UEFI can start (CONFIG_EFI_MIXED)
    mixed_mode: bool


def read_kernel(path: Path) -> KernelImage:
    """The kernel at `path`; an InputError saying what the file is if it is not one."""
    try:
        with path.open("rb") as f:
            head = f.read(0x8000)
    except OSError as e:
        raise InputError(f"cannot read the kernel {path}: {e.strerror}") from None
    if head.startswith(b"\x7fELF"):
        raise InputError(
            f"{path} is an uncompressed kernel (vmlinux, ELF): give the vmlinuz "
            "(bzImage) that boot loaders load"
        )
    end = SETUP_HEADER_OFFSET + SETUP_HEADER.size
    if len(head) < end:
        raise InputError(f"{path} is not a Linux kernel for x86: it is too short ({len(head)} B)")
    header = dict(
        zip((n for n, _ in SETUP_HEADER_FIELDS), SETUP_HEADER.unpack_from(head, 0x1F1), strict=True)
    )
    if header["boot_flag"] != BOOT_FLAG or header["header"] != HDRS:
        raise InputError(
            f"{path} is not a Linux kernel for x86 (no bzImage header): give the kernel "
            "boot loaders load, such as /boot/vmlinuz-linux"
        )
    version = header["version"]
    protocol = (version >> 8, version & 0xFF)
    if version < _XLOADFLAGS_PROTOCOL:
        raise InputError(
            f"{path} is a kernel with boot protocol {protocol[0]}.{protocol[1]}: the medium "
            "needs 2.12 or later (Linux 3.8), which says whether a kernel is 64-bit"
        )
    xload = header["xloadflags"]
    return KernelImage(
        path=path,
        arch="x86_64" if xload & XLF_KERNEL_64 else "i686",
        release=_release(head, header["kernel_version"]),
        protocol=protocol,
        mixed_mode=bool(xload & XLF_KERNEL_64 and xload & XLF_EFI_HANDOVER_32),
    )


def _release(head: bytes, pointer: int) -> str:
    """The first word of the version string `kernel_version` points to (+ 0x200)."""
    if not pointer:
        return ""
    start = pointer + 0x200
    text = head[start : start + 256].split(b"\0", 1)[0].decode("ascii", "replace")
    return text.split(" ", 1)[0]


def describe_kernel(kernel: KernelImage) -> str:
    bits = "64-bit" if kernel.arch == "x86_64" else "32-bit"
    release = f" {kernel.release}" if kernel.release else ""
    return f"an {kernel.arch} kernel{release} ({bits})"


# --------------------------------------------------------------------------- initramfs

#: What the kernel's initramfs unpacker recognises (lib/decompress.c), and how we read it.
_MAGICS: tuple[tuple[bytes, str], ...] = (
    (b"\x1f\x8b\x08", "gzip"),
    (b"\x1f\x8b\x9e", "gzip"),
    (b"BZh", "bzip2"),
    (b"\x5d\x00\x00", "lzma"),
    (b"\xfd7zXZ\x00", "xz"),
    (b"\x89LZO", "lzop"),
    (b"\x02\x21\x4c\x18", "lz4"),
    (b"\x28\xb5\x2f\xfd", "zstd"),
)
#: The formats read through their tools (hosttools.TOOL_PACKAGES names the packages).
DECOMPRESSORS = ("zstd", "lz4", "lzop", "bzip2")
_NEWC = (b"070701", b"070702")
_NEWC_HEADER = 110
_TRAILER = "TRAILER!!!"
_HOOK_BINARY = "usr/lib/archiso-hook/archiso-hook"
_MODULES = re.compile(r"^(?:usr/)?lib/modules/([^/]+)(?:/|$)")


@attrs.frozen
class Initramfs:
    """What an initramfs image holds, as far as a medium's checks need."""

    path: Path
    compression: tuple[str, ...]  # of each archive in it, in order ("none" if plain)
    runtime_hook: bool  # /hooks/archiso
    hook_binary_class: int | None  # ELF class of archiso-hook's binary: 1, 2 or None
    module_releases: tuple[str, ...]  # the kernels its modules are for


@attrs.frozen
class _Member:
    name: str  # without a leading "/" or "./"
    head: bytes  # the first bytes of its data


def read_initramfs(path: Path) -> Initramfs:
    """Read the cpio archives of an initramfs image (InputError if it is not one)."""
    compression: list[str] = []
    names: set[str] = set()
    hook_head = b""
    try:
        with path.open("rb") as f:
            for kind, member in _walk(f, path):
                if member is None:
                    compression.append(kind)
                    continue
                names.add(member.name)
                if member.name == _HOOK_BINARY:
                    hook_head = member.head
    except OSError as e:
        raise InputError(f"cannot read the initramfs {path}: {e.strerror}") from None
    if not compression:
        raise InputError(f"{path} is empty: not an initramfs")
    releases = sorted({m.group(1) for name in names if (m := _MODULES.match(name))})
    return Initramfs(
        path=path,
        compression=tuple(compression),
        runtime_hook="hooks/archiso" in names,
        hook_binary_class=hook_head[4]
        if hook_head[:4] == b"\x7fELF" and len(hook_head) > 4
        else None,
        module_releases=tuple(releases),
    )


class _Reader:
    """Reads a stream that need not be seekable (a pipe), with a look-ahead."""

    def __init__(self, stream: IO[bytes]) -> None:
        self._stream = stream
        self._ahead = b""
        self.offset = 0  # bytes consumed

    def peek(self, n: int) -> bytes:
        while len(self._ahead) < n:
            chunk = self._stream.read(max(n - len(self._ahead), 1 << 16))
            if not chunk:
                break
            self._ahead += chunk
        return self._ahead[:n]

    def read(self, n: int) -> bytes:
        data = self.peek(n)
        self._ahead = self._ahead[len(data) :]
        self.offset += len(data)
        return data

    def skip(self, n: int) -> int:
        """Skip up to `n` bytes; how many there were."""
        skipped = 0
        while skipped < n:
            data = self.read(min(n - skipped, 1 << 20))
            if not data:
                break
            skipped += len(data)
        return skipped

    def skip_zeros(self) -> None:
        """Skip the zero bytes that pad archives (the kernel does the same)."""
        while (ahead := self.peek(1 << 12)) and not ahead[0]:
            self.read(len(ahead) - len(ahead.lstrip(b"\0")))


def _walk(f: IO[bytes], path: Path) -> Iterator[tuple[str, _Member | None]]:
    """(compression, None) at the start of each archive, then (compression, member) for
    each of its files. A compressed stream ends the walk: what follows it is not read (the
    tools decompress concatenated frames as one stream, which covers what mkinitcpio and
    dracut write)."""
    top = _Reader(f)
    yield from _archives(top, path, "none")
    magic = top.peek(6)
    if not magic:
        return
    kind = next((k for m, k in _MAGICS if magic.startswith(m)), None)
    if kind is None:
        raise InputError(
            f"{path} is not an initramfs: at byte {top.offset} is neither a cpio archive "
            f"nor data compressed in a format the kernel reads (it starts {magic.hex()})"
        )
    f.seek(top.offset)
    with _decompressed(f, kind, path) as stream:
        inner = _Reader(stream)
        yield from _archives(inner, path, kind)
        if inner.peek(1):
            raise InputError(
                f"{path}: the {kind} data at byte {top.offset} holds no cpio archive "
                f"at its byte {inner.offset}: not an initramfs"
            )


def _archives(reader: _Reader, path: Path, kind: str) -> Iterator[tuple[str, _Member | None]]:
    """The newc archives from the reader's position on, and the zeros between them, up to
    the end or to anything else (left unread)."""
    while True:
        reader.skip_zeros()
        if reader.peek(6) not in _NEWC:
            return
        yield kind, None
        yield from ((kind, member) for member in _members(reader, path))


def _members(reader: _Reader, path: Path) -> Iterator[_Member]:
    """The files of one newc archive, up to its TRAILER!!!."""
    while True:
        at = reader.offset
        header = reader.read(_NEWC_HEADER)
        if len(header) < _NEWC_HEADER:
            raise InputError(f"{path} is truncated: a cpio header is cut short at byte {at}")
        if header[:6] not in _NEWC:
            raise InputError(f"{path} is damaged: no cpio header at byte {at}")
        try:
            fields = [int(header[i : i + 8], 16) for i in range(6, _NEWC_HEADER, 8)]
        except ValueError:
            raise InputError(f"{path} is damaged: a bad cpio header at byte {at}") from None
        size, namesize = fields[6], fields[11]
        raw = reader.read(namesize)
        reader.skip(-(_NEWC_HEADER + namesize) % 4)
        name = raw.rstrip(b"\0").decode("utf-8", "surrogateescape")
        if name == _TRAILER:
            return
        head = reader.read(min(size, 64))
        left = size - len(head)
        if len(raw) < namesize or reader.skip(left) < left:
            raise InputError(f"{path} is truncated: {name!r} is cut short")
        reader.skip(-size % 4)
        yield _Member(_normalize(name), head)


def _normalize(name: str) -> str:
    while name.startswith(("./", "/")):
        name = name[2:] if name.startswith("./") else name[1:]
    return "" if name == "." else name


class _Codec(Protocol):
    @property
    def eof(self) -> bool: ...

    def decompress(self, data: bytes) -> bytes: ...


class _CodecStream(io.RawIOBase):
    """A decompressor from Python's standard library as a readable stream."""

    def __init__(self, source: IO[bytes], codec: _Codec) -> None:
        self._source = source
        self._codec = codec
        self._out = b""

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        while not self._out and not self._codec.eof:
            chunk = self._source.read(1 << 16)
            if not chunk:
                raise EOFError("the compressed data ends early")
            self._out = self._codec.decompress(chunk)
        n = len(self._out) if size < 0 else size
        data, self._out = self._out[:n], self._out[n:]
        return data


def _codec(kind: str) -> _Codec:
    if kind == "gzip":
        return zlib.decompressobj(16 + zlib.MAX_WBITS)
    return lzma.LZMADecompressor(lzma.FORMAT_XZ if kind == "xz" else lzma.FORMAT_ALONE)


@contextlib.contextmanager
def _decompressed(f: IO[bytes], kind: str, path: Path) -> Iterator[IO[bytes]]:
    """The decompressed data from `f`'s position on."""
    if kind not in DECOMPRESSORS:
        try:
            yield _CodecStream(f, _codec(kind))  # type: ignore[misc]
        except (EOFError, OSError, zlib.error, lzma.LZMAError) as e:
            raise InputError(f"{path}: its {kind} data is damaged or truncated ({e})") from None
        return
    tool = find_tool(kind)
    proc = subprocess.Popen(
        [tool, "-d", "-c", "-q"],
        stdin=f,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=BASE_ENV,
    )
    assert proc.stdout is not None and proc.stderr is not None
    try:
        yield proc.stdout
    except BaseException:
        proc.kill()  # a reader that stopped early: the tool need not finish
        raise
    finally:
        proc.stdout.close()
        proc.wait()
        error = proc.stderr.read().decode(errors="replace").strip()
        proc.stderr.close()
    if proc.returncode != 0:
        raise InputError(
            f"{path}: {kind} could not read its data (exit status {proc.returncode}): "
            f"{error or 'no error output'}"
        )


# --------------------------------------------------------------------------- checks


@attrs.frozen
class BootFiles:
    """A kernel and an initramfs that belong together, for one architecture."""

    arch: str
    kernel: KernelImage
    initramfs: Initramfs


def check_boot_files(arch: str, kernel_path: Path, initramfs_path: Path) -> BootFiles:
    """Read both files and check they make a boot of `arch` with archiso-hook: an
    InputError naming the file and what is wrong with it otherwise."""
    if arch not in BOOT_ARCHES:
        raise InputError(f"unknown architecture {arch!r}: expected {' or '.join(BOOT_ARCHES)}")
    kernel = read_kernel(kernel_path)
    if kernel.arch != arch:
        raise InputError(f"{kernel_path} is {describe_kernel(kernel)}, not a kernel for {arch}")
    initramfs = read_initramfs(initramfs_path)
    has_binary = initramfs.hook_binary_class is not None
    if not has_binary:
        what = (
            "its /hooks/archiso is another hook (mkinitcpio-archiso's?)"
            if initramfs.runtime_hook
            else "it has no /hooks/archiso"
        )
        raise InputError(
            f"{initramfs_path} has no archiso-hook ({what}): build it with "
            "HOOKS=(base archiso) and archiso-hook installed"
        )
    if not initramfs.runtime_hook:
        raise InputError(
            f"{initramfs_path} has archiso-hook's files but not its runtime hook "
            "/hooks/archiso: build it with HOOKS=(base archiso)"
        )
    releases = initramfs.module_releases
    if kernel.release and releases and kernel.release not in releases:
        raise InputError(
            f"{initramfs_path} was made for the kernel {', '.join(releases)} (its modules), "
            f"not for {kernel.release} ({kernel_path}): build it with "
            f"mkinitcpio -k {kernel.release}"
        )
    if initramfs.hook_binary_class == 2 and arch == "i686":
        raise InputError(
            f"{initramfs_path} holds the 64-bit archiso-hook, which the i686 kernel "
            f"{kernel_path} cannot run: build it on (or for) an i686 system"
        )
    return BootFiles(arch, kernel, initramfs)


#: Kernel and initramfs names in a root tree's /boot: (kernel glob, initramfs names for
#: the part after "vmlinuz-"): Arch's mkinitcpio presets, Debian's, and a plain pair.
_INITRAMFS_NAMES = ("initramfs-{}.img", "initrd.img-{}", "initramfs-{}")


def find_boot_files(root: Path) -> list[tuple[Path, Path]]:
    """The (kernel, initramfs) pairs in `root`/boot: `vmlinuz-X` with `initramfs-X.img`
    (Arch), `initrd.img-X` (Debian) or `initramfs-X`; `vmlinuz` with `archiso.img` or
    `initramfs.img`. Fallback images (`-fallback`) are not paired with a kernel."""
    boot = root / "boot"
    pairs: list[tuple[Path, Path]] = []
    if not boot.is_dir():
        return pairs
    for kernel in sorted(boot.iterdir()):
        if kernel.is_symlink() or not kernel.is_file():
            continue
        if kernel.name == "vmlinuz":
            names = ["archiso.img", "initramfs.img"]
        elif kernel.name.startswith("vmlinuz-"):
            names = [n.format(kernel.name.removeprefix("vmlinuz-")) for n in _INITRAMFS_NAMES]
        else:
            continue
        for name in names:
            candidate = boot / name
            if candidate.is_file() and not candidate.is_symlink():
                pairs.append((kernel, candidate))
                break
    return pairs
