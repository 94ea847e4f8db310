"""archiso_hook.kernel.kmod against kmod itself: depmod's text files say what the binary indexes
hold, and modprobe (-R, --show-depends) what a name resolves to and in which order.

A small index set of a real kernel is checked in (tests/unit/data/kmod/README.md); the
whole Debian kernel of the lab is fetched once (vm.kernel) for the exhaustive checks.
Nothing here loads a module into the host's kernel: loading goes to fakes.
"""

from __future__ import annotations

import ctypes
import errno
import gzip
import lzma
import os
import re
import shutil
import subprocess
import tempfile
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path

import attrs
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from archiso_hook.boot.modules import cmdline_module_options, default_index
from archiso_hook.errors import HookError
from archiso_hook.kernel.kmod import (
    MODULE_INIT_COMPRESSED_FILE,
    BinaryIndex,
    LiveKernel,
    Module,
    ModuleIndex,
    Softdep,
    Syscalls,
    compression_of,
    fnmatch,
    modname,
    normalize_alias,
    parse_softdeps,
)
from vm.kernel import fetch_kernel

RELEASE = "6.1.0-56-amd64"
FIXTURE = Path(__file__).parent / "data" / "kmod" / RELEASE
INDEXES = (
    "modules.dep.bin",
    "modules.alias.bin",
    "modules.symbols.bin",
    "modules.builtin.bin",
    "modules.builtin.alias.bin",
)


@attrs.define
class FakeKernel:
    """A kernel that records insertions; `refuse` maps module names to an errno."""

    loaded: set[str] = attrs.field(factory=set)
    refuse: dict[str, int] = attrs.field(factory=dict)
    inserted: list[str] = attrs.field(factory=list)

    def release(self) -> str:
        return RELEASE

    def is_loaded(self, name: str) -> bool:
        return name in self.loaded

    def insert(self, module: Module) -> bool:
        if module.name in self.refuse:
            code = self.refuse[module.name]
            raise OSError(code, os.strerror(code))
        self.inserted.append(module.name)
        self.loaded.add(module.name)
        return True


def fixture_index(kernel: FakeKernel | None = None) -> ModuleIndex:
    return ModuleIndex(FIXTURE, kernel=kernel or FakeKernel())


# --- what depmod's text files say --------------------------------------------------------


def text_entries(root: Path, index: str) -> Counter[tuple[str, str]]:
    """The (key, value) pairs depmod wrote to the text twin of a binary index."""
    entries: Counter[tuple[str, str]] = Counter()
    if index == "modules.dep.bin":
        for line in (root / "modules.dep").read_text().splitlines():
            entries[modname(line.partition(":")[0]), line] += 1
    elif index in {"modules.alias.bin", "modules.symbols.bin"}:
        for line in (root / index.removesuffix(".bin")).read_text().splitlines():
            if not line.startswith("#"):
                _, pattern, module = line.split()
                entries[normalize_alias(pattern), module] += 1
    elif index == "modules.builtin.bin":
        for line in (root / "modules.builtin").read_text().split():
            entries[modname(line), ""] += 1
    else:  # modules.builtin.alias.bin comes from the kernel's modules.builtin.modinfo
        for field in (root / "modules.builtin.modinfo").read_bytes().split(b"\0"):
            module, sep, alias = field.decode().partition(".alias=")
            if sep:
                entries[normalize_alias(alias), module] += 1
    return entries


def alias_patterns(root: Path) -> list[tuple[str, str]]:
    """(pattern, module) of every line of modules.alias, as written."""
    return [
        (line.split()[1], line.split()[2])
        for line in (root / "modules.alias").read_text().splitlines()
        if not line.startswith("#")
    ]


def example_of(pattern: str) -> str:
    """A name that the alias pattern matches: `*` empty, `?` and `[...]` one character."""
    return re.sub(r"\*|\?|\[!?(.)[^]]*\]", lambda m: m[1] or ("" if m[0] == "*" else "Z"), pattern)


