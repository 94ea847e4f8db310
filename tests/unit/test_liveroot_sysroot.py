"""Live roots from another architecture's root (vm.liveroot with `sysroot=`).

The host's ldd cannot load an i386 program's libraries, so the lab walks `NEEDED` and
`PT_INTERP` itself and resolves paths as a chroot would. Tested on a fake root whose
library directory (and an absolute symlink to it) exists only inside it.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from vm.liveroot import LiverootError, _realpath_in, install_host_file, sysroot_libraries

HOST_LIBC = Path("/lib/x86_64-linux-gnu/libc.so.6")
HOST_LOADER = Path("/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2")


def _fake_root(tmp_path: Path) -> Path:
    """libc and the loader in /opt/fakelib (found through ld.so.conf.d), /lib64 an
    absolute link to it: none of that exists on the host."""
    root = tmp_path / "sysroot"
    lib = root / "opt/fakelib"
    lib.mkdir(parents=True)
    shutil.copy2(HOST_LIBC, lib / "libc.so.6")
    shutil.copy2(HOST_LOADER, lib / "ld-linux-x86-64.so.2.real")
    (lib / "ld-linux-x86-64.so.2").symlink_to("ld-linux-x86-64.so.2.real")
    (root / "lib64").symlink_to("/opt/fakelib")
    (root / "etc/ld.so.conf.d").mkdir(parents=True)
    (root / "etc/ld.so.conf").write_text("include /etc/ld.so.conf.d/*.conf\n")
    (root / "etc/ld.so.conf.d/fake.conf").write_text("# comment\n/opt/fakelib\n")
    return root


def test_paths_resolve_inside_the_root(tmp_path: Path) -> None:
    root = _fake_root(tmp_path)
    (root / "usr/lib").mkdir(parents=True)
    (root / "lib").symlink_to("usr/lib")
    (root / "usr/lib/up").symlink_to("../../lib64")
    assert _realpath_in(root, Path("/lib64/libc.so.6")) == Path("/opt/fakelib/libc.so.6")
    assert _realpath_in(root, Path("/lib/up/x")) == Path("/opt/fakelib/x")
    # As the kernel does: '..' after a link leaves the directory the link leads to.
    assert _realpath_in(root, Path("/lib/../etc")) == Path("/usr/etc")
    (root / "loop").symlink_to("/loop")
    with pytest.raises(LiverootError, match="too many levels of symlinks"):
        _realpath_in(root, Path("/loop/x"))


def test_libraries_are_found_and_copied_from_the_root(tmp_path: Path) -> None:
    root = _fake_root(tmp_path)
    libs = sysroot_libraries([Path("/usr/bin/true")], root)
    assert libs == [
        Path("/lib64/ld-linux-x86-64.so.2"),  # PT_INTERP
        Path("/opt/fakelib/ld-linux-x86-64.so.2"),  # libc's NEEDED
        Path("/opt/fakelib/libc.so.6"),
    ]
    live = tmp_path / "live"
    for lib in libs:
        install_host_file(live, lib, sysroot=root)
    assert (live / "opt/fakelib/libc.so.6").read_bytes() == HOST_LIBC.read_bytes()
    assert (live / "opt/fakelib/ld-linux-x86-64.so.2").readlink() == Path(
        "ld-linux-x86-64.so.2.real"
    )
    # /lib64 is an absolute link in the root: followed there, not on the host; the new
    # root has a plain /lib64, so the loader's relative link is made absolute.
    assert (live / "lib64/ld-linux-x86-64.so.2").readlink() == Path(
        "/opt/fakelib/ld-linux-x86-64.so.2.real"
    )
    assert (live / "opt/fakelib/ld-linux-x86-64.so.2.real").read_bytes() == (
        HOST_LOADER.read_bytes()
    )


def test_a_library_missing_from_the_root_is_an_error(tmp_path: Path) -> None:
    root = _fake_root(tmp_path)
    (root / "opt/fakelib/libc.so.6").unlink()
    with pytest.raises(LiverootError, match=r"library libc\.so\.6 not found in"):
        sysroot_libraries([Path("/usr/bin/true")], root)
