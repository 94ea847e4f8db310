"""The boot's pure decisions (boot/decisions.py) at their boundaries: whether the images
are copied to RAM, whether an image is the whole filesystem its aitab line says, and
what the watchdog may grow the COW files to."""

from __future__ import annotations

import pytest

from archiso_hook.boot.cowfile import Usage
from archiso_hook.boot.decisions import Memory, copy_refusal, growth_policy, image_problem
from archiso_hook.cmdline import CopyMode
from archiso_hook.sizes import MiB, Size
from archiso_hook.steps import AUTO_MAX_IMAGES, AUTO_RESERVE, COPY_RESERVE

GiB = 1024 * MiB
PLENTY = Memory(total=64 * GiB, available=60 * GiB)
NO_LIMIT = 1 << 62


# --- copytoram ------------------------------------------------------------------------


@pytest.mark.parametrize("mode", [CopyMode.Y, CopyMode.AUTO])
def test_copytoram_size_caps_every_mode(mode: CopyMode) -> None:
    assert copy_refusal(mode, 100 * MiB, 100 * MiB, PLENTY, None) is None
    refusal = copy_refusal(mode, 100 * MiB + 1, 100 * MiB, PLENTY, None)
    assert refusal is not None and "more than copytoram_size= allows (100.0 MiB)" in refusal


def test_copytoram_y_keeps_its_reserve_free() -> None:
    needed = 1 * GiB
    exact = Memory(total=4 * GiB, available=needed + COPY_RESERVE)
    assert copy_refusal(CopyMode.Y, needed, NO_LIMIT, exact, None) is None
    short = Memory(total=4 * GiB, available=needed + COPY_RESERVE - 1)
    refusal = copy_refusal(CopyMode.Y, needed, NO_LIMIT, short, None)
    assert refusal is not None and "must stay free for the system" in refusal


def test_copytoram_y_copies_from_an_optical_drive() -> None:
    assert copy_refusal(CopyMode.Y, 1 * GiB, NO_LIMIT, PLENTY, "/dev/sr0") is None


def test_auto_never_copies_from_an_optical_drive() -> None:
    refusal = copy_refusal(CopyMode.AUTO, 1 * MiB, NO_LIMIT, PLENTY, "/dev/sr0")
    assert refusal == "the medium is on an optical drive (/dev/sr0)"


def test_auto_copies_images_up_to_its_limit() -> None:
    assert copy_refusal(CopyMode.AUTO, AUTO_MAX_IMAGES, NO_LIMIT, PLENTY, None) is None
    refusal = copy_refusal(CopyMode.AUTO, AUTO_MAX_IMAGES + 1, NO_LIMIT, PLENTY, None)
    assert refusal is not None and refusal.startswith("the images are ")


def test_auto_keeps_more_ram_to_spare_than_y() -> None:
    needed = 1 * GiB
    exact = Memory(total=8 * GiB, available=needed + AUTO_RESERVE)
    assert copy_refusal(CopyMode.AUTO, needed, NO_LIMIT, exact, None) is None
    short = Memory(total=8 * GiB, available=needed + AUTO_RESERVE - 1)
    refusal = copy_refusal(CopyMode.AUTO, needed, NO_LIMIT, short, None)
    assert refusal is not None and "auto copies with 2.0 GiB to spare" in refusal
    # What auto refuses for want of memory, y still does.
    assert copy_refusal(CopyMode.Y, needed, NO_LIMIT, short, None) is None


# --- image checks ---------------------------------------------------------------------


def squashfs_head(bytes_used: int) -> bytes:
    head = bytearray(0x10048)
    head[0:4] = b"hsqs"
    head[40:48] = bytes_used.to_bytes(8, "little")
    return bytes(head)


def ext4_head(blocks: int, log_block: int) -> bytes:
    head = bytearray(0x10048)
    head[0x438:0x43A] = b"\x53\xef"
    head[0x404:0x408] = blocks.to_bytes(4, "little")
    head[0x418:0x41C] = log_block.to_bytes(4, "little")
    return bytes(head)


def test_a_whole_image_has_no_problem() -> None:
    assert image_problem("/m/root.sfs", squashfs_head(4096), "squashfs", 4096) is None
    assert image_problem("/m/root.sfs", squashfs_head(4096), "squashfs", 8192) is None
    assert image_problem("/m/root.fs", ext4_head(1024, 2), "ext4", 4 * MiB) is None


def test_a_truncated_image_is_named_with_both_sizes_and_a_hint() -> None:
    problem = image_problem("/m/root.fs", ext4_head(1024, 2), "ext4", 4 * MiB - 1)
    assert problem is not None
    assert problem.message.startswith("/m/root.fs is truncated: the ext4 in it is 4.0 MiB")
    assert problem.hint is not None and "rebuild or rewrite the medium" in problem.hint
    problem = image_problem("/m/root.sfs", squashfs_head(4097), "squashfs", 4096)
    assert problem is not None and "is truncated" in problem.message


def test_an_image_of_another_type_is_named() -> None:
    problem = image_problem("/m/root.sfs", ext4_head(1024, 2), "squashfs", 4 * MiB)
    assert problem is not None
    assert problem.message.startswith("/m/root.sfs is not a squashfs image (found ext4)")
    problem = image_problem("/m/root.sfs", bytes(0x10048), "squashfs", 4 * MiB)
    assert problem is not None and "(found no known filesystem)" in problem.message


# --- growth ---------------------------------------------------------------------------


def test_no_cow_files_nothing_to_grow() -> None:
    assert (
        growth_policy(
            [], space="/c", fstype="tmpfs", ram=GiB, grow_max=Size(50, True), grow=True, free=0
        )
        == {}
    )


def test_on_a_tmpfs_the_files_grow_up_to_a_share_of_ram() -> None:
    files = [Usage(apparent=100 * MiB, allocated=10 * MiB)]
    policy = growth_policy(
        files, space="/c", fstype="tmpfs", ram=4 * GiB, grow_max=Size(50, True), grow=True,
        free=0,
    )  # fmt: skip
    assert policy == {"space": "/c", "tmpfs": True, "grow": True, "grow_max": 2 * GiB}
    absolute = growth_policy(
        files, space="/c", fstype="tmpfs", ram=4 * GiB, grow_max=Size(300 * MiB), grow=False,
        free=0,
    )  # fmt: skip
    assert absolute["grow_max"] == 300 * MiB and absolute["grow"] is False


def test_on_a_device_the_files_grow_only_into_what_no_file_has_claimed() -> None:
    # Two sparse files: 100 MiB apparent, 10 allocated, and 50 apparent, 50 allocated.
    files = [Usage(100 * MiB, 10 * MiB), Usage(50 * MiB, 50 * MiB)]
    policy = growth_policy(
        files, space="/c", fstype="ext4", ram=4 * GiB, grow_max=Size(50, True), grow=True,
        free=200 * MiB,
    )  # fmt: skip
    # 150 MiB already theirs, and of the 200 free, 90 are the first file's right to grow.
    assert policy["grow_max"] == 150 * MiB + 110 * MiB and policy["tmpfs"] is False
    full = growth_policy(
        files, space="/c", fstype="ext4", ram=4 * GiB, grow_max=Size(50, True), grow=True,
        free=10 * MiB,
    )  # fmt: skip
    assert full["grow_max"] == 150 * MiB  # never less than what they already have
