"""Struct packing and ioctl numbers, against the numbers in the kernel's UAPI headers.

The C half compiles the headers installed on this machine (linux-libc-dev) and
prints what the compiler says; the Python half must agree.
"""

from __future__ import annotations

import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from archiso_hook import dm, loop
from archiso_hook.ioctl import GENERIC, POWERPC_MIPS_SPARC, layout_for

C_PROGRAM = r"""
#include <linux/dm-ioctl.h>
#include <linux/loop.h>
#include <linux/fs.h>
#include <stddef.h>
#include <stdio.h>
#define P(name, value) printf("%s %lu\n", name, (unsigned long)(value))
int main(void) {
    P("sizeof_dm_ioctl", sizeof(struct dm_ioctl));
    P("sizeof_dm_target_spec", sizeof(struct dm_target_spec));
    P("off_dm_data_size", offsetof(struct dm_ioctl, data_size));
    P("off_dm_flags", offsetof(struct dm_ioctl, flags));
    P("off_dm_event_nr", offsetof(struct dm_ioctl, event_nr));
    P("off_dm_dev", offsetof(struct dm_ioctl, dev));
    P("off_dm_name", offsetof(struct dm_ioctl, name));
    P("off_dm_uuid", offsetof(struct dm_ioctl, uuid));
    P("off_spec_next", offsetof(struct dm_target_spec, next));
    P("off_spec_type", offsetof(struct dm_target_spec, target_type));
    P("off_name_list_name", offsetof(struct dm_name_list, name));
    P("DM_VERSION", DM_VERSION);
    P("DM_DEV_CREATE", DM_DEV_CREATE);
    P("DM_DEV_REMOVE", DM_DEV_REMOVE);
    P("DM_DEV_SUSPEND", DM_DEV_SUSPEND);
    P("DM_DEV_STATUS", DM_DEV_STATUS);
    P("DM_DEV_WAIT", DM_DEV_WAIT);
    P("DM_TABLE_LOAD", DM_TABLE_LOAD);
    P("DM_TABLE_STATUS", DM_TABLE_STATUS);
    P("DM_LIST_DEVICES", DM_LIST_DEVICES);
    P("DM_BUFFER_FULL_FLAG", DM_BUFFER_FULL_FLAG);
    P("DM_STATUS_TABLE_FLAG", DM_STATUS_TABLE_FLAG);
    P("DM_DEFERRED_REMOVE", DM_DEFERRED_REMOVE);
    P("sizeof_loop_info64", sizeof(struct loop_info64));
    P("sizeof_loop_config", sizeof(struct loop_config));
    P("off_lo_flags", offsetof(struct loop_info64, lo_flags));
    P("off_lo_file_name", offsetof(struct loop_info64, lo_file_name));
    P("off_lo_init", offsetof(struct loop_info64, lo_init));
    P("off_cfg_info", offsetof(struct loop_config, info));
    P("LOOP_CONFIGURE", LOOP_CONFIGURE);
    P("LOOP_CTL_GET_FREE", LOOP_CTL_GET_FREE);
    P("LOOP_SET_STATUS64", LOOP_SET_STATUS64);
    P("LO_FLAGS_AUTOCLEAR", LO_FLAGS_AUTOCLEAR);
    P("BLKGETSIZE64", BLKGETSIZE64);
    return 0;
}
"""


@pytest.fixture(scope="module")
def kernel_headers(tmp_path_factory: pytest.TempPathFactory) -> dict[str, int]:
    gcc = shutil.which("gcc")
    if gcc is None or not Path("/usr/include/linux/dm-ioctl.h").exists():
        pytest.fail("gcc and linux-libc-dev are needed (make setup installs them)")
    work = tmp_path_factory.mktemp("abi")
    (work / "abi.c").write_text(C_PROGRAM)
    subprocess.run([gcc, "-o", str(work / "abi"), str(work / "abi.c")], check=True)
    out = subprocess.run([str(work / "abi")], check=True, capture_output=True, text=True).stdout
    return {name: int(value) for name, value in (line.split() for line in out.splitlines())}


def test_dm_ioctl_layout_matches_the_headers(kernel_headers: dict[str, int]) -> None:
    h = kernel_headers
    assert dm.DM_IOCTL.size == h["sizeof_dm_ioctl"] == 312
    assert dm.DM_TARGET_SPEC.size == h["sizeof_dm_target_spec"] == 40
    assert dm.DM_NAME_LIST.size == h["off_name_list_name"] == 12
    header = dm.pack_ioctl(
        data_size=0x11223344, name="N", uuid="U", flags=0x55, event_nr=0x66, dev=0x0102030405060708
    )
    assert struct.unpack_from("=I", header, h["off_dm_data_size"])[0] == 0x11223344
    assert struct.unpack_from("=I", header, h["off_dm_flags"])[0] == 0x55
    assert struct.unpack_from("=I", header, h["off_dm_event_nr"])[0] == 0x66
    assert struct.unpack_from("=Q", header, h["off_dm_dev"])[0] == 0x0102030405060708
    assert header[h["off_dm_name"] : h["off_dm_name"] + 2] == b"N\0"
    assert header[h["off_dm_uuid"] : h["off_dm_uuid"] + 2] == b"U\0"
    spec = dm.pack_targets([dm.Target(1, 2, "snapshot", "x")])
    assert struct.unpack_from("=I", spec, h["off_spec_next"])[0] == 48
    assert spec[h["off_spec_type"] : h["off_spec_type"] + 9] == b"snapshot\0"


