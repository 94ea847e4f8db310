"""Kernels and initramfs images read from their bytes: the bzImage header, the cpio
archives in each compression the kernel reads, and the checks a medium's boot files pass
before anything is written. The headers are those of tests/unit/fake_boot.py; Debian's own
kernels and images are read in the ISO boot tests (tests/vm/test_9*_iso_*.py)."""

from __future__ import annotations

import gzip
import lzma
import re
import subprocess
from pathlib import Path

import pytest

from archiso_hook.build.bootfiles import (
    check_boot_files,
    find_boot_files,
    read_initramfs,
    read_kernel,
    setup_header_offset,
)
from archiso_hook.errors import InputError
from tests.unit.fake_boot import ELF32, ELF64, bzimage, initramfs_files, newc, write_boot_pair


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


# --------------------------------------------------------------------------- kernels


@pytest.mark.parametrize(
    ("arch", "release", "mixed"),
    [
        ("x86_64", "6.1.0-57-amd64", True),
        ("x86_64", "6.12.1-arch1-1", False),
        ("i686", "6.1.0-57-686", False),
    ],
)
def test_kernel_architecture_release_and_mixed_mode(
    tmp_path: Path, arch: str, release: str, mixed: bool
) -> None:
    kernel = read_kernel(_write(tmp_path / "vmlinuz", bzimage(arch, release, mixed=mixed)))
    assert (kernel.arch, kernel.release, kernel.mixed_mode) == (arch, release, mixed)
    assert kernel.protocol == (2, 15)


def test_a_kernel_without_a_version_string(tmp_path: Path) -> None:
    image = bytearray(bzimage())
    image[0x20E:0x210] = b"\0\0"
    assert read_kernel(_write(tmp_path / "k", bytes(image))).release == ""


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (ELF64 + b"\0" * 4096, "is an uncompressed kernel (vmlinux, ELF): give the vmlinuz"),
        (b"\0" * 4096, "is not a Linux kernel for x86 (no bzImage header)"),
        (b"MZ" + b"\0" * 100, "is not a Linux kernel for x86: it is too short (102 B)"),
        (bzimage(protocol=0x020B), "boot protocol 2.11: the medium needs 2.12 or later"),
    ],
)
def test_what_is_not_a_kernel_says_what_it_is(tmp_path: Path, data: bytes, message: str) -> None:
    with pytest.raises(InputError, match=re.escape(message)):
        read_kernel(_write(tmp_path / "file", data))
    with pytest.raises(InputError, match=r"cannot read the kernel .*: No such file"):
        read_kernel(tmp_path / "missing")


def test_setup_header_offsets_are_the_boot_protocols() -> None:
    """Documentation/arch/x86/boot.rst's table (the ABI test checks them against gcc)."""
    assert setup_header_offset("setup_sects") == 0x1F1
    assert setup_header_offset("boot_flag") == 0x1FE
    assert setup_header_offset("header") == 0x202
    assert setup_header_offset("version") == 0x206
    assert setup_header_offset("kernel_version") == 0x20E
    assert setup_header_offset("xloadflags") == 0x236
    assert setup_header_offset("cmdline_size") == 0x238


# --------------------------------------------------------------------------- initramfs


def _compress(data: bytes, kind: str) -> bytes:
    if kind == "gzip":
        return gzip.compress(data, mtime=0)
    if kind == "xz":
        return lzma.compress(data, format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC32)
    if kind == "lzma":
        return lzma.compress(data, format=lzma.FORMAT_ALONE)
    argv = {"zstd": ["zstd", "-q", "-c"], "bzip2": ["bzip2", "-c"], "lz4": ["lz4", "-l", "-c"]}
    return subprocess.run(argv[kind], input=data, capture_output=True, check=True).stdout


@pytest.mark.parametrize("kind", ["gzip", "xz", "lzma", "zstd", "bzip2", "lz4"])
def test_an_early_cpio_then_a_compressed_one(tmp_path: Path, kind: str) -> None:
    """mkinitcpio's layout: CPU microcode in a plain archive, padding, then the image."""
    early = newc({"kernel": None, "kernel/x86/microcode/GenuineIntel.bin": b"ucode"})
    main = newc(initramfs_files())
    data = early + b"\0" * 512 + _compress(main, kind)
    image = read_initramfs(_write(tmp_path / "initramfs.img", data))
    assert image.compression == ("none", kind)
    assert image.runtime_hook
    assert image.hook_binary_class == 2
    assert image.module_releases == ("6.1.0-57-amd64",)


def test_names_with_a_leading_dot_slash_and_several_archives_in_one_stream(
    tmp_path: Path,
) -> None:
    files = {f"./{name}" if name != "." else name: data for name, data in initramfs_files().items()}
    stream = newc({"a": b"1"}) + newc(files)
    image = read_initramfs(_write(tmp_path / "img", gzip.compress(stream)))
    assert image.compression == ("gzip", "gzip")
    assert image.runtime_hook and image.hook_binary_class == 2