def probe_lines(index: ModuleIndex, name: str) -> list[str]:
    """What `modprobe --show-depends NAME` prints, from our lookup and probe lists."""
    return [
        f"builtin {step.module.name}" if step.module.path is None else f"insmod {step.module.path} "
        for top in index.lookup(name)
        for step in index.probe_list(top)
    ]


# --- fnmatch -------------------------------------------------------------------------------

_libc = ctypes.CDLL(None)
_libc.fnmatch.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_int]


def libc_fnmatch(pattern: str, name: str) -> bool:
    return bool(_libc.fnmatch(pattern.encode(), name.encode(), 0) == 0)


# Well-formed patterns only: for malformed ones (an unclosed `[`, an unknown class after a
# matching item, a range after a class) glibc's answer depends on the name it scans.
_bracket_char = st.sampled_from("ab!^Z1")
_bracket_item = (
    _bracket_char
    | st.builds("{}-{}".format, _bracket_char | st.just("\\-"), _bracket_char | st.just("\\]"))
    | st.sampled_from(["[:digit:]", "[:alpha:]", "[.a.]", "[=b=]", "[.-.]-b", "\\]", "\\\\", "["])
)
_bracket = st.builds(
    lambda negate, first, items: f"[{negate}{first}{''.join(items)}]",
    st.sampled_from(["", "!", "^"]),
    st.sampled_from(["", "]", "-"]),
    st.lists(_bracket_item, min_size=1, max_size=3),
)
_patterns = st.lists(
    st.sampled_from("ab:!^Z1.=-]*?") | _bracket | st.sampled_from(["\\*", "\\[", "\\\\", "\\a"]),
    max_size=6,
).map("".join)


@given(_patterns, st.text("ab-:!^Z1[]\\*?_.=5", max_size=6))
@example("usb:v13FDp3940d0[0-2]*dc*", "usb:v13FDp3940d0100dc00")
@example("[a-]b", "-b")
@example("[]a]", "]")
@example("[!]a]", "b")
@example("a\\", "a\\")
@example("[b-a]", "a")
@example("[[:nope:]]", "a")
@example("*a*?b", "xaxyb")
def test_fnmatch_agrees_with_libc(pattern: str, name: str) -> None:
    assert fnmatch(pattern, name) == libc_fnmatch(pattern, name)


# --- the index format on the checked-in indexes -------------------------------------------


@pytest.mark.parametrize("index", INDEXES)
def test_every_entry_matches_depmods_text(index: str) -> None:
    assert Counter(BinaryIndex.read(FIXTURE / index).items()) == text_entries(FIXTURE, index)


def test_search_finds_every_key_and_nothing_else() -> None:
    for index in INDEXES:
        binary = BinaryIndex.read(FIXTURE / index)
        entries: dict[str, str] = {}
        for key, value in binary.items():
            entries.setdefault(key, value)  # the first value of a repeated key
        for key, value in entries.items():
            assert binary.search(key) == value
            assert binary.search(key + "x") == entries.get(key + "x")
            assert binary.search(key[:-1]) == entries.get(key[:-1])
    assert BinaryIndex.read(FIXTURE / "modules.dep.bin").search("") is None


def test_wildcard_search_equals_fnmatch_over_every_pattern() -> None:
    patterns = [(normalize_alias(p), m) for p, m in alias_patterns(FIXTURE)]
    binary = BinaryIndex.read(FIXTURE / "modules.alias.bin")
    queries = {normalize_alias(example_of(p)) for p, _ in alias_patterns(FIXTURE)}
    queries |= {q[:-1] for q in queries} | {q + "0" for q in queries}
    matched = 0
    for query in sorted(queries):
        expected = Counter(m for p, m in patterns if libc_fnmatch(p, query))
        assert Counter(binary.search_wild(query)) == expected, query
        matched += bool(expected)
    assert matched > 300


