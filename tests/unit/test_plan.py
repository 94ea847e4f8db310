from __future__ import annotations

import json

import pytest

from archiso_hook.aitab import parse_aitab
from archiso_hook.cmdline import Arch, CowMode
from archiso_hook.cowsize import cow_need, cow_sizes
from archiso_hook.errors import InputError
from archiso_hook.kernel import dm
from archiso_hook.netconf import Autoconf, IpConfig
from archiso_hook.options import parse_options
from archiso_hook.plan import BootPlan, medium_steps, plan_boot
from archiso_hook.sizes import MiB
from archiso_hook.steps import (
    AttachLoop,
    BringUpNetwork,
    CreateCowFile,
    CreateSnapshot,
    FindMedium,
    LoadModules,
    MakeDirectory,
    Mount,
    Remount,
    SearchMedium,
    SizeCowFiles,
    VerifySignatures,
)

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
    find = steps[0]
    assert isinstance(find, FindMedium)
    assert (find.ref, find.device, find.timeout) == ("medium", "/dev/disk/by-label/ARCH", 30)
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
            "longer than 120 bytes",
        ),
        (  # 121 bytes: a name dm takes, but ARCHISO-<name> is one byte over its uuid limit
            "archisolabel=A dm_snap_prefix=" + "p" * 64,
            "r" * 56 + " / any xz ext4 5%\n",
            f"device-mapper name {'p' * 64}_{'r' * 56} is longer than 120 bytes (its uuid "
            f"ARCHISO-{'p' * 64}_{'r' * 56} would not fit the kernel's 128)",
        ),
    ],
)
def test_plans_that_cannot_boot_are_errors(cmdline: str, aitab: str, message: str) -> None:
    with pytest.raises(InputError) as excinfo:
        plan(cmdline, aitab)
    assert message in str(excinfo.value)


def test_the_longest_name_the_plan_takes_fits_the_kernel() -> None:
    # 120 bytes: the name and its uuid pack into struct dm_ioctl as the boot will.
    data = plan("archisolabel=A dm_snap_prefix=" + "p" * 64, "r" * 55 + " / any xz ext4 5%\n")
    (name,) = [i.dm_name for i in data.images]
    assert name is not None and len(name) == 120
    dm.pack_ioctl(data_size=0, name=name, uuid="ARCHISO-" + name)


@pytest.mark.parametrize(
    "cmdline",
    [
        "ip=dhcp archiso_http_srv=http://${pxeserver}/",
        "ip=10.0.2.15::10.0.2.2:255.255.255.0:live:eth0:none:10.0.2.3 archiso_nbd_srv=10.0.2.2",
        "ip=dhcp archiso_nfs_srv=10.0.2.2:/srv/archiso copytoram=n",
    ],
)
def test_network_plans_are_json_too(cmdline: str) -> None:
    data = json.loads(json.dumps(plan(cmdline).to_json()))
    (network,) = [s for s in data["steps"] if s["step"] == "bring-up-network"]
    assert network["config"]["autoconf"] in ("dhcp", "static")
    if "10.0.2.15" in cmdline:
        assert network["config"]["client"] == "10.0.2.15"
        assert network["config"]["dns"] == ["10.0.2.3"]
    if "nfs" in cmdline:
        (nfs,) = [s for s in data["steps"] if s["step"] == "mount-nfs"]
        assert nfs["export"] == {"host": "10.0.2.2", "path": "/srv/archiso"}


def test_signatures_are_checked_after_the_copy_and_before_anything_is_attached() -> None:
    steps = plan("archisolabel=A verify cms_verify=y copytoram=y").steps
    names = [type(s).__name__ for s in steps]
    check = names.index("VerifySignatures")
    assert names[check - 1] == "PrepareImages" and "AttachLoop" not in names[:check]
    (verify,) = [s for s in steps if isinstance(s, VerifySignatures)]
    assert (verify.gpg, verify.cms, len(verify.images)) == (True, True, 3)
    prepare = steps[check - 1]
    assert getattr(prepare, "companions", None) == (".sig", ".cms.sig")  # they go along
    assert not any(isinstance(s, VerifySignatures) for s in plan("archisolabel=A").steps)


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


