"""The install hook's architecture test: which frozen tree matches a kernel's modules.

`_archiso_elf_arch` (initcpio/install/archiso) reads the ELF class and e_machine of a
file, decompressing a `.ko.zst`, `.ko.xz` or `.ko.gz` module first. Run in bash on
headers made here; the QEMU tests (tests/vm/test_80_i686.py) use it on real kernels.
"""

from __future__ import annotations

import gzip
import lzma
import struct
import subprocess
from pathlib import Path

import pytest

from vm import REPO

INSTALL_HOOK = REPO / "initcpio" / "install" / "archiso"


def _elf_header(elf_class: int, machine: int) -> bytes:
    """The first 20 bytes of a little-endian ELF file, padded as a real one would be."""
    ident = b"\x7fELF" + bytes([elf_class, 1, 1]) + bytes(9)
    return ident + struct.pack("<HH", 1, machine) + bytes(64)


def _elf_arch(path: Path) -> str:
    proc = subprocess.run(
        ["bash", "-c", f'. "{INSTALL_HOOK}" && _archiso_elf_arch "$1"', "bash", str(path)],
        capture_output=True,
        text=True,
        check=True,
    )
    return proc.stdout.strip()


def _write(path: Path, data: bytes) -> Path:
    if path.suffix == ".zst":
        subprocess.run(["zstd", "-q", "-o", str(path)], input=data, check=True)
    elif path.suffix == ".xz":
        path.write_bytes(lzma.compress(data, format=lzma.FORMAT_XZ))
    elif path.suffix == ".gz":
        path.write_bytes(gzip.compress(data))
    else:
        path.write_bytes(data)
    return path


@pytest.mark.parametrize("suffix", [".ko", ".ko.zst", ".ko.xz", ".ko.gz"])
@pytest.mark.parametrize(
    ("elf_class", "machine", "arch"),
    [(2, 62, "x86_64"), (1, 3, "i686"), (2, 183, "elf-class2-machine183")],
)
def test_kernel_module_architecture(
    tmp_path: Path, suffix: str, elf_class: int, machine: int, arch: str
) -> None:
    module = _write(tmp_path / f"loop{suffix}", _elf_header(elf_class, machine))
    assert _elf_arch(module) == arch


def test_a_file_that_is_not_elf_says_so(tmp_path: Path) -> None:
    assert _elf_arch(_write(tmp_path / "loop.ko", b"#!/bin/sh\n" * 4)) == "not-elf"
    assert _elf_arch(_write(tmp_path / "short.ko", b"\x7fELF\x02")) == "not-elf"
