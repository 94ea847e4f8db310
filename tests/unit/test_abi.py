"""Struct packing and ioctl numbers, against the numbers in the kernel's UAPI headers.

The C half compiles the headers installed on this machine (linux-libc-dev) and
prints what the compiler says, once for each architecture the hook is built for
(x86_64, and i686 with `gcc -m32`); the Python half must agree on both. Every
struct that archiso_hook.kernel declares with a UAPI name is checked field by field:
each field's offset and size, and the struct's size.
"""

from __future__ import annotations

import ctypes
import importlib
import os
import pkgutil
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

import archiso_hook.kernel
from archiso_hook.boot import lookonly
from archiso_hook.build import bootfiles
from archiso_hook.kernel import dm, loop, syscalls
from archiso_hook.kernel.cstruct import Struct
from archiso_hook.kernel.ioctl import GENERIC, POWERPC_MIPS_SPARC, layout_for
from archiso_hook.live import shutdown


def _declared_structs() -> list[Struct]:
    """Every Struct with a UAPI name in the modules of archiso_hook.kernel."""
    found: dict[int, Struct] = {}
    for module in pkgutil.walk_packages(archiso_hook.kernel.__path__, "archiso_hook.kernel."):
        for value in vars(importlib.import_module(module.name)).values():
            if isinstance(value, Struct) and value.c_name is not None:
                found[id(value)] = value
    return sorted(found.values(), key=lambda s: s.name)


STRUCTS = _declared_structs()


def _struct_lines(declared: Struct) -> str:
    """C that prints the struct's size, and each field's offset and size."""
    c = f"struct {declared.c_name}"
    lines = [f'P("sizeof.{declared.c_name}", sizeof({c}));']
    for field in declared.fields:
        key = f"{declared.c_name}.{field}"
        lines.append(f'P("offsetof.{key}", offsetof({c}, {field}));')
        if declared.field_size(field):  # not a flexible array member: sizeof is an error
            lines.append(f'P("sizeof.{key}", sizeof((({c} *)0)->{field}));')
    return "\n    ".join(lines)


C_PROGRAM = r"""
#include <linux/dm-ioctl.h>
#include <linux/loop.h>
#include <linux/fs.h>
#include <linux/netlink.h>
#include <linux/genetlink.h>
#include <linux/reboot.h>
#include <asm/bootparam.h>
#include <stddef.h>
#include <stdio.h>
#include <sys/syscall.h>
#define P(name, value) printf("%s %lu\n", name, (unsigned long)(value))
int main(void) {
    P("sizeof_pointer", sizeof(void *));
    STRUCTS
    P("SYS_finit_module", SYS_finit_module);
    P("SYS_init_module", SYS_init_module);
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
    P("LOOP_CONFIGURE", LOOP_CONFIGURE);
    P("LOOP_CTL_GET_FREE", LOOP_CTL_GET_FREE);
    P("LOOP_SET_STATUS64", LOOP_SET_STATUS64);
    P("LO_FLAGS_AUTOCLEAR", LO_FLAGS_AUTOCLEAR);
    P("BLKGETSIZE64", BLKGETSIZE64);
    P("BLKROSET", BLKROSET);
    P("BLKROGET", BLKROGET);
#define HDR(field) \
    P("off_hdr_" #field, offsetof(struct boot_params, hdr) + offsetof(struct setup_header, field))
    HDR(setup_sects); HDR(boot_flag); HDR(header); HDR(version); HDR(kernel_version);
    HDR(xloadflags); HDR(cmdline_size);
    P("XLF_KERNEL_64", XLF_KERNEL_64);
    P("XLF_EFI_HANDOVER_32", XLF_EFI_HANDOVER_32);
    P("XLF_EFI_HANDOVER_64", XLF_EFI_HANDOVER_64);
    P("LINUX_REBOOT_CMD_POWER_OFF", LINUX_REBOOT_CMD_POWER_OFF);
    P("LINUX_REBOOT_CMD_RESTART", LINUX_REBOOT_CMD_RESTART);
    P("LINUX_REBOOT_CMD_HALT", LINUX_REBOOT_CMD_HALT);
    P("LINUX_REBOOT_CMD_KEXEC", LINUX_REBOOT_CMD_KEXEC);
    return 0;
}
"""


#: The gcc flags of each architecture the hook is built for (-m32 needs gcc-multilib).
GCC_FLAGS = {"x86_64": "-m64", "i686": "-m32"}


def _arch(h: dict[str, int]) -> str:
    """Which architecture these header values were compiled for."""
    return {8: "x86_64", 4: "i686"}[h["sizeof_pointer"]]


