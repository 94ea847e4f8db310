from __future__ import annotations

import pytest

from archiso_hook.cmdline import Arch, CowMode, split_cmdline, udev_encode
from archiso_hook.errors import InputError
from archiso_hook.options import parse_options
from archiso_hook.sizes import Size

X86 = Arch.X86_64


def test_split_follows_the_kernel_quoting_rules() -> None:
    assert split_cmdline('a=1  b="two words" "c=x y" quiet d= e="unterminated') == [
        ("a", "1"),
        ("b", "two words"),
        ("c", "x y"),
        ("quiet", None),
        ("d", ""),
        ("e", "unterminated"),
    ]
    assert split_cmdline("  \n") == []
    assert split_cmdline("k=v=w") == [("k", "v=w")]


def test_defaults() -> None:
    options = parse_options("BOOT_IMAGE=/vmlinuz root=/dev/sda1", machine_arch=X86)
    assert options.basedir == "arch"
    assert options.label is None and options.medium is None
    assert options.arch is X86
    assert options.cow_spacesize == Size(256 << 20)
    assert options.cow_persistent is None and options.cow_mode is CowMode.PO
    assert options.grows and options.cow_grow_max == Size(50, percent=True)
    assert options.cow_dir == "persistent_/x86_64"
    assert options.cow_device_path is None and options.iso_device is None
    assert not options.cow_reset
    assert options.cow_chunksize == 8
    assert options.dm_snap_prefix == "arch"
    assert options.rootdelay == 30
    assert not options.quiet and not options.debug
    assert options.warnings == ()


def test_archiso_parameters_are_typed() -> None:
    options = parse_options(
        'archisobasedir=live/ archisolabel="ARCH 2011" arch=i686 cow_spacesize=50% '
        "cow_persistent=PO cow_chunksize=16 dm_snap_prefix=live rootdelay=5 quiet rd.debug",
        machine_arch=X86,
    )
    assert options.basedir == "live"
    assert options.label == "ARCH 2011"
    assert options.medium == "/dev/disk/by-label/ARCH\\x202011"
    assert options.arch is Arch.I686
    assert options.cow_spacesize == Size(50, percent=True)
    assert options.cow_persistent is CowMode.PO
    assert options.cow_chunksize == 16
    assert options.dm_snap_prefix == "live"
    assert options.rootdelay == 5
    assert options.quiet and options.debug


def test_device_wins_over_label_and_last_key_wins() -> None:
    options = parse_options(
        "archisolabel=A archisodevice=/dev/sr0 archisolabel=B", machine_arch=X86
    )
    assert options.label == "B"
    assert options.medium == "/dev/sr0"


def test_bare_word_means_y() -> None:
    assert parse_options("quiet", machine_arch=X86).quiet
    assert not parse_options("quiet=n", machine_arch=X86).quiet


@pytest.mark.parametrize(
    ("text", "names"),
    [
        ("cow_spacesize=0", "cow_spacesize=0 is not valid"),
        ("cow_spacesize=12Q", "cow_spacesize=12Q is not valid: expected a size such as 256M"),
        ("cow_spacesize=101%", "1%..100%"),
        ("cow_persistent=X", "cow_persistent=X is not valid: expected N (transient), P"),
        ("cow_chunksize=12", "cow_chunksize=12 is not valid: expected a power of two"),
        ("cow_chunksize=0", "cow_chunksize=0"),
        ("arch=armv7", "arch=armv7 is not valid: expected i686 or x86_64"),
        ("archisobasedir=../etc", "archisobasedir=../etc is not valid"),
        ("archisobasedir=/arch", "archisobasedir=/arch is not valid"),
        ("archisodevice=sr0", "archisodevice=sr0 is not valid: expected a device path"),
        ("dm_snap_prefix=a/b", "dm_snap_prefix=a/b is not valid"),
        ("rootdelay=soon", "rootdelay=soon is not valid: expected whole seconds"),
        ("quiet=maybe", "quiet=maybe is not valid: expected y or n"),
        ("archisolabel=", "archisolabel= is empty"),
        ("cow_persistent", "cow_persistent=y is not valid"),
    ],
)
def test_bad_values_name_the_parameter_and_the_accepted_forms(text: str, names: str) -> None:
    with pytest.raises(InputError) as excinfo:
        parse_options(text, machine_arch=X86)
    assert names in str(excinfo.value)


def test_keys_that_are_not_ours_are_ignored() -> None:
    options = parse_options(
        "root=x ip=dhcp BOOTIF=01-52-54-00-12-34-56 foo.bar=1 init=/bin/sh size=12Q",
        machine_arch=X86,
    )
    assert options.warnings == ()


def test_signature_checks_are_asked_as_archiso_asks_them() -> None:
    options = parse_options("verify cms_verify=y cowspace_size=1G", machine_arch=X86)
    assert (options.verify, options.cms_verify) == (True, True)
    assert options.warnings == (
        "cowspace_size= is an old archiso parameter; use cow_spacesize= instead",
    )
    assert not parse_options("verify=n", machine_arch=X86).verify


def test_old_archiso_parameters_are_honoured_or_said_what_to_use() -> None:
    options = parse_options(
        "archiso_curl_url=http://10.0.2.2/arch curlspace_size=2G aitab=aitab.x86_64 "
        "archisoflags=noatime",
        machine_arch=X86,
    )
    assert options.http_srv == "http://10.0.2.2/arch/" and options.network_source == "http"
    assert options.http_spc == Size(2 << 30)
    assert options.warnings == (
        "archiso_curl_url= is archiso's old name of archiso_http_srv=: taken as "
        "archiso_http_srv=; write that",
        "curlspace_size= is archiso's old name of archiso_http_spc=: taken as "
        "archiso_http_spc=; write that",
        "aitab= is an old archiso parameter, ignored: the aitab is read from "
        "<archisobasedir>/aitab; move it there, or point archisobasedir= at its directory",
        "archisoflags= is an old archiso parameter, ignored: the medium is always mounted "
        "read-only; img_flags= sets the options of a disk holding an ISO file",
    )
    with pytest.raises(InputError, match=r"^archiso_curl_url=ftp://x/ is not valid"):
        parse_options("archiso_curl_url=ftp://x/", machine_arch=X86)


