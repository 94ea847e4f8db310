"""release.Releaser's choice of the mounts a killed hook made but did not record (the
window between a mount(2) and its record): only mounts of a device of ours, only under
the hook's run directory (or where it moved), deepest first. The kernel's side (a busy
loop device freed once they are gone) is tests/vm/test_71_broken_state.py's."""

from __future__ import annotations

import io

import pytest

from archiso_hook.boot import release
from archiso_hook.errors import KernelError
from archiso_hook.kernel import syscalls
from archiso_hook.log import Log

MOUNTS = {
    "/": ("rootfs", "rootfs"),
    "/run/archiso/sfs/root": ("/dev/loop0", "squashfs"),
    "/run/archiso/sfs/root/deeper": ("/dev/loop0", "squashfs"),
    "/oldrun/archiso/sfs/share": ("/dev/loop0", "squashfs"),
    "/mnt/user": ("/dev/loop0", "squashfs"),  # not under the hook's directory
    "/run/archiso/sfs/other": ("/dev/loop1", "squashfs"),
    "/new_root": ("/dev/mapper/arch_root", "ext4"),
}


@pytest.fixture
def unmounted(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    done: list[str] = []
    monkeypatch.setattr(syscalls, "mountpoints", lambda: dict(MOUNTS))

    def umount(target: str, flags: int = 0) -> None:
        if target == "/oldrun/archiso/sfs/share":
            raise KernelError("busy", errno=16)
        done.append(target)

    monkeypatch.setattr(syscalls, "umount", umount)
    return done


def _releaser(moved: tuple[tuple[str, str], ...] = ()) -> tuple[release.Releaser, io.StringIO]:
    out = io.StringIO()
    return release.Releaser(Log(stream=out, kmsg=False), moved), out


def test_only_mounts_of_the_device_under_the_run_directory_deepest_first(
    unmounted: list[str],
) -> None:
    releaser, out = _releaser()
    assert releaser._unrecorded_mounts("/dev/loop0", below=releaser._run_dirs())
    assert unmounted == ["/run/archiso/sfs/root/deeper", "/run/archiso/sfs/root"]
    assert "released: unmounted /run/archiso/sfs/root (/dev/loop0; the record was not" in (
        out.getvalue()
    )


def test_where_the_run_directory_moved_at_shutdown(unmounted: list[str]) -> None:
    releaser, _ = _releaser(moved=(("/run/", "/oldrun/"),))
    assert releaser._run_dirs() == ("/run/archiso", "/oldrun/archiso")
    releaser._unrecorded_mounts("/dev/loop0", below=releaser._run_dirs())
    assert "/mnt/user" not in unmounted  # never outside the hook's directories
    assert "/oldrun/archiso/sfs/share" not in unmounted  # busy: left for the next round


def test_a_dm_device_of_ours_anywhere(unmounted: list[str]) -> None:
    releaser, _ = _releaser()
    assert releaser._unrecorded_mounts("/dev/mapper/arch_root", below=None)
    assert unmounted == ["/new_root"]
    assert not releaser._unrecorded_mounts("/dev/loop9", below=None)