def _steps_before_images(cmdline: str) -> list[object]:
    steps = plan(cmdline).steps
    return list(steps[: [type(s).__name__ for s in steps].index("LoadModules")])


def test_an_iso_file_on_a_disk_is_the_medium() -> None:
    find, mount_disk, attach, mount_medium = _steps_before_images(
        "img_label=DATA img_loop=/iso/live.iso img_flags=noatime"
    )
    assert isinstance(find, FindMedium) and find.device == "/dev/disk/by-label/DATA"
    assert find.what == "the device holding the ISO file"
    assert mount_disk == Mount(
        "@isodev", "/run/archiso/img_dev", None, read_only=True, options="noatime", look_only=True
    )
    assert "read-only, without journal replay -o noatime" in mount_disk.describe()
    assert attach == AttachLoop("medium", "/run/archiso/img_dev/iso/live.iso", read_only=True)
    assert mount_medium == Mount("@medium", "/run/archiso/bootmnt", None, read_only=True)


def test_search_by_uuid_or_file_is_the_medium() -> None:
    search, mount_medium = _steps_before_images("archisosearchuuid=abc rootdelay=7")
    assert search == SearchMedium("medium", "abc", "boot/abc.uuid", 7)
    assert isinstance(mount_medium, Mount) and mount_medium.source == "@medium"


def test_search_by_file_alone_walks_the_devices() -> None:
    # archiso accepts archisosearchfilename= without archisosearchuuid=; it wins over the label.
    search, mount_medium = _steps_before_images(
        "archisosearchfilename=/live/marker.id archisolabel=L rootdelay=9"
    )
    assert search == SearchMedium("medium", None, "live/marker.id", 9)
    assert search.describe() == (
        "wait up to 9 s for a device holding /live/marker.id (removable devices first, "
        "each looked into read-only)"
    )
    assert isinstance(mount_medium, Mount) and mount_medium.source == "@medium"
    described = plan("archisosearchfilename=/m.id archisolabel=L").describe()
    assert described.startswith("boot plan for x86_64: medium the device holding /m.id,")
    data = json.loads(json.dumps(plan("archisosearchfilename=/m.id").to_json()))
    assert data["steps"][0]["step"] == "search-medium" and data["steps"][0]["uuid"] is None
    assert data["options"]["archisosearchfilename"] == "/m.id"


@pytest.mark.parametrize(
    ("cmdline", "config"),
    [
        ("", IpConfig(Autoconf.DHCP)),  # no ip=: DHCP
        ("ip=eth0:dhcp", IpConfig(Autoconf.DHCP, device="eth0")),
        # several: the last the hook can carry out; the others are the live system's
        ("ip=dhcp ip=eth1:dhcp6", IpConfig(Autoconf.DHCP)),
        ("ip=eth0:dhcp ip=eth1:dhcp", IpConfig(Autoconf.DHCP, device="eth1")),
    ],
)
def test_a_network_boot_configures_the_last_ip_it_can(cmdline: str, config: IpConfig) -> None:
    (up,) = [s for s in plan(f"{cmdline} archiso_nfs_srv=10.0.2.2:/srv").steps
             if isinstance(s, BringUpNetwork)]  # fmt: skip
    assert up.config == config


