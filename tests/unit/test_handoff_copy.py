"""`archiso-hook handoff`'s copy of the initramfs, run from elsewhere than the copy: what
the shutdown runs (the list the install hook writes), on a root made here."""

from __future__ import annotations

import os
from pathlib import Path

from archiso_hook.live.handoff import copy_initramfs


def _image(root: Path, *, listed: bool) -> None:
    (root / "usr/lib/x86_64-linux-gnu").mkdir(parents=True)
    (root / "usr/lib/archiso-hook/_internal").mkdir(parents=True)
    (root / "usr/lib/udev").mkdir(parents=True)
    (root / "usr/bin").mkdir(parents=True)
    (root / "etc/archiso").mkdir(parents=True)
    for link, target in (("lib", "usr/lib"), ("lib64", "usr/lib"), ("bin", "usr/bin")):
        (root / link).symlink_to(target)
    (root / "usr/lib/archiso-hook/archiso-hook").write_bytes(b"frozen")
    (root / "usr/lib/archiso-hook/_internal/libpython3.11.so.1.0").write_bytes(b"python")
    (root / "usr/lib/x86_64-linux-gnu/libc.so.6").write_bytes(b"libc")
    (root / "usr/lib/x86_64-linux-gnu/libz.so.1.2.13").write_bytes(b"libz")
    (root / "usr/lib/x86_64-linux-gnu/libz.so.1").symlink_to("libz.so.1.2.13")
    (root / "usr/lib/x86_64-linux-gnu/libcrypto.so.3").write_bytes(b"kmod's")
    (root / "usr/lib/udev/hwdb.bin").write_bytes(b"hwdb" * 1000)
    (root / "usr/bin/busybox").write_bytes(b"busybox")
    (root / "usr/bin/ash").symlink_to("busybox")
    (root / "usr/bin/udevadm").write_bytes(b"udevadm")
    (root / "shutdown").symlink_to("usr/lib/archiso-hook/archiso-hook")
    if listed:
        (root / "etc/archiso/shutdown-files").write_text(
            "/lib/x86_64-linux-gnu/libz.so.1\n/lib/x86_64-linux-gnu/libc.so.6\n"
            "/lib64/ld-linux-x86-64.so.2\n"  # not in this image: skipped
        )


def _files(root: Path) -> set[str]:
    return {
        os.path.relpath(os.path.join(d, name), root)
        for d, dirs, files in os.walk(root)
        for name in files + [x for x in dirs if os.path.islink(os.path.join(d, x))]
    }


def test_only_what_the_shutdown_runs_is_copied(tmp_path: Path) -> None:
    _image(tmp_path / "img", listed=True)
    copied = copy_initramfs(str(tmp_path / "copy"), str(tmp_path / "img") + "/")
    copy = tmp_path / "copy"
    assert _files(copy) == {
        "bin", "lib", "lib64", "shutdown",
        "usr/lib/archiso-hook/archiso-hook",
        "usr/lib/archiso-hook/_internal/libpython3.11.so.1.0",
        "usr/lib/x86_64-linux-gnu/libc.so.6", "usr/lib/x86_64-linux-gnu/libz.so.1",
    }  # fmt: skip
    # A library's link is copied as the file it names; /shutdown stays a link to the
    # program, in the copy (no shell: busybox stays behind).
    assert (copy / "usr/lib/x86_64-linux-gnu/libz.so.1").read_bytes() == b"libz"
    assert os.readlink(copy / "shutdown") == "usr/lib/archiso-hook/archiso-hook"
    assert (copy / "shutdown").read_bytes() == b"frozen"
    assert os.readlink(copy / "lib64") == "usr/lib"
    assert copied == sum(len(x) for x in (b"frozen", b"python", b"libz", b"libc"))


def test_an_image_without_the_list_is_copied_whole(tmp_path: Path) -> None:
    _image(tmp_path / "img", listed=False)
    copy_initramfs(str(tmp_path / "copy"), str(tmp_path / "img") + "/")
    assert _files(tmp_path / "copy") == _files(tmp_path / "img")