def test_a_32_bit_hook_and_modules_under_lib(tmp_path: Path) -> None:
    files = initramfs_files("6.1.0-57-686", hook_binary=ELF32)
    files = {k.replace("usr/lib/modules", "lib/modules"): v for k, v in files.items()}
    image = read_initramfs(_write(tmp_path / "img", newc(files)))
    assert image.hook_binary_class == 1
    assert image.module_releases == ("6.1.0-57-686",)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "is empty: not an initramfs"),
        (b"\0" * 64, "is empty: not an initramfs"),
        (b"hello world", "at byte 0 is neither a cpio archive nor data compressed"),
        (newc({"a": b"x"}) + b"junk", r"at byte 240 is neither a cpio archive"),
        (newc({"a": b"x" * 100})[:150], "is truncated: 'a' is cut short"),
        (newc({"a": b"x"})[:80], "is truncated: a cpio header is cut short at byte 0"),
        (b"070701" + b"zz" * 52, "is damaged: a bad cpio header at byte 0"),
        (gzip.compress(newc({"a": b"x"}), mtime=0)[:30], "its gzip data is damaged or truncated"),
        (
            gzip.compress(b"not a cpio archive", mtime=0),
            "the gzip data at byte 0 holds no cpio archive",
        ),
    ],
)
def test_what_is_not_an_initramfs_is_refused_clearly(
    tmp_path: Path, data: bytes, message: str
) -> None:
    with pytest.raises(InputError, match=message):
        read_initramfs(_write(tmp_path / "img", data))


def test_a_damaged_zstd_stream_is_the_tools_refusal(tmp_path: Path) -> None:
    data = _compress(newc(initramfs_files()), "zstd")
    with pytest.raises(InputError, match=r"zstd could not read its data \(exit status 1\)"):
        read_initramfs(_write(tmp_path / "img", data[: len(data) // 2]))


# --------------------------------------------------------------------------- checks


def test_a_matching_pair_passes(tmp_path: Path) -> None:
    for arch in ("x86_64", "i686"):
        files = check_boot_files(arch, *write_boot_pair(tmp_path, arch))
        assert files.arch == files.kernel.arch == arch


@pytest.mark.parametrize(
    ("arch", "kernel", "files", "message"),
    [
        (
            "x86_64",
            bzimage("i686", "6.1.0-57-686"),
            initramfs_files(),
            r"vmlinuz is an i686 kernel 6.1.0-57-686 \(32-bit\), not a kernel for x86_64",
        ),
        (
            "i686",
            bzimage(),
            initramfs_files(),
            r"vmlinuz is an x86_64 kernel 6.1.0-57-amd64 \(64-bit\), not a kernel for i686",
        ),
        (
            "x86_64",
            bzimage(),
            initramfs_files(hook_binary=None, runtime_hook=False),
            r"img has no archiso-hook \(it has no /hooks/archiso\): build it with "
            r"HOOKS=\(base archiso\)",
        ),
        (
            "x86_64",
            bzimage(),
            initramfs_files(hook_binary=None),
            r"has no archiso-hook \(its /hooks/archiso is another hook",
        ),
        (
            "x86_64",
            bzimage(),
            initramfs_files(runtime_hook=False),
            "has archiso-hook's files but not its runtime hook /hooks/archiso",
        ),
        (
            "x86_64",
            bzimage(release="6.12.1-arch1-1"),
            initramfs_files(),
            r"img was made for the kernel 6.1.0-57-amd64 \(its modules\), not for "
            r"6.12.1-arch1-1 .*: build it with mkinitcpio -k 6.12.1-arch1-1",
        ),
        (
            "i686",
            bzimage("i686", "6.1.0-57-686"),
            initramfs_files("6.1.0-57-686"),
            "img holds the 64-bit archiso-hook, which the i686 kernel .* cannot run",
        ),
        ("arm", bzimage(), initramfs_files(), "unknown architecture 'arm'"),
    ],
)
def test_mismatches_name_the_file_and_what_to_do(
    tmp_path: Path, arch: str, kernel: bytes, files: dict[str, bytes | None], message: str
) -> None:
    k = _write(tmp_path / "vmlinuz", kernel)
    i = _write(tmp_path / "img", newc(files))
    with pytest.raises(InputError, match=message):
        check_boot_files(arch, k, i)


def test_boot_files_in_a_root_tree(tmp_path: Path) -> None:
    boot = tmp_path / "boot"
    boot.mkdir()
    assert find_boot_files(tmp_path / "nothing") == []
    for name in ("vmlinuz-linux", "initramfs-linux.img", "initramfs-linux-fallback.img"):
        (boot / name).write_bytes(b"x")
    assert find_boot_files(tmp_path) == [(boot / "vmlinuz-linux", boot / "initramfs-linux.img")]
    (boot / "vmlinuz-6.1.0-57-amd64").write_bytes(b"x")
    (boot / "initrd.img-6.1.0-57-amd64").write_bytes(b"x")
    (boot / "vmlinuz-lts").write_bytes(b"x")  # no initramfs: not a pair
    (boot / "vmlinuz-link").symlink_to("vmlinuz-linux")
    (boot / "initramfs-link.img").symlink_to("initramfs-linux.img")
    assert find_boot_files(tmp_path) == [
        (boot / "vmlinuz-6.1.0-57-amd64", boot / "initrd.img-6.1.0-57-amd64"),
        (boot / "vmlinuz-linux", boot / "initramfs-linux.img"),
    ]
    plain = tmp_path / "plain"
    (plain / "boot").mkdir(parents=True)
    (plain / "boot" / "vmlinuz").write_bytes(b"x")
    (plain / "boot" / "archiso.img").write_bytes(b"x")
    assert find_boot_files(plain) == [(plain / "boot/vmlinuz", plain / "boot/archiso.img")]