def test_wildcard_search_orders_by_priority_and_keeps_repeats() -> None:
    # modprobe -R on the tree the fixture comes from: two patterns of each module match.
    query = "usb:v13FDp3940d0100dc00dsc00dp00ic08isc06ip50in00"
    binary = BinaryIndex.read(FIXTURE / "modules.alias.bin")
    assert binary.search_wild(query) == ["uas", "uas", "usb_storage", "usb_storage"]


def test_corrupt_indexes_are_hook_errors() -> None:
    good = (FIXTURE / "modules.dep.bin").read_bytes()
    for data, what in [
        (b"\xb0\x07", "shorter than its header"),
        (b"\xb0\x07\xfa\x57" + good[4:], "bad magic 0xb007fa57"),
        (good[:4] + b"\x00\x01\x00\x01" + good[8:], "unsupported version 0x00010001"),
    ]:
        with pytest.raises(HookError, match=what):
            BinaryIndex(data, "modules.dep.bin")
    with pytest.raises(HookError, match=r"corrupt kernel module index x: truncated node"):
        BinaryIndex(good[: len(good) // 2], "x").search("loop")


# --- names ----------------------------------------------------------------------------------


def test_names_are_normalized_like_kmod() -> None:
    assert modname("kernel/drivers/md/dm-snapshot.ko.zst") == "dm_snapshot"
    assert normalize_alias("fs-iso9660") == "fs_iso9660"
    assert normalize_alias("usb:v1645p0007d01[0-2]*x-y") == "usb:v1645p0007d01[0-2]*x_y"
    with pytest.raises(HookError, match=r"invalid kernel module name 'a\]': unbalanced"):
        normalize_alias("a]")
    with pytest.raises(HookError, match="unbalanced"):
        normalize_alias("a[b-c")


def test_softdeps_parse_like_libkmod() -> None:
    text = (
        "# comment\n"
        "softdep cifs gcm\n"  # depmod copies MODULE_SOFTDEP("gcm") verbatim: no list
        "softdep ext4 pre: crypto-crc32c post: a b\\\n c\n"
        "softdep bad] pre: x\n"
        "options loop max_part=8\n"
    )
    assert parse_softdeps(text) == [
        Softdep("cifs", (), ()),
        Softdep("ext4", ("crypto-crc32c",), ("a", "b", "c")),
    ]


# --- lookup and load order on the checked-in indexes ------------------------------------------


@pytest.mark.parametrize(
    ("name", "modules"),
    [
        ("dm-snapshot", ["dm_snapshot"]),
        ("dm_snapshot", ["dm_snapshot"]),
        ("dm-snapshot.ko.zst", ["dm_snapshot"]),
        ("fs-iso9660", ["isofs"]),
        ("fs-ext4", ["ext4"]),
        ("devname:loop-control", ["loop"]),
        ("devname:mapper/control", ["dm_mod"]),
        ("crypto-crc32c", ["crc32c_intel", "crc32c_generic"]),
        ("symbol:jbd2_journal_start", ["jbd2"]),
        ("sha256_generic", ["sha256_generic"]),  # built in, by name
        ("sha256", ["sha256_generic"]),  # built in, by alias
        ("fs-debugfs", ["debugfs"]),  # built in, known by alias only
    ],
)
def test_lookup(name: str, modules: list[str]) -> None:
    assert fixture_index().lookup(name) == modules


# From `modprobe -C /empty -d ROOT -S 6.1.0-56-amd64 --show-depends NAME` on the tree
# the fixture was made from.
SHOW_DEPENDS = {
    "dm-snapshot": ["drivers/md/dm-mod", "drivers/md/dm-bufio", "drivers/md/dm-snapshot"],
    "ext4": [
        "arch/x86/crypto/crc32c-intel",
        "crypto/crc32c_generic",
        "fs/jbd2/jbd2",
        "fs/mbcache",
        "lib/crc16",
        "fs/ext4/ext4",
    ],
    "fs-iso9660": ["drivers/cdrom/cdrom", "fs/isofs/isofs"],
    "squashfs": ["fs/squashfs/squashfs"],
    "loop": ["drivers/block/loop"],
    "virtio_blk": [
        "drivers/virtio/virtio_ring",
        "drivers/virtio/virtio",
        "drivers/block/virtio_blk",
    ],
    "fs-vfat": ["fs/fat/fat", "fs/fat/vfat"],
    "uas": [
        "drivers/usb/common/usb-common",
        "drivers/usb/core/usbcore",
        "drivers/scsi/scsi_common",
        "drivers/scsi/scsi_mod",
        "drivers/usb/storage/usb-storage",
        "drivers/usb/storage/uas",
    ],
    "aes": ["builtin aes_generic"],
    "fs-debugfs": ["builtin debugfs"],
}


@pytest.mark.parametrize(("name", "expected"), SHOW_DEPENDS.items())
def test_probe_list_is_modprobes(name: str, expected: list[str]) -> None:
    lines = [
        line if line.startswith("builtin ") else f"insmod {FIXTURE}/kernel/{line}.ko "
        for line in expected
    ]
    assert probe_lines(fixture_index(), name) == lines


def test_softdeps_pre_and_post_with_their_own_dependencies(tmp_path: Path) -> None:
    # modprobe --show-depends loop / dm-bufio with this modules.softdep: only the first
    # line matching a module counts; unknown names are skipped.
    shutil.copytree(FIXTURE, tmp_path, dirs_exist_ok=True)
    (tmp_path / "modules.softdep").write_text(
        "softdep loop pre: dm-snapshot post: fs-iso9660 nonexistent\n"
        "softdep loop pre: squashfs\n"
        "softdep dm_b* pre: fs-vfat aes\n"
    )
    index = ModuleIndex(tmp_path, kernel=FakeKernel())
    lines = [
        "drivers/md/dm-mod",
        "fs/fat/fat",
        "fs/fat/vfat",
        "builtin aes_generic",
        "drivers/md/dm-bufio",
        "drivers/md/dm-snapshot",
        "drivers/block/loop",
        "drivers/cdrom/cdrom",
        "fs/isofs/isofs",
    ]
    expected = [
        x if x.startswith("builtin") else f"insmod {tmp_path}/kernel/{x}.ko " for x in lines
    ]
    assert probe_lines(index, "loop") == expected
    assert probe_lines(index, "dm-bufio") == expected[:5]
    assert [step.module.name for step in index.probe_list("loop") if step.required] == ["loop"]


def test_softdeps_are_not_required_but_dependencies_are() -> None:
    index = fixture_index()
    steps = {step.module.name: step.required for step in index.probe_list("ext4")}
    assert steps == {
        "crc32c_intel": False,
        "crc32c_generic": False,
        "jbd2": True,
        "mbcache": True,
        "crc16": True,
        "ext4": True,
    }


def test_resolve_leaves_out_builtins_and_repeats() -> None:
    index = fixture_index()
    assert index.resolve("dm-snapshot") == ["dm_mod", "dm_bufio", "dm_snapshot"]
    assert index.resolve("aes") == []
    assert index.resolve("usb:v13FDp3940d0100dc00dsc00dp00ic08isc06ip50in00") == [
        "usb_common",
        "usbcore",
        "scsi_common",
        "scsi_mod",
        "usb_storage",
        "uas",
    ]


def test_unknown_module_is_a_hook_error_naming_it() -> None:
    with pytest.raises(HookError) as caught:
        fixture_index().resolve("btrfs")
    assert str(caught.value) == (
        f"kernel module 'btrfs' is not in the initramfs ({FIXTURE}); add it to the image"
        " (e.g. MODULES=(btrfs) in mkinitcpio.conf)"
    )


def test_missing_module_directory_names_the_running_kernel(tmp_path: Path) -> None:
    index = ModuleIndex(tmp_path / "6.6.6-arch1-1", kernel=FakeKernel())
    with pytest.raises(HookError) as caught:
        index.load("loop")
    assert caught.value.message == (
        f"the initramfs has no kernel modules for the running kernel {RELEASE}"
        f" ({tmp_path}/6.6.6-arch1-1 is missing)"
    )


def test_missing_indexes_are_empty(tmp_path: Path) -> None:
    shutil.copy(FIXTURE / "modules.dep.bin", tmp_path)
    index = ModuleIndex(tmp_path, kernel=FakeKernel())
    assert index.resolve("dm-snapshot") == ["dm_mod", "dm_bufio", "dm_snapshot"]
    with pytest.raises(HookError, match="'fs-iso9660' is not in the initramfs"):
        index.resolve("fs-iso9660")


def test_indexes_are_read_lazily_once() -> None:
    index = fixture_index()
    assert index._indexes == {}
    index.resolve("loop")
    dep = index._indexes["modules.dep.bin"]
    assert list(index._indexes) == ["modules.dep.bin"]
    index.resolve("fs-iso9660")
    assert list(index._indexes) == ["modules.dep.bin", "modules.alias.bin"]
    assert index._indexes["modules.dep.bin"] is dep


# --- loading through a fake kernel ----------------------------------------------------------


def test_load_inserts_in_order_and_reports_what_it_inserted() -> None:
    kernel = FakeKernel(loaded={"dm_mod"})
    index = fixture_index(kernel)
    assert index.load("dm-snapshot", "fs-iso9660", "loop", "aes") == [
        "dm_bufio",
        "dm_snapshot",
        "cdrom",
        "isofs",
        "loop",
    ]
    assert index.load("dm-snapshot", "loop", "fs-debugfs") == []
    assert kernel.inserted == ["dm_bufio", "dm_snapshot", "cdrom", "isofs", "loop"]


def test_loaded_module_is_skipped_with_its_dependencies_like_modprobe() -> None:
    kernel = FakeKernel(loaded={"ext4"})
    assert fixture_index(kernel).load("ext4") == []
    assert kernel.inserted == []


def test_load_of_several_matches_inserts_each_once() -> None:
    kernel = FakeKernel()
    index = fixture_index(kernel)
    assert index.load("usb:v13FDp3940d0100dc00dsc00dp00ic08isc06ip50in00") == index.resolve(
        "usb:v13FDp3940d0100dc00dsc00dp00ic08isc06ip50in00"
    )


def test_softdep_failures_are_ignored() -> None:
    kernel = FakeKernel(refuse={"crc32c_intel": errno.ENODEV})
    assert fixture_index(kernel).load("ext4") == [
        "crc32c_generic",
        "jbd2",
        "mbcache",
        "crc16",
        "ext4",
    ]


@pytest.mark.parametrize(
    ("code", "text"),
    [
        (
            errno.ENOEXEC,
            "cannot load kernel module dm_bufio: Invalid module format (the initramfs's"
            f" modules do not match the running kernel {RELEASE})",
        ),
        (
            errno.ENOENT,
            "cannot load kernel module dm_bufio: Unknown symbol in module (the initramfs's"
            f" modules do not match the running kernel {RELEASE}, or a dependency is missing;"
            " see dmesg)",
        ),
        (errno.EBUSY, "cannot load kernel module dm_bufio: Device or resource busy (see dmesg)"),
    ],
)
def test_dependency_failure_is_a_hook_error(code: int, text: str) -> None:
    kernel = FakeKernel(refuse={"dm_bufio": code})
    with pytest.raises(HookError) as caught:
        fixture_index(kernel).load("dm-snapshot")
    assert str(caught.value) == text
    assert kernel.inserted == ["dm_mod"]


# --- the live kernel, with fake syscalls -----------------------------------------------------


@attrs.define
class RecordingSyscalls:
    """finit_module/init_module that record their calls and fail with the given errnos."""

    finit_errno: int | None = None
    init_errno: int | None = None
    calls: list[tuple[str, object]] = attrs.field(factory=list)

    def syscalls(self) -> Syscalls:
        def fail(code: int | None) -> None:
            if code is not None:
                raise OSError(code, os.strerror(code))

        def finit(fd: int, params: bytes, flags: int) -> None:
            self.calls.append(("finit_module", (os.fstat(fd).st_size, params, flags)))
            fail(self.finit_errno)

        def init(image: bytes, params: bytes) -> None:
            self.calls.append(("init_module", (image, params)))
            fail(self.init_errno)

        return Syscalls(finit_module=finit, init_module=init)


ELF = b"\x7fELF\x02\x01\x01" + bytes(100)
COMPRESSORS: dict[str, Callable[[bytes], bytes]] = {
    "gzip": gzip.compress,
    "xz": lambda data: lzma.compress(data, format=lzma.FORMAT_XZ),
    "zstd": lambda data: b"\x28\xb5\x2f\xfd" + data,  # only the magic matters here
}


def module_file(tmp_path: Path, compression: str | None) -> Module:
    data = ELF if compression is None else COMPRESSORS[compression](ELF)
    path = tmp_path / f"dm-mod.ko{'' if compression is None else '.' + compression}"
    path.write_bytes(data)
    return Module("dm_mod", path)


def test_compression_is_told_by_magic() -> None:
    assert compression_of(ELF[:6]) is None
    for name, compress in COMPRESSORS.items():
        assert compression_of(compress(ELF)[:6]) == name


def test_plain_module_goes_to_finit_module(tmp_path: Path) -> None:
    fake = RecordingSyscalls()
    assert LiveKernel(syscalls=fake.syscalls()).insert(module_file(tmp_path, None))
    assert fake.calls == [("finit_module", (len(ELF), b"", 0))]


@pytest.mark.parametrize("compression", ["gzip", "xz", "zstd"])
def test_compressed_module_is_decompressed_by_the_kernel_first(
    tmp_path: Path, compression: str
) -> None:
    fake = RecordingSyscalls()
    module = module_file(tmp_path, compression)
    assert LiveKernel(syscalls=fake.syscalls()).insert(module)
    size = os.stat(module.path).st_size if module.path else 0
    assert fake.calls == [("finit_module", (size, b"", MODULE_INIT_COMPRESSED_FILE))]


@pytest.mark.parametrize("code", [errno.EINVAL, errno.EOPNOTSUPP, errno.ENOSYS])
@pytest.mark.parametrize("compression", ["gzip", "xz"])
def test_python_decompresses_for_kernels_that_cannot(
    tmp_path: Path, compression: str, code: int
) -> None:
    fake = RecordingSyscalls(finit_errno=code)
    assert LiveKernel(syscalls=fake.syscalls()).insert(module_file(tmp_path, compression))
    assert fake.calls[1:] == [("init_module", (ELF, b""))]


def test_zstd_without_kernel_decompression_is_a_hook_error(tmp_path: Path) -> None:
    fake = RecordingSyscalls(finit_errno=errno.EOPNOTSUPP)
    with pytest.raises(HookError, match="cannot load kernel module dm_mod: it is zstd-compressed"):
        LiveKernel(syscalls=fake.syscalls()).insert(module_file(tmp_path, "zstd"))


def test_plain_module_falls_back_to_init_module_only_without_finit_module(
    tmp_path: Path,
) -> None:
    fake = RecordingSyscalls(finit_errno=errno.ENOSYS)
    assert LiveKernel(syscalls=fake.syscalls()).insert(module_file(tmp_path, None))
    assert fake.calls[1:] == [("init_module", (ELF, b""))]
    fake = RecordingSyscalls(finit_errno=errno.EINVAL)
    with pytest.raises(OSError, match="Invalid argument"):
        LiveKernel(syscalls=fake.syscalls()).insert(module_file(tmp_path, None))


def test_already_loaded_is_not_an_error(tmp_path: Path) -> None:
    fake = RecordingSyscalls(finit_errno=errno.EEXIST)
    assert not LiveKernel(syscalls=fake.syscalls()).insert(module_file(tmp_path, None))
    fake = RecordingSyscalls(finit_errno=errno.EOPNOTSUPP, init_errno=errno.EEXIST)
    assert not LiveKernel(syscalls=fake.syscalls()).insert(module_file(tmp_path, "xz"))


def test_missing_module_file_is_a_hook_error(tmp_path: Path) -> None:
    kernel = LiveKernel(syscalls=RecordingSyscalls().syscalls())
    with pytest.raises(HookError, match=r"cannot read kernel module loop: No such file"):
        kernel.insert(Module("loop", tmp_path / "loop.ko"))


def test_live_kernel_errors_reach_the_user_through_load(tmp_path: Path) -> None:
    root = tmp_path / RELEASE
    shutil.copytree(FIXTURE, root)
    (root / "kernel/drivers/block").mkdir(parents=True)
    (root / "kernel/drivers/block/loop.ko").write_bytes(ELF)
    fake = RecordingSyscalls(finit_errno=errno.ENOEXEC)
    kernel = LiveKernel(sysfs=tmp_path / "sys", syscalls=fake.syscalls())
    with pytest.raises(HookError, match="cannot load kernel module loop: Invalid module format"):
        ModuleIndex(root, kernel=kernel).load("devname:loop-control")


def test_sysfs_tells_what_is_loaded(tmp_path: Path) -> None:
    for name, state in [("loop", "live\n"), ("dm_mod", "coming\n"), ("isofs", None)]:
        (tmp_path / name).mkdir()
        if state is not None:
            (tmp_path / name / "initstate").write_text(state)
    kernel = LiveKernel(sysfs=tmp_path)
    assert kernel.is_loaded("loop")
    assert kernel.is_loaded("isofs")  # built in, with parameters
    assert not kernel.is_loaded("dm_mod")  # still loading: finit_module waits for it
    assert not kernel.is_loaded("squashfs")


def test_the_syscalls_are_bound_without_loading_anything() -> None:
    # A bad descriptor: rejected before anything is read. ENOSYS where the kernel has no
    # module support (like this sandbox's), EPERM without CAP_SYS_MODULE.
    with pytest.raises(OSError) as caught:
        Syscalls.from_libc().finit_module(-1, b"", 0)
    assert caught.value.errno in {errno.EBADF, errno.EPERM, errno.ENOSYS}


# --- the whole Debian kernel of the lab, against kmod's own tools -----------------------------


@pytest.fixture(scope="session")
def tree() -> Path:
    """`lib/modules/<version>` of the lab's Debian kernel, depmod already run."""
    return fetch_kernel().moduledir


def modprobe(tree: Path, *args: str) -> list[str]:
    """modprobe on `tree` alone: no modprobe.d of this host, no state of its kernel."""
    sbin = f"{os.environ.get('PATH', '')}:/usr/sbin:/sbin"
    binary = shutil.which("modprobe", path=sbin)
    assert binary is not None, "modprobe (kmod) is needed"
    with tempfile.TemporaryDirectory() as empty:
        root, version = tree.parents[2], tree.name
        argv = [binary, "-C", empty, "-d", str(root), "-S", version, *args]
        done = subprocess.run(argv, capture_output=True, text=True, check=False)
    return done.stdout.splitlines()


def modprobe_each(
    tree: Path, option: str, names: Iterable[str], marker: str, marker_line: str
) -> dict[str, list[str]]:
    """`modprobe OPTION NAME` for many names in a few runs of `modprobe -a`.

    After each name comes `marker`, a module that prints one known line and appears in
    no other output, to cut the output apart.
    """
    names = list(names)
    outputs: dict[str, list[str]] = {}
    for start in range(0, len(names), 2000):
        chunk = names[start : start + 2000]
        lines = modprobe(tree, "-a", option, *(arg for name in chunk for arg in (name, marker)))
        current: list[str] = []
        cut = iter(chunk)
        for line in lines:
            if line == marker_line:
                outputs[next(cut)] = current
                current = []
            else:
                current.append(line)
        assert next(cut, None) is None and not current
    return outputs


def leaf_module(tree: Path) -> tuple[str, str]:
    """A module that no other name leads to: no dependents, aliases, symbols or softdeps.

    Also without dependencies or softdeps of its own: `modprobe --show-depends` prints one
    line for it.
    """
    lines = (tree / "modules.dep").read_text().splitlines()
    used = {dep for line in lines for dep in line.partition(":")[2].split()}
    named = {module for _, module in alias_patterns(tree)}
    named |= {line.split()[-1] for line in (tree / "modules.symbols").read_text().splitlines()}
    softdeps = (tree / "modules.softdep").read_text().replace("-", "_")
    for line in lines:
        path, _, deps = line.partition(":")
        name = modname(path)
        if not deps.strip() and path not in used and name not in named and name not in softdeps:
            return name, path
    raise AssertionError("no leaf module")


@pytest.mark.parametrize("index", INDEXES)
def test_real_tree_every_entry_matches_depmods_text(tree: Path, index: str) -> None:
    expected = text_entries(tree, index)
    assert Counter(BinaryIndex.read(tree / index).items()) == expected
    assert sum(expected.values()) >= {"modules.dep.bin": 4000, "modules.alias.bin": 26000}.get(
        index, 50
    )


def test_real_tree_every_alias_resolves_as_modprobe_does(tree: Path) -> None:
    index = ModuleIndex(tree, kernel=FakeKernel())
    marker, _ = leaf_module(tree)
    queries = sorted({example_of(pattern) for pattern, _ in alias_patterns(tree)})
    queries += [
        f"symbol:{key[7:]}" for key, _ in BinaryIndex.read(tree / "modules.symbols.bin").items()
    ]
    queries += ["fs-iso9660", "fs-ext4", "devname:loop-control", "devname:mapper/control"]
    expected = modprobe_each(tree, "-R", queries, marker, marker)
    assert len(expected) > 35000
    assert {query: index.lookup(query) for query in expected} == expected


def test_real_tree_every_module_loads_in_modprobes_order(tree: Path) -> None:
    index = ModuleIndex(tree, kernel=FakeKernel())
    marker, path = leaf_module(tree)
    names = [
        modname(line.partition(":")[0])
        for line in (tree / "modules.dep").read_text().split("\n")
        if line
    ]
    names += [modname(line) for line in (tree / "modules.builtin").read_text().split()]
    names = [name for name in names if name != marker]
    names += [key for key, _ in BinaryIndex.read(tree / "modules.builtin.alias.bin").items()]
    names += ["fs-iso9660", "fs-ext4", "crypto-crc32c", "devname:loop-control"]
    expected = modprobe_each(tree, "--show-depends", names, marker, f"insmod {tree}/{path} ")
    assert len(expected) == len(set(names)) > 4000
    assert {name: probe_lines(index, name) for name in expected} == expected


@pytest.mark.parametrize(
    "name", ["dm-snapshot", "ext4", "isofs", "squashfs", "loop", "virtio_blk", "cifs", "ksmbd"]
)
def test_real_tree_modules_of_the_hook(tree: Path, name: str) -> None:
    assert probe_lines(ModuleIndex(tree, kernel=FakeKernel()), name) == modprobe(
        tree, "--show-depends", name
    )


def test_the_process_shares_one_index_of_the_running_kernel() -> None:
    index = default_index()
    assert index is default_index()
    assert index.root == f"/usr/lib/modules/{os.uname().release}"
    assert isinstance(index.kernel, LiveKernel)
    # The kernel command line's module parameters reach the loader (kernel/ cannot read
    # them itself: it does not import the command line's parser).
    assert index.kernel.options == cmdline_module_options(Path("/proc/cmdline").read_text())


def test_module_options_from_the_kernel_command_line() -> None:
    options = cmdline_module_options(
        'quiet loop.max_loop=2 dm-mod.use_blk_mq=y usbcore.nousb x.y="a b" root=/dev/sda'
    )
    assert options == {
        "loop": b"max_loop=2",
        "dm_mod": b"use_blk_mq=y",
        "usbcore": b"nousb",
        "x": b'y="a b"',
    }
    assert cmdline_module_options("loop.max_loop=2 loop.max_part=8")["loop"] == (
        b"max_loop=2 max_part=8"
    )