def test_search_by_file_alone() -> None:
    options = parse_options("archisosearchfilename=/live/marker.id", machine_arch=X86)
    assert options.search_file == "live/marker.id"
    assert options.as_parameters()["archisosearchfilename"] == "/live/marker.id"


def test_arch_of_machine() -> None:
    assert Arch.of_machine("i586") is Arch.I686
    assert Arch.of_machine("x86_64") is Arch.X86_64
    with pytest.raises(InputError, match="unsupported machine architecture 'riscv64'"):
        Arch.of_machine("riscv64")


def test_udev_encoding_of_labels() -> None:
    assert udev_encode("ARCH_202611") == "ARCH_202611"
    assert udev_encode("ARCH 2011") == "ARCH\\x202011"
    assert udev_encode("a/b\\c") == "a\\x2fb\\x5cc"
    assert udev_encode("Ünïcode") == "Ünïcode"


def test_as_parameters_uses_archiso_names() -> None:
    params = parse_options("archisolabel=L cow_spacesize=1G", machine_arch=X86).as_parameters()
    assert params["archisolabel"] == "L"
    assert params["archisodevice"] == "/dev/disk/by-label/L"
    assert params["cow_spacesize"] == "1G"
    assert params["cow_persistent"] == "PO"  # overflow keeps reads working, in RAM


@pytest.mark.parametrize(
    ("spec", "path"),
    [
        ("/dev/sr0", "/dev/sr0"),
        ("UUID=2026-11-25-19-31-07-00", "/dev/disk/by-uuid/2026-11-25-19-31-07-00"),
        ("LABEL=ARCH 2011", "/dev/disk/by-label/ARCH\\x202011"),
        ("PARTUUID=0fc63daf-8483", "/dev/disk/by-partuuid/0fc63daf-8483"),
        ("PARTLABEL=live", "/dev/disk/by-partlabel/live"),
    ],
)
def test_archisodevice_takes_paths_and_tags(spec: str, path: str) -> None:
    assert parse_options(f'archisodevice="{spec}"', machine_arch=X86).medium == path


@pytest.mark.parametrize("spec", ["sr0", "UUID=", "SERIAL=x", "/dev/../etc/x", "LABEL=a/b"])
def test_bad_device_specs(spec: str) -> None:
    with pytest.raises(InputError, match=r"archisodevice=.* is not valid: expected a device path"):
        parse_options(f"archisodevice={spec}", machine_arch=X86)


def test_persistent_cow_device_and_its_defaults() -> None:
    options = parse_options("archisolabel=LIVE cow_label=PERSIST", machine_arch=X86)
    assert options.cow_device_path == "/dev/disk/by-label/PERSIST"
    assert options.cow_mode is CowMode.P  # the default with a device...
    assert options.cow_dir == "persistent_LIVE/x86_64"
    # ...but a user's value always wins, N included.
    assert parse_options("cow_device=/dev/vdb1 cow_persistent=N").cow_mode is CowMode.N
    assert parse_options("cow_persistent=PO").cow_mode is CowMode.PO
    options = parse_options(
        "cow_device=/dev/vdb1 cow_label=L cow_directory=/keep/it/ cow_flags=noatime cow_reset",
        machine_arch=X86,
    )
    assert options.cow_device_path == "/dev/disk/by-label/L"  # the label wins, as in archiso
    assert options.cow_dir == "keep/it"
    assert options.cow_flags == "noatime" and options.cow_reset


def test_iso_file_on_a_disk() -> None:
    options = parse_options("img_dev=/dev/vda1 img_loop=/iso/live.iso img_flags=noatime")
    assert options.iso_device == "/dev/vda1"
    assert options.img_loop == "iso/live.iso"
    assert parse_options("img_dev=/dev/vda1 img_label=DATA").iso_device == (
        "/dev/disk/by-label/DATA"
    )


def test_search_by_uuid() -> None:
    options = parse_options("archisosearchuuid=2026-11-25-00")
    assert options.search_file == "boot/2026-11-25-00.uuid"
    assert parse_options("archisosearchuuid=u archisosearchfilename=/x.id").search_file == "x.id"
    assert options.as_parameters()["archisosearchfilename"] == "/boot/2026-11-25-00.uuid"


@pytest.mark.parametrize(
    ("text", "names"),
    [
        ("img_loop=../x.iso", "img_loop=../x.iso is not valid: expected a path inside"),
        ("cow_directory=a/../../b", "cow_directory=a/../../b is not valid"),
        ("cow_flags=remount", "cow_flags=remount is not valid: remount is not a mount option"),
        ("img_flags=a,,b", "img_flags=a,,b is not valid: an empty option"),
        ("cow_reset=maybe", "cow_reset=maybe is not valid: expected y or n"),
        ("archisosearchuuid=a/b", "archisosearchuuid=a/b is not valid"),
    ],
)
def test_bad_values_of_the_persistence_and_iso_parameters(text: str, names: str) -> None:
    with pytest.raises(InputError) as excinfo:
        parse_options(text, machine_arch=X86)
    assert names in str(excinfo.value)