@pytest.fixture(scope="module", params=sorted(GCC_FLAGS))
def kernel_headers(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, int]:
    gcc = shutil.which("gcc")
    if gcc is None or not Path("/usr/include/linux/dm-ioctl.h").exists():
        pytest.fail("gcc and linux-libc-dev are needed (make setup installs them)")
    work = tmp_path_factory.mktemp("abi")
    program = C_PROGRAM.replace("STRUCTS", "\n    ".join(_struct_lines(s) for s in STRUCTS))
    (work / "abi.c").write_text(program)
    flag = GCC_FLAGS[request.param]
    build = subprocess.run(
        [gcc, flag, "-o", str(work / "abi"), str(work / "abi.c")],
        capture_output=True,
        text=True,
        check=False,
    )
    if build.returncode != 0:
        pytest.fail(f"gcc {flag} failed (make setup installs gcc-multilib):\n{build.stderr}")
    # A 32-bit program runs here too: the x86_64 kernel has IA32 emulation.
    out = subprocess.run([str(work / "abi")], check=True, capture_output=True, text=True).stdout
    values = {name: int(value) for name, value in (line.split() for line in out.splitlines())}
    assert _arch(values) == request.param
    return values


@pytest.mark.parametrize("declared", STRUCTS, ids=lambda s: s.name)
def test_every_declared_field_sits_where_the_compiler_puts_it(
    kernel_headers: dict[str, int], declared: Struct
) -> None:
    h = kernel_headers
    for field in declared.fields:
        key = f"{declared.c_name}.{field}"
        assert declared.offset(field) == h[f"offsetof.{key}"], f"offsetof {key}"
        if declared.field_size(field):
            assert declared.field_size(field) == h[f"sizeof.{key}"], f"sizeof {key}"
    last = declared.fields[-1]
    if declared.field_size(last) == 0:
        # A flexible array member: the record ends where it starts. Only the C struct's
        # tail padding differs (dm_name_list: __u64 is 4-byte aligned on i386), and the
        # kernel walks such records by `next` offsets.
        assert declared.size == h[f"offsetof.{declared.c_name}.{last}"]
    else:
        assert declared.size == h[f"sizeof.{declared.c_name}"]


def test_the_structs_the_hook_sends_are_all_checked() -> None:
    names = {s.name for s in STRUCTS}
    assert {"dm_ioctl", "dm_target_spec", "dm_name_list", "loop_info64", "loop_config"} <= names
    assert {"nlmsghdr", "genlmsghdr", "nlattr", "nlmsgerr"} <= names


def test_dm_ioctl_layout_matches_the_headers(kernel_headers: dict[str, int]) -> None:
    h = kernel_headers
    assert dm.DM_IOCTL.size == h["sizeof.dm_ioctl"] == 312
    assert dm.DM_TARGET_SPEC.size == h["sizeof.dm_target_spec"] == 40
    assert dm.DM_NAME_LIST.size == h["offsetof.dm_name_list.name"] == 12
    assert h["sizeof.dm_name_list"] == {"x86_64": 16, "i686": 12}[_arch(h)]
    header = dm.pack_ioctl(
        data_size=0x11223344, name="N", uuid="U", flags=0x55, event_nr=0x66, dev=0x0102030405060708
    )

    def at(field: str) -> int:
        return h[f"offsetof.dm_ioctl.{field}"]

    assert struct.unpack_from("=3I", header, at("version")) == dm.DM_VERSION
    assert struct.unpack_from("=I", header, at("data_size"))[0] == 0x11223344
    assert struct.unpack_from("=I", header, at("data_start"))[0] == h["sizeof.dm_ioctl"]
    assert struct.unpack_from("=I", header, at("flags"))[0] == 0x55
    assert struct.unpack_from("=I", header, at("event_nr"))[0] == 0x66
    assert struct.unpack_from("=Q", header, at("dev"))[0] == 0x0102030405060708
    assert header[at("name") : at("name") + 2] == b"N\0"
    assert header[at("uuid") : at("uuid") + 2] == b"U\0"
    spec = dm.pack_targets([dm.Target(1, 2, "snapshot", "x")])
    next_at = h["offsetof.dm_target_spec.next"]
    type_at = h["offsetof.dm_target_spec.target_type"]
    assert struct.unpack_from("=I", spec, next_at)[0] == 48
    assert spec[type_at : type_at + 9] == b"snapshot\0"


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
        assert dm.request_number(dm.Cmd[name], layout_for(_arch(h))) == h[f"DM_{name}"], name
    assert dm.Flag.BUFFER_FULL == h["DM_BUFFER_FULL_FLAG"]
    assert dm.Flag.STATUS_TABLE == h["DM_STATUS_TABLE_FLAG"]
    assert dm.Flag.DEFERRED_REMOVE == h["DM_DEFERRED_REMOVE"]


