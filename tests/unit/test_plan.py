from __future__ import annotations

import pytest

from archiso_hook.aitab import parse_aitab
from archiso_hook.cmdline import Arch, CowMode, parse_options
from archiso_hook.errors import InputError
from archiso_hook.plan import (
    AttachLoop,
    BootPlan,
    CreateSnapshot,
    FindMedium,
    LoadModules,
    Mount,
    SizeCowFiles,
    cow_need,
    cow_sizes,
    plan_boot,
)
from archiso_hook.sizes import MiB

AITAB = """\
root-image  /           x86_64  xz    ext4  50%
other       /           i686    xz    ext4  50%
usr-share   /usr/share  any     zstd  none  0
srv         /srv        x86_64  none  ext4  64
"""


def plan(
    cmdline: str = "archisolabel=ARCH", aitab: str = AITAB, arch: Arch = Arch.X86_64
) -> BootPlan:
    return plan_boot(parse_options(cmdline, machine_arch=arch), parse_aitab(aitab, "aitab"))


def test_images_of_this_arch_in_aitab_order() -> None:
    p = plan()
    assert [(i.entry.name, i.path, i.target) for i in p.images] == [
        ("root-image", "/run/archiso/bootmnt/arch/x86_64/root-image.fs.sfs", "/new_root"),
        ("usr-share", "/run/archiso/bootmnt/arch/any/usr-share.sfs", "/new_root/usr/share"),
        ("srv", "/run/archiso/bootmnt/arch/x86_64/srv.fs", "/new_root/srv"),
    ]
    root, share, srv = p.images
    assert root.container == "/run/archiso/sfs/root-image"
    assert root.fs_image == "/run/archiso/sfs/root-image/root-image.fs"
    assert root.dm_name == "arch_root-image"
    assert root.cow_file == "/run/archiso/cowspace/persistent_ARCH/x86_64/root-image.cow"
    assert share.dm_name is None and share.cow_file is None and share.fs_image is None
    assert srv.fs_image == srv.path and srv.container is None


def test_the_other_arch_gets_its_own_images() -> None:
    p = plan(arch=Arch.I686)
    assert [i.entry.name for i in p.images] == ["other", "usr-share"]


def test_steps_find_the_medium_then_origins_then_mounts_in_order() -> None:
    steps = plan("archisolabel=ARCH cow_persistent=PO cow_chunksize=16 dm_snap_prefix=x").steps
    assert steps[0] == FindMedium("medium", "/dev/disk/by-label/ARCH", 30)
    assert steps[1] == Mount("@medium", "/run/archiso/bootmnt", None, read_only=True)
    assert steps[2] == LoadModules(("loop", "squashfs", "dm_mod", "dm_snapshot", "fs-ext4"))
    kinds = [type(s).__name__ for s in steps]
    # Every origin is attached before the COW files are sized against the cowspace.
    sizing = kinds.index("SizeCowFiles")
    assert [k for k in kinds[:sizing]].count("AttachLoop") == 3  # root sfs, root fs, srv fs
    sizing_step = steps[sizing]
    assert isinstance(sizing_step, SizeCowFiles)
    assert sizing_step.origins == ("root-image.origin", "srv.origin")
    snapshots = [s for s in steps if isinstance(s, CreateSnapshot)]
    assert snapshots[0] == CreateSnapshot(
        "x_root-image", "root-image.origin", "root-image.cowdev", CowMode.PO, 16
    )
    mounts = [s.target for s in steps if isinstance(s, Mount)]
    assert mounts == [
        "/run/archiso/bootmnt",
        "/run/archiso/cowspace",
        "/run/archiso/sfs/root-image",
        "/new_root",
        "/new_root/usr/share",
        "/new_root/srv",
    ]
    origin = next(s for s in steps if isinstance(s, AttachLoop) and s.ref == "srv.origin")
    assert origin.expect_fstype == "ext4" and origin.read_only


def test_squashfs_only_media_need_no_cowspace_or_device_mapper() -> None:
    steps = plan(aitab="root / any xz none 0\n").steps
    assert not any(isinstance(s, SizeCowFiles | CreateSnapshot) for s in steps)
    assert LoadModules(("loop", "squashfs")) in steps
    assert "/run/archiso/cowspace" not in [s.target for s in steps if isinstance(s, Mount)]


def test_json_has_options_by_archiso_name_and_images() -> None:
    data = plan("archisolabel=ARCH cow_spacesize=1G").to_json()
    assert data["options"]["archisolabel"] == "ARCH"
    assert data["options"]["cow_spacesize"] == "1G"
    assert [i["type"] for i in data["images"]] == ["fs.sfs", "sfs", "fs"]
    assert data["images"][0]["name"] == "root-image" and data["images"][0]["mount"] == "/"
    assert data["steps"][0]["step"] == "find-medium"


@pytest.mark.parametrize(
    ("cmdline", "aitab", "message"),
    [
        ("", AITAB, "no boot medium given: set archisolabel="),
        ("archisolabel=A", "x / i686 xz ext4 5%\n", "aitab: no image for x86_64"),
        ("archisolabel=A", "x /srv x86_64 xz ext4 5%\n", "aitab: no image is mounted at /"),
        (
            "archisolabel=A",
            "x /usr/share any xz none 0\ny / any xz ext4 5%\n",
            "aitab:1: /usr/share is listed before / (line 2), which would hide it; list / first",
        ),
        (
            "archisolabel=A dm_snap_prefix=" + "p" * 64,
            "r" * 64 + " / any xz ext4 5%\n",
            "longer than 127 bytes",
        ),
    ],
)
def test_plans_that_cannot_boot_are_errors(cmdline: str, aitab: str, message: str) -> None:
    with pytest.raises(InputError) as excinfo:
        plan(cmdline, aitab)
    assert message in str(excinfo.value)


def test_cow_need_covers_every_chunk_and_persistent_metadata() -> None:
    assert cow_need(100 * MiB, CowMode.N, 8) == 100 * MiB
    assert cow_need(100 * MiB + 1, CowMode.N, 8) == 100 * MiB + 4096
    # 25600 data chunks of 4 KiB; an area is one metadata chunk for 256 of them; plus header.
    assert cow_need(100 * MiB, CowMode.P, 8) == (1 + 100 + 25600) * 4096
    assert cow_need(100 * MiB, CowMode.PO, 8) == cow_need(100 * MiB, CowMode.P, 8)


def test_cow_sizes_never_exceed_the_cowspace() -> None:
    assert cow_sizes([10 * MiB, 20 * MiB], 256 * MiB, CowMode.N, 8) == [10 * MiB, 20 * MiB]
    sizes = cow_sizes([1024 * MiB, 3072 * MiB], 256 * MiB, CowMode.P, 8)
    assert sum(sizes) <= 256 * MiB
    assert sizes[1] > 2.9 * sizes[0]  # shared in proportion to the origins
    assert all(s % 4096 == 0 for s in sizes)


def test_a_cowspace_too_small_is_a_clear_error() -> None:
    with pytest.raises(InputError, match=r"the cowspace \(2M\) is too small for 3 snapshot"):
        cow_sizes([100 * MiB] * 3, 2 * MiB, CowMode.N, 8)
