from __future__ import annotations

import pytest

from archiso_hook.errors import InputError
from archiso_hook.mountopts import (
    MS_NOATIME,
    MS_NODEV,
    MS_NOSUID,
    MS_RDONLY,
    MountOptions,
    parse_mount_options,
)


def test_flags_and_data_are_split_as_mount8_does() -> None:
    assert parse_mount_options(None, what="x") == MountOptions()
    assert parse_mount_options("defaults", what="x") == MountOptions()
    options = parse_mount_options("noatime,nosuid,nodev,subvol=@cow,compress=zstd", what="x")
    assert options == MountOptions(MS_NOATIME | MS_NOSUID | MS_NODEV, "subvol=@cow,compress=zstd")
    assert parse_mount_options("size=256M,mode=0700", what="x").data == "size=256M,mode=0700"


def test_later_words_override_earlier_ones_and_fstab_words_are_ignored() -> None:
    assert parse_mount_options("ro,rw", what="x").flags == 0
    assert parse_mount_options("rw,ro", what="x").read_only
    assert parse_mount_options("noauto,nofail,x-systemd.automount,_netdev", what="x") == (
        MountOptions()
    )
    assert parse_mount_options("ro", what="x").flags == MS_RDONLY


@pytest.mark.parametrize("text", ["bind", "remount", "a,,b", ",", "uid=0,ba\x01d"])
def test_refused(text: str) -> None:
    with pytest.raises(InputError, match=r"^cow_flags=.* is not valid"):
        parse_mount_options(text, what="cow_flags")