def test_dm_request_numbers_and_flags_match_the_headers(kernel_headers: dict[str, int]) -> None:
    h = kernel_headers
    for name in (
        "VERSION",
        "DEV_CREATE",
        "DEV_REMOVE",
        "DEV_SUSPEND",
        "DEV_STATUS",
        "DEV_WAIT",
        "TABLE_LOAD",
        "TABLE_STATUS",
        "LIST_DEVICES",
    ):
        assert dm.request_number(dm.Cmd[name], layout_for("x86_64")) == h[f"DM_{name}"], name
    assert dm.Flag.BUFFER_FULL == h["DM_BUFFER_FULL_FLAG"]
    assert dm.Flag.STATUS_TABLE == h["DM_STATUS_TABLE_FLAG"]
    assert dm.Flag.DEFERRED_REMOVE == h["DM_DEFERRED_REMOVE"]


def test_loop_layout_and_numbers_match_the_headers(kernel_headers: dict[str, int]) -> None:
    h = kernel_headers
    assert loop.LOOP_INFO64.size == h["sizeof_loop_info64"] == 232
    assert loop.LOOP_CONFIG.size == h["sizeof_loop_config"] == 304
    info = loop.LoopInfo(
        flags=loop.LO_FLAGS_AUTOCLEAR | loop.LO_FLAGS_READ_ONLY, file_name="/run/x.sfs"
    ).pack()
    assert struct.unpack_from("=I", info, h["off_lo_flags"])[0] == 5
    assert info[h["off_lo_file_name"] : h["off_lo_file_name"] + 11] == b"/run/x.sfs\0"
    config = loop.pack_config(7, loop.LoopInfo(file_name="f"))
    assert struct.unpack_from("=I", config, 0)[0] == 7
    assert config[h["off_cfg_info"] + h["off_lo_file_name"]] == ord("f")
    assert loop.LOOP_CONFIGURE == h["LOOP_CONFIGURE"]
    assert loop.LOOP_CTL_GET_FREE == h["LOOP_CTL_GET_FREE"]
    assert loop.LOOP_SET_STATUS64 == h["LOOP_SET_STATUS64"]
    assert loop.LO_FLAGS_AUTOCLEAR == h["LO_FLAGS_AUTOCLEAR"]
    assert layout_for("x86_64").ior(0x12, 114, 8) == h["BLKGETSIZE64"]


def test_loop_info_round_trips() -> None:
    info = loop.LoopInfo(
        offset=4096,
        sizelimit=1 << 33,
        flags=4,
        file_name="a" * 80,
        number=3,
        device=0x803,
        inode=99,
    )
    back = loop.LoopInfo.unpack(info.pack())
    assert back == loop.LoopInfo(
        offset=4096,
        sizelimit=1 << 33,
        flags=4,
        file_name="a" * 63,
        number=3,
        device=0x803,
        inode=99,
    )


def test_ioc_encoding_per_architecture() -> None:
    # BLKGETSIZE64 = _IOR(0x12, 114, size_t): pointer size and layout both show in it.
    assert GENERIC.ior(0x12, 114, 8) == 0x80081272  # x86_64
    assert GENERIC.ior(0x12, 114, 4) == 0x80041272  # i686
    assert POWERPC_MIPS_SPARC.ior(0x12, 114, 8) == 0x40081272  # ppc64
    assert POWERPC_MIPS_SPARC.io(0x12, 95) == 0x2000125F  # BLKRRPART on ppc
    assert GENERIC.io(0x12, 95) == 0x125F
    assert layout_for("i686") is GENERIC and layout_for("ppc64le") is POWERPC_MIPS_SPARC
    with pytest.raises(ValueError, match="no ioctl encoding known for architecture 'vax'"):
        layout_for("vax")
    with pytest.raises(ValueError, match="does not fit"):
        POWERPC_MIPS_SPARC.ior(1, 1, 1 << 13)


def _reply(data: bytes, target_count: int = 0) -> bytearray:
    header = dm.pack_ioctl(data_size=312 + len(data), target_count=target_count)
    return bytearray(header + data)


def test_table_status_reply_is_parsed_with_next_relative_to_the_data() -> None:
    first = struct.pack("=QQiI16s", 0, 2048, 0, 56, b"snapshot") + b"16/2048 8\0".ljust(16, b"\0")
    second = struct.pack("=QQiI16s", 2048, 100, 0, 0, b"linear") + b"7:0 0\0"
    reply = _reply(first + second, target_count=2)
    assert dm.unpack_targets(reply, 2) == [
        dm.Target(0, 2048, "snapshot", "16/2048 8"),
        dm.Target(2048, 100, "linear", "7:0 0"),
    ]


def test_list_devices_reply() -> None:
    a = struct.pack("=QI", (253 << 8) | 0, 24) + b"arch_a\0".ljust(12, b"\0")
    b = struct.pack("=QI", (253 << 8) | 1, 0) + b"arch_b\0"
    assert dm.unpack_names(_reply(a + b)) == [("arch_a", 253, 0), ("arch_b", 253, 1)]
    assert dm.unpack_names(_reply(struct.pack("=QI", 0, 0) + b"\0")) == []


def test_names_longer_than_the_kernel_allows_are_refused() -> None:
    with pytest.raises(ValueError, match="longer than 127 bytes"):
        dm.pack_ioctl(data_size=312, name="n" * 128)


def test_snapshot_status_lines() -> None:
    assert dm.SnapshotStatus.parse("16/2048 8") == dm.SnapshotStatus(16, 2048, 8)
    assert dm.SnapshotStatus.parse("16/2048 8").used_fraction == 16 / 2048
    assert dm.SnapshotStatus.parse("Invalid").state == "Invalid"
    assert dm.SnapshotStatus.parse("Overflow").used_fraction is None
