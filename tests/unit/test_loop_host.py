"""Loop devices against this machine's own kernel (which has loop, but no device-mapper)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from archiso_hook.errors import KernelError
from archiso_hook.kernel import loop

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not os.path.exists("/dev/loop-control"),
    reason="needs root and /dev/loop-control (CI has both)",
)


def _backing(device: loop.LoopDevice) -> str | None:
    try:
        return Path(f"/sys/block/loop{device.number}/loop/backing_file").read_text().strip()
    except FileNotFoundError:
        return None


def test_attach_read_only_with_autoclear_then_release(tmp_path: Path) -> None:
    image = tmp_path / "image"
    image.write_bytes(b"x" * (1 << 20))
    device = loop.attach(str(image), read_only=True)
    try:
        assert _backing(device) == str(image)
        assert Path(f"/sys/block/loop{device.number}/ro").read_text().strip() == "1"
        assert device.size() == 1 << 20
        info = device.info()
        assert info.flags & loop.LO_FLAGS_AUTOCLEAR and info.flags & loop.LO_FLAGS_READ_ONLY
        assert info.file_name == str(image)[:63]  # lo_file_name holds 63 bytes and a NUL
        fd = os.open(device.path, os.O_WRONLY)
        try:
            with pytest.raises(OSError, match="Operation not permitted"):
                os.pwrite(fd, b"y" * 4096, 0)
        finally:
            os.close(fd)
    finally:
        device.close()
    assert _backing(device) is None  # autoclear: our fd was the last user


def test_read_write_and_explicit_detach(tmp_path: Path) -> None:
    image = tmp_path / "image"
    image.write_bytes(b"\0" * 65536)
    device = loop.attach(str(image), read_only=False, autoclear=False)
    fd = os.open(device.path, os.O_WRONLY)
    os.pwrite(fd, b"written through the loop", 0)
    os.fsync(fd)
    os.close(fd)
    device.detach()
    assert _backing(device) is None
    assert image.read_bytes().startswith(b"written through the loop")


def test_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(KernelError, match=r"cannot open .*/nope for a loop device: No such file"):
        loop.attach(str(tmp_path / "nope"), read_only=True)