@pytest.mark.parametrize(
    ("cmdline", "message"),
    [
        ("ip=dhcp6", "ip=dhcp6 asks for DHCPv6 (dhcp6), which archiso-hook cannot set up to "
                     "reach archiso_nbd_srv= (add ip=dhcp or a static IPv4 ip= for the boot;"),
        ("ip=eth0:auto6:9000", "ip=eth0:auto6:9000 asks for IPv6 autoconfiguration (auto6), "
                               "the MTU 9000, which"),
        ("ip=[2001:db8::2]::[2001:db8::1]:64:live:eth0:none",
         "asks for the IPv6 client address [2001:db8::2], the IPv6 gateway [2001:db8::1],"),
        ("ip=eth0:dhcp::52:54:00:12:34:56", "asks for the MAC address 52:54:00:12:34:56,"),
        ("ip=dhcp ip=off", "archiso_nbd_srv= needs the network, but ip=off turns it off"),
    ],
)  # fmt: skip
def test_a_network_boot_refuses_an_ip_it_cannot_honour(cmdline: str, message: str) -> None:
    options = parse_options(f"{cmdline} archiso_nbd_srv=10.0.2.2")  # parsing takes it...
    with pytest.raises(InputError) as excinfo:  # ...the plan names what it cannot do
        medium_steps(options)
    assert message in str(excinfo.value)
    assert options.network is None


def test_ip_and_bootif_are_only_words_for_a_boot_from_a_disc() -> None:
    line = "archisolabel=L ip=eth0:dhcp ip=dhcp6 BOOTIF=01-52-54-00-12-34-56 ip=eth0:auto6:1500"
    assert [type(s).__name__ for s in medium_steps(parse_options(line))] == ["FindMedium", "Mount"]


@pytest.mark.parametrize("cmdline", ["img_dev=/dev/vda1", "img_loop=x.iso"])
def test_an_iso_file_needs_both_halves(cmdline: str) -> None:
    with pytest.raises(InputError, match=r"needs both img_dev= \(or img_label=\) and img_loop="):
        plan(cmdline)


def test_a_cow_device_is_mounted_read_only_then_writable_and_files_are_kept() -> None:
    steps = plan("archisolabel=ARCH cow_label=KEEP cow_flags=noatime").steps
    i = next(i for i, s in enumerate(steps) if isinstance(s, FindMedium) and s.ref == "cowdev")
    assert steps[i + 1] == Mount(
        "@cowdev", "/run/archiso/cowspace", None, read_only=True, options="noatime"
    )
    assert steps[i + 2] == Remount("/run/archiso/cowspace", options="noatime")
    assert steps[i + 3] == MakeDirectory("/run/archiso/cowspace/persistent_ARCH/x86_64", 0o700)
    sizing = next(s for s in steps if isinstance(s, SizeCowFiles))
    assert sizing.mode is CowMode.P and sizing.reuse
    assert sizing.files == (
        "/run/archiso/cowspace/persistent_ARCH/x86_64/root-image.cow",
        "/run/archiso/cowspace/persistent_ARCH/x86_64/srv.cow",
    )
    assert all(s.reuse for s in steps if isinstance(s, CreateCowFile))
    snapshot = next(s for s in steps if isinstance(s, CreateSnapshot))
    assert snapshot.mode is CowMode.P


@pytest.mark.parametrize("cmdline", ["cow_label=KEEP cow_reset", "cow_label=KEEP cow_persistent=N"])
def test_reset_and_transient_stores_start_over(cmdline: str) -> None:
    steps = plan(f"archisolabel=ARCH {cmdline}").steps
    assert not any(s.reuse for s in steps if isinstance(s, CreateCowFile | SizeCowFiles))


def test_a_read_only_cow_device_is_refused() -> None:
    with pytest.raises(InputError, match="cow_flags=ro asks for a read-only COW device"):
        plan("archisolabel=ARCH cow_label=KEEP cow_flags=ro")


def test_other_basedir_prefix_and_arch() -> None:
    p = plan("archisolabel=A archisobasedir=live/boot dm_snap_prefix=x arch=i686")
    assert [i.path for i in p.images] == [
        "/run/archiso/bootmnt/live/boot/i686/other.fs.sfs",
        "/run/archiso/bootmnt/live/boot/any/usr-share.sfs",
    ]
    assert p.images[0].dm_name == "x_other"
    assert p.images[0].cow_file == "/run/archiso/cowspace/persistent_A/i686/other.cow"


def test_an_empty_image_needs_no_cow_space() -> None:
    assert cow_sizes([0, 200 * MiB], 8 * MiB, CowMode.N, 8) == [0, 8 * MiB]