def test_loop_layout_and_numbers_match_the_headers(kernel_headers: dict[str, int]) -> None:
    h = kernel_headers
    assert loop.LOOP_INFO64.size == h["sizeof.loop_info64"] == 232
    assert loop.LOOP_CONFIG.size == h["sizeof.loop_config"] == 304
    info = loop.LoopInfo(
        flags=loop.LO_FLAGS_AUTOCLEAR | loop.LO_FLAGS_READ_ONLY, file_name="/run/x.sfs"
    ).pack()
    flags_at = h["offsetof.loop_info64.lo_flags"]
    name_at = h["offsetof.loop_info64.lo_file_name"]
    assert struct.unpack_from("=I", info, flags_at)[0] == 5
    assert info[name_at : name_at + 11] == b"/run/x.sfs\0"
    config = loop.pack_config(7, loop.LoopInfo(file_name="f"), block_size=4096)
    assert struct.unpack_from("=I", config, h["offsetof.loop_config.fd"])[0] == 7
    assert struct.unpack_from("=I", config, h["offsetof.loop_config.block_size"])[0] == 4096
    assert config[h["offsetof.loop_config.info"] + name_at] == ord("f")
    assert loop.LOOP_CONFIG.offset("info.lo_file_name") == h["offsetof.loop_config.info"] + name_at
    assert loop.LOOP_CONFIGURE == h["LOOP_CONFIGURE"]
    assert loop.LOOP_CTL_GET_FREE == h["LOOP_CTL_GET_FREE"]
    assert loop.LOOP_SET_STATUS64 == h["LOOP_SET_STATUS64"]
    assert loop.LO_FLAGS_AUTOCLEAR == h["LO_FLAGS_AUTOCLEAR"]
    # _IOR(0x12, 114, size_t): the pointer size shows in the request number.
    blkgetsize64 = {"x86_64": 0x80081272, "i686": 0x80041272}[_arch(h)]
    assert layout_for(_arch(h)).ior(0x12, 114, h["sizeof_pointer"]) == h["BLKGETSIZE64"]
    assert h["BLKGETSIZE64"] == blkgetsize64


def test_block_read_only_ioctls_match_the_headers(kernel_headers: dict[str, int]) -> None:
    """BLKROGET/BLKROSET, which make a disk read-only while the hook looks into it."""
    h = kernel_headers
    layout = layout_for(_arch(h))
    assert lookonly.blkroset(layout) == h["BLKROSET"] == 0x125D
    assert lookonly.blkroget(layout) == h["BLKROGET"] == 0x125E


def test_bzimage_setup_header_matches_the_headers(kernel_headers: dict[str, int]) -> None:
    """The kernel image's header (asm/bootparam.h), which the builder reads: every field
    bootfiles declares sits where the compiler puts it, and the flags are the kernel's."""
    h = kernel_headers
    for name, _code in bootfiles.SETUP_HEADER_FIELDS:
        if f"off_hdr_{name}" in h:
            assert bootfiles.setup_header_offset(name) == h[f"off_hdr_{name}"], name
    assert (
        bootfiles.SETUP_HEADER_OFFSET + bootfiles.SETUP_HEADER.size == h["off_hdr_cmdline_size"] + 4
    )
    assert bootfiles.XLF_KERNEL_64 == h["XLF_KERNEL_64"]
    assert bootfiles.XLF_EFI_HANDOVER_32 == h["XLF_EFI_HANDOVER_32"]
    assert bootfiles.XLF_EFI_HANDOVER_64 == h["XLF_EFI_HANDOVER_64"]


def test_module_syscall_numbers_match_the_headers(kernel_headers: dict[str, int]) -> None:
    """kmod calls finit_module(2)/init_module(2) by number (glibc has no wrapper); a
    32-bit hook uses i386's numbers even on a 64-bit kernel."""
    h = kernel_headers
    abi = {"x86_64": "x86_64", "i686": "i386"}[_arch(h)]
    finit = syscalls.SYSCALLS["finit_module"][1][abi]
    init = syscalls.SYSCALLS["init_module"][1][abi]
    assert (finit, init) == (h["SYS_finit_module"], h["SYS_init_module"])
    assert (finit, init) == {"x86_64": (313, 175), "i386": (350, 128)}[abi]


def test_reboot_commands_match_the_headers(kernel_headers: dict[str, int]) -> None:
    """The shutdown, as PID 1, ends the machine's life with reboot(2) and these."""
    h = kernel_headers
    assert shutdown.REBOOT == {
        "poweroff": h["LINUX_REBOOT_CMD_POWER_OFF"],
        "reboot": h["LINUX_REBOOT_CMD_RESTART"],
        "halt": h["LINUX_REBOOT_CMD_HALT"],
        "kexec": h["LINUX_REBOOT_CMD_KEXEC"],
    }


@pytest.mark.parametrize(
    ("machine", "pointer_size", "abi"),
    [("x86_64", 8, "x86_64"), ("x86_64", 4, "i386"), ("i686", 4, "i386")],
)
def test_module_syscall_abi_is_the_process_one(
    monkeypatch: pytest.MonkeyPatch, machine: str, pointer_size: int, abi: str
) -> None:
    """`uname -m` names the kernel: an i686 hook on an x86_64 kernel still uses i386's."""
    uname = os.uname_result(("Linux", "lab", "6.1.0", "#1", machine))
    monkeypatch.setattr(os, "uname", lambda: uname)
    monkeypatch.setattr(ctypes, "sizeof", lambda _type: pointer_size)
    assert syscalls.process_abi() == abi


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
