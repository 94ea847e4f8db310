"""The image builder, checked with the real tools: mksquashfs/unsquashfs, mke2fs/debugfs/
dumpe2fs, xorriso and sha512sum. No root (a non-root build is simulated with setpriv when the
tests run as root) and no QEMU; the trees are small so the whole file runs in seconds.
"""

from __future__ import annotations

import os
import random
import re
import shutil
import subprocess
import tempfile
from collections.abc import Mapping
from pathlib import Path

import attrs
import pytest

from archiso_hook.aitab import ImageType
from archiso_hook.build import builder, extimage, hosttools, images
from archiso_hook.build.builder import BuildResult, build
from archiso_hook.build.context import image_uuid, source_date_epoch
from archiso_hook.build.extimage import ExtStats, ext_stats, fixup_commands, used_inodes
from archiso_hook.build.extsize import (
    BLOCK,
    TreeUsage,
    default_journal_blocks,
    dir_blocks,
    ext_geometry,
    mapping_blocks,
    plan_ext,
    plan_ext_free,
    scan_tree,
)
from archiso_hook.build.hosttools import run_tool
from archiso_hook.errors import HookError, InputError
from archiso_hook.sizes import MiB
from tests.lend import Lent
from tests.unit.fake_boot import write_boot_pair

TOOLS = (
    "mksquashfs",
    "unsquashfs",
    "mke2fs",
    "debugfs",
    "dumpe2fs",
    "e2fsck",
    "xorriso",
    "sha512sum",
)
_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
pytestmark = pytest.mark.skipif(
    any(shutil.which(t, path=_PATH) is None for t in TOOLS),
    reason=f"needs {', '.join(TOOLS)}",
)

EPOCH = 1307000000  # 2011-06-02, the dm-snapshot era


# --------------------------------------------------------------------------- helpers


def _tool(*argv: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        list(argv), capture_output=True, check=True, env={"PATH": _PATH, "LC_ALL": "C", "TZ": "UTC"}
    )


def _tree(root: Path, files: Mapping[str, bytes | str]) -> Path:
    """Files (bytes) and symlinks (str: the target) under `root`."""
    root.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, str):
            path.symlink_to(content)
        else:
            path.write_bytes(content)
    return root


def _random(n: int, seed: int) -> bytes:
    # Deterministic, and incompressible so that sizes mean something.
    return random.Random(seed).randbytes(n)


def _unsquashfs_list(image: Path) -> list[str]:
    out = _tool("unsquashfs", "-lln", str(image)).stdout.decode()
    return [line for line in out.splitlines() if "squashfs-root" in line]


def _sfs_paths(image: Path) -> list[str]:
    out = _tool("unsquashfs", "-l", str(image)).stdout.decode()
    return [line for line in out.splitlines() if line.startswith("squashfs-root")]


def _debugfs(image: Path, request: str) -> bytes:
    return _tool("debugfs", "-R", request, str(image)).stdout


def _dumpe2fs(image: Path) -> ExtStats:
    return ext_stats(_tool("dumpe2fs", "-h", str(image)).stdout.decode())


def _inner_fs(image: Path, name: str, into: Path) -> Path:
    """The filesystem image inside a *.fs.sfs."""
    _tool("unsquashfs", "-d", str(into), str(image))
    return into / f"{name}.fs"


def _iso_files(iso: Path) -> list[str]:
    out = _tool("xorriso", "-indev", str(iso), "-find", "/", "-type", "f").stdout.decode()
    return sorted(line.strip("'") for line in out.splitlines())


def _assert_same_content(image: Path, tree: Path) -> None:
    """Every regular file of `tree` reads back from the ext image with the same bytes."""
    for path in sorted(tree.rglob("*")):
        if path.is_file() and not path.is_symlink():
            rel = "/" + path.relative_to(tree).as_posix()
            quoted = '"' + rel.replace('"', '""') + '"'  # debugfs's quoting
            assert _debugfs(image, f"cat {quoted}") == path.read_bytes(), rel


@attrs.define
class Built:
    result: BuildResult
    log: list[str]
    out: Path


def _build(
    tmp: Path,
    aitab: str,
    *,
    src: Path | None = None,
    out: str = "out",
    epoch: int | None = EPOCH,
    basedir: str = "arch",
    arches: set[str] | None = None,
    iso: Path | None = None,
    label: str | None = None,
) -> Built:
    (tmp / "aitab").write_text(aitab)
    lines: list[str] = []
    with pytest.MonkeyPatch.context() as mp:
        if epoch is None:
            mp.delenv("SOURCE_DATE_EPOCH", raising=False)
        else:
            mp.setenv("SOURCE_DATE_EPOCH", str(epoch))
        result = build(
            tmp / "aitab",
            src or tmp / "src",
            tmp / out,
            basedir=basedir,
            arches=arches,
            iso=iso,
            label=label,
            log=lines.append,
        )
    return Built(result, lines, tmp / out)


# --------------------------------------------------------------------------- a whole medium

MEDIUM_AITAB = """\
# img        mnt           arch    sfs_comp  fs_type  fs_size
root-image   /             x86_64  xz        ext4     50%
lib-modules  /lib/modules  x86_64  none      ext3     12
usr-share    /usr/share    any     gzip      ext2     20%
core-pkgs    /repo/pkg     x86_64  zstd      none     0
"""


def _medium_tree(src: Path) -> Path:
    _tree(
        src / "root-image",
        {
            "etc/os-release": b"NAME=test\n",
            "etc/hostname": b"archiso\n",
            "usr/bin/busybox": _random(3 * MiB + 123, 1),  # > 12 blocks: extents, not inline
            "usr/lib/empty": b"",
            "etc/localtime": "../usr/share/zoneinfo/UTC",
            "etc/long-link": "/usr/" + "x" * 80,  # a slow symlink (a block of its own)
            'with space/and "quote"': b"quoted\n",
        },
    )
    _tree(
        src / "x86_64" / "lib-modules",
        {
            "6.1.0/kernel/loop.ko": _random(5 * 4096 * 300, 2),  # double indirect on ext3
            "6.1.0/modules.dep": b"kernel/loop.ko:\n",
        },
    )
    _tree(src / "usr-share", {f"doc/file{i:03}": _random(i * 100, i) for i in range(60)})
    _tree(src / "core-pkgs", {"core.db": b"db", "pkgs/a-1-x86_64.pkg.tar.zst": _random(999, 3)})
    return src


@pytest.fixture(scope="module")
def medium(tmp_path_factory: pytest.TempPathFactory) -> Built:
    tmp = tmp_path_factory.mktemp("medium")
    _medium_tree(tmp / "src")
    return _build(tmp, MEDIUM_AITAB, iso=tmp / "medium.iso", label="ARCH_201106")


def test_layout_and_result(medium: Built) -> None:
    arch = medium.out / "arch"
    assert (arch / "aitab").read_text() == MEDIUM_AITAB
    expected = [
        ("root-image", "x86_64", ImageType.FS_SFS),
        ("lib-modules", "x86_64", ImageType.FS),
        ("usr-share", "any", ImageType.FS_SFS),
        ("core-pkgs", "x86_64", ImageType.SFS),
    ]
    assert [(i.name, i.arch, i.type) for i in medium.result.images] == expected
    for image in medium.result.images:
        assert image.path == arch / image.arch / f"{image.name}.{image.type}"
        assert image.size == image.path.stat().st_size
        assert image.checksum == image.path.with_name(image.path.name + ".sha512")
    assert medium.result.epoch == EPOCH
    # Nothing left over: no scratch directory, no partial files.
    leftovers = [p for p in medium.out.rglob("*") if p.name.startswith(".")]
    assert leftovers == []
    assert "building root-image.fs.sfs (ext4 in squashfs xz, 50% free) from" in "\n".join(
        medium.log
    )


def test_sfs_lists_the_source_with_fixed_times(medium: Built) -> None:
    image = medium.out / "arch/x86_64/core-pkgs.sfs"
    assert _sfs_paths(image) == [
        "squashfs-root",
        "squashfs-root/core.db",
        "squashfs-root/pkgs",
        "squashfs-root/pkgs/a-1-x86_64.pkg.tar.zst",
    ]
    # -all-time: every entry carries SOURCE_DATE_EPOCH (2011-06-02 07:33 UTC).
    assert all(" 2011-06-02 07:33 squashfs-root" in line for line in _unsquashfs_list(image))
    assert _tool("unsquashfs", "-cat", str(image), "core.db").stdout == b"db"
    assert b"zstd" in _tool("unsquashfs", "-s", str(image)).stdout


def test_fs_sfs_holds_one_filesystem_image(medium: Built, tmp_path: Path) -> None:
    image = medium.out / "arch/x86_64/root-image.fs.sfs"
    assert _sfs_paths(image) == ["squashfs-root", "squashfs-root/root-image.fs"]
    assert b"xz" in _tool("unsquashfs", "-s", str(image)).stdout
    inner = _inner_fs(image, "root-image", tmp_path / "x")
    src = medium.out.parent / "src/root-image"
    _assert_same_content(inner, src)
    assert b'Fast link dest: "../usr/share/zoneinfo/UTC"' in _debugfs(inner, "stat /etc/localtime")
    assert _debugfs(inner, "cat /etc/long-link") != b""  # slow symlink: target in a block


def test_percent_leaves_that_share_free(medium: Built, tmp_path: Path) -> None:
    inner = _inner_fs(medium.out / "arch/x86_64/root-image.fs.sfs", "root-image", tmp_path / "r")
    stats = _dumpe2fs(inner)
    assert stats.free_blocks * 100 >= 50 * stats.blocks
    # ...and not much more: the size is the smallest whole MiB that does it.
    assert stats.free_blocks * 100 < 56 * stats.blocks
    assert inner.stat().st_size % MiB == 0
    usage = scan_tree(medium.out.parent / "src/root-image", "ext4")
    smaller = plan_ext("ext4", usage, inner.stat().st_size // BLOCK - MiB // BLOCK, 50)
    assert smaller is not None and smaller.free * 100 < 50 * smaller.geometry.blocks

    inner = _inner_fs(medium.out / "arch/any/usr-share.fs.sfs", "usr-share", tmp_path / "u")
    stats = _dumpe2fs(inner)
    assert stats.free_blocks * 100 >= 20 * stats.blocks
    _assert_same_content(inner, medium.out.parent / "src/usr-share")
    _tool("e2fsck", "-fn", str(inner))


def test_absolute_size_is_exact(medium: Built) -> None:
    image = medium.out / "arch/x86_64/lib-modules.fs"
    assert image.stat().st_size == 12 * MiB
    stats = _dumpe2fs(image)
    assert stats.blocks == 12 * MiB // BLOCK
    assert b"has_journal" in _tool("dumpe2fs", "-h", str(image)).stdout
    assert b"extent" not in _tool("dumpe2fs", "-h", str(image)).stdout  # ext3
    _assert_same_content(image, medium.out.parent / "src/x86_64/lib-modules")
    stat = _debugfs(image, "stat /6.1.0/kernel/loop.ko").decode()
    assert re.search(rf"mtime: 0x{EPOCH:08x}:", stat) and "BLOCKS:" in stat  # block maps


def test_ext_times_owners_and_root_mode(medium: Built, tmp_path: Path) -> None:
    inner = _inner_fs(medium.out / "arch/x86_64/root-image.fs.sfs", "root-image", tmp_path / "r")
    for path in ("/", "/etc", "/etc/os-release", "/usr/bin/busybox", "/etc/localtime"):
        text = _debugfs(inner, f"stat {path}").decode()
        for field in ("ctime", "atime", "mtime", "crtime"):
            assert re.search(rf"{field}: 0x{EPOCH:08x}:", text), (path, field)
        assert re.search(r"User:\s+0\s+Group:\s+0", text)
    fs_uuid = image_uuid("arch", "x86_64", "root-image", EPOCH)
    assert (
        f"Filesystem UUID:          {fs_uuid}"
        in _tool("dumpe2fs", "-h", str(inner)).stdout.decode()
    )


def test_checksums_verify_with_sha512sum(medium: Built) -> None:
    for image in medium.result.images:
        text = image.checksum.read_text()
        assert re.fullmatch(rf"[0-9a-f]{{128}}  {re.escape(image.path.name)}\n", text)
        subprocess.run(
            ["sha512sum", "--quiet", "-c", image.checksum.name], cwd=image.path.parent, check=True
        )


def test_iso_lists_the_medium_and_carries_the_label(medium: Built) -> None:
    iso = medium.result.iso
    assert iso is not None and iso.exists()
    files = _iso_files(iso)
    assert files == sorted(
        [
            "/arch/aitab",
            *(
                f"/arch/{i.arch}/{i.path.name}{ext}"
                for i in medium.result.images
                for ext in ("", ".sha512")
            ),
        ]
    )
    pvd = _tool("xorriso", "-indev", str(iso), "-pvd_info").stdout.decode()
    assert re.search(r"^Volume Id\s+: ARCH_201106$", pvd, re.MULTILINE)
    assert re.search(r"^Creation Time: 2011060207332000$", pvd, re.MULTILINE)
    # Rock Ridge keeps the names; the images read back whole.
    extracted = iso.parent / "from-iso.sfs"
    _tool(
        "xorriso",
        "-osirrox",
        "on",
        "-indev",
        str(iso),
        "-extract",
        "/arch/x86_64/core-pkgs.sfs",
        str(extracted),
    )
    assert extracted.read_bytes() == (medium.out / "arch/x86_64/core-pkgs.sfs").read_bytes()


def test_reproducible_from_a_copy_of_the_tree(medium: Built, tmp_path: Path) -> None:
    # A copy has other ctimes, atimes and inode numbers; reading it changes atimes again.
    src = tmp_path / "src"
    shutil.copytree(medium.out.parent / "src", src, symlinks=True)
    (src / "root-image/etc/hostname").touch()
    again = _build(tmp_path, MEDIUM_AITAB, src=src, iso=tmp_path / "again.iso", label="ARCH_201106")
    for first, second in zip(medium.result.images, again.result.images, strict=True):
        assert first.path.read_bytes() == second.path.read_bytes(), first.path.name
    assert medium.result.iso is not None and again.result.iso is not None
    assert medium.result.iso.read_bytes() == again.result.iso.read_bytes()


# --------------------------------------------------------------------------- single cases


def test_default_epoch_is_the_newest_input_mtime(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = _tree(tmp_path / "src" / "core", {"a": b"a", "d/b": b"b"})
    (tmp_path / "aitab").write_text("core / any xz none\n")
    for path in (src / "a", src / "d", src, tmp_path / "aitab"):
        os.utime(path, (1000000000, 1000000000))
    os.utime(src / "d/b", (1200000000, 1200000000))
    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)
    lines: list[str] = []
    result = build(tmp_path / "aitab", tmp_path / "src", tmp_path / "out", log=lines.append)
    assert result.epoch == 1200000000
    assert (
        lines[0] == "SOURCE_DATE_EPOCH is not set: using 1200000000, the newest mtime of the inputs"
    )
    assert " 2008-01-10 21:20 squashfs-root" in _unsquashfs_list(result.images[0].path)[0]
    # The aitab is an input too.
    os.utime(tmp_path / "aitab", (1300000000, 1300000000))
    again = build(tmp_path / "aitab", tmp_path / "src", tmp_path / "out2", log=lines.append)
    assert again.epoch == 1300000000


def test_arch_filter_and_arch_specific_sources(tmp_path: Path) -> None:
    aitab = (
        "root-image / x86_64 xz none\nroot-image / i686 xz none\nshare /usr/share any gzip none\n"
    )
    _tree(tmp_path / "src/x86_64/root-image", {"who": b"x86_64"})
    _tree(tmp_path / "src/root-image", {"who": b"generic"})
    _tree(tmp_path / "src/share", {"s": b"s"})

    only = _build(tmp_path, aitab, out="i686", arches={"i686", "any"})
    assert [(i.name, i.arch) for i in only.result.images] == [
        ("root-image", "i686"),
        ("share", "any"),
    ]
    assert not (only.out / "arch/x86_64").exists()
    i686 = only.out / "arch/i686/root-image.sfs"
    assert _tool("unsquashfs", "-cat", str(i686), "who").stdout == b"generic"

    both = _build(tmp_path, aitab, out="all", basedir="live")
    x86_64 = both.out / "live/x86_64/root-image.sfs"
    assert _tool("unsquashfs", "-cat", str(x86_64), "who").stdout == b"x86_64"
    assert len(both.result.images) == 3

    with pytest.raises(InputError, match=r"lists no image for x86_64"):
        _build(tmp_path, "share /usr/share any gzip none\n", out="none", arches={"x86_64"})
    with pytest.raises(InputError, match=r"unknown architecture 'arm'"):
        _build(tmp_path, aitab, out="bad", arches={"arm"})


def test_missing_source_names_the_line_and_both_paths(tmp_path: Path) -> None:
    _tree(tmp_path / "src/root-image", {"a": b"a"})
    aitab = "# comment\nroot-image / x86_64 xz none\nusr-share /usr/share any xz ext4 10%\n"
    with pytest.raises(InputError) as error:
        _build(tmp_path, aitab)
    message = str(error.value)
    assert message.startswith(f"{tmp_path}/aitab:3: no source directory for image usr-share")
    assert f"{tmp_path}/src/any/usr-share" in message
    assert f"{tmp_path}/src/usr-share" in message
    assert not (tmp_path / "out/arch/x86_64/root-image.sfs").exists()  # checked before building


def test_absolute_size_too_small_is_a_clear_error(tmp_path: Path) -> None:
    _tree(tmp_path / "src/root-image", {"big": _random(12 * MiB, 4)})
    with pytest.raises(InputError) as error:
        _build(tmp_path, "\nroot-image / x86_64 none ext4 10\n")
    match = re.fullmatch(
        rf"{tmp_path}/aitab:2: field fs_size: root-image needs at least (\d+) MiB as ext4 "
        r"\(12\.0 MiB of files, about 16\.\d MiB used with metadata\), more than the 10 MiB "
        r"requested; give a larger size or a share of free space such as 10%",
        str(error.value),
    )
    assert match, str(error.value)
    # The minimum it names is right: that size builds, one MiB less does not.
    need = int(match.group(1))
    _build(tmp_path, f"root-image / x86_64 none ext4 {need}\n", out="fits")
    with pytest.raises(InputError, match=f"needs at least {need} MiB"):
        _build(tmp_path, f"root-image / x86_64 none ext4 {need - 1}\n", out="short")


def test_an_estimate_that_is_short_is_corrected(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = _tree(tmp_path / "src/root-image", {f"f{i}": _random(200_000, i) for i in range(30)})
    real = scan_tree

    def blind(root: Path, fs_type: str | None = None) -> TreeUsage:
        return attrs.evolve(real(root, fs_type), blocks=0)

    monkeypatch.setattr(builder, "scan_tree", blind)
    built = _build(tmp_path, "root-image / x86_64 none ext4 40%\n")
    image = built.out / "arch/x86_64/root-image.fs"
    stats = _dumpe2fs(image)
    assert stats.free_blocks * 100 >= 40 * stats.blocks
    assert any("less than 40% free, retrying" in line for line in built.log)
    _assert_same_content(image, src)


def test_keeps_owners_when_root(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to chown the source")
    src = _tree(tmp_path / "src/img", {"mine": b"1", "d/theirs": b"2"})
    os.chown(src / "mine", 1234, 5678)
    os.chown(src / "d", 42, 43)
    os.chown(src, 7, 8)
    built = _build(tmp_path, "img / x86_64 none ext4 50%\nimg / i686 xz none\n")
    ext = built.out / "arch/x86_64/img.fs"
    assert re.search(rb"User:\s+1234\s+Group:\s+5678", _debugfs(ext, "stat /mine"))
    assert re.search(rb"User:\s+42\s+Group:\s+43", _debugfs(ext, "stat /d"))
    assert re.search(rb"User:\s+7\s+Group:\s+8", _debugfs(ext, "stat /"))
    listing = "\n".join(_unsquashfs_list(built.out / "arch/i686/img.sfs"))
    assert "1234/5678" in listing and "42/43" in listing


_NON_ROOT_SCRIPT = """
import sys
from pathlib import Path
from archiso_hook.build.builder import BootOptions, build
top = Path(sys.argv[1])
files = {a: (top / f"k/vmlinuz-{a}", top / f"k/initramfs-{a}.img") for a in ("x86_64", "i686")}
build(top / "aitab", top / "src", top / "out", iso=top / "live.iso", label="NONROOT",
      boot=BootOptions(files=files), log=lambda _: None)
"""


def test_non_root_builds_are_root_owned_and_bootable(tmp_path: Path, lent_checkout: Lent) -> None:
    # As root, drop to nobody for the build; the tree must be readable and out writable.
    with tempfile.TemporaryDirectory(prefix="builder-nonroot-") as top_name:
        top = Path(top_name)
        _tree(top / "src/img", {"f": b"f", "d/g": b"g"})
        (top / "src/img").chmod(0o1777)
        (top / "aitab").write_text("img / x86_64 none ext4 50%\nimg / i686 gzip none\n")
        for arch in ("x86_64", "i686"):  # a bootable ISO too: loaders, EFI partition
            write_boot_pair(top / "k", arch)
        # The lent copy: the checkout itself may be where uid 65534 cannot enter.
        argv = [str(lent_checkout.python), "-c", _NON_ROOT_SCRIPT, str(top)]
        env = {
            "PATH": _PATH,
            "SOURCE_DATE_EPOCH": str(EPOCH),
            "PYTHONPATH": str(lent_checkout.sources),
            "PYTHONDONTWRITEBYTECODE": "1",
        }
        if os.geteuid() == 0:
            if shutil.which("setpriv") is None:
                pytest.skip("needs setpriv to drop root")
            for path in [top, *top.rglob("*")]:
                os.chown(path, 65534, 65534, follow_symlinks=False)
            top.chmod(0o755)
            argv = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *argv]
        subprocess.run(argv, check=True, env=env, cwd=top)

        ext = top / "out/arch/x86_64/img.fs"
        for inside in ("/", "/f", "/d", "/d/g"):
            stat = _debugfs(ext, f"stat {inside}")
            assert re.search(rb"User:\s+0\s+Group:\s+0", stat), inside
        assert b"Mode:  01777" in _debugfs(ext, "stat /")  # the source root's mode
        for line in _unsquashfs_list(top / "out/arch/i686/img.sfs"):
            assert " 0/0 " in line, line
        report = _tool("xorriso", "-indev", str(top / "live.iso"), "-report_el_torito", "plain")
        assert b"El Torito boot img" in report.stdout


def test_iso_needs_a_valid_label(tmp_path: Path) -> None:
    _tree(tmp_path / "src/img", {"a": b"a"})
    aitab = "img / any xz none\n"
    with pytest.raises(InputError, match="an ISO needs a volume label"):
        _build(tmp_path, aitab, iso=tmp_path / "x.iso")
    with pytest.raises(InputError, match="has 33 characters: ISO 9660 allows at most 32"):
        _build(tmp_path, aitab, iso=tmp_path / "x.iso", label="A" * 33)
    with pytest.raises(InputError, match="printable ASCII"):
        _build(tmp_path, aitab, iso=tmp_path / "x.iso", label="ARCH\n")
    with pytest.raises(InputError, match="cannot be inside"):
        _build(tmp_path, aitab, iso=tmp_path / "out/x.iso", label="ARCH")
    built = _build(tmp_path, aitab, iso=tmp_path / "x.iso", label="A" * 32)
    assert built.result.iso == tmp_path / "x.iso"


def test_filesystems_this_host_cannot_make(tmp_path: Path) -> None:
    _tree(tmp_path / "src/img", {"a": b"a"})
    with pytest.raises(InputError, match=r"aitab:1: cannot make xfs images on this host"):
        _build(tmp_path, "img / any xz xfs 50%\n")
    if shutil.which("mkfs.btrfs", path=hosttools.search_path()) is None:
        with pytest.raises(
            InputError,
            match=r"aitab:1: cannot make btrfs images on this host: "
            r"needs mkfs.btrfs with --rootdir",
        ):
            _build(tmp_path, "img / any none btrfs 50%\n")


def test_btrfs_when_mkfs_btrfs_has_rootdir(tmp_path: Path) -> None:
    # Not reproducible and not on every host: only checked where btrfs-progs is installed.
    if shutil.which("mkfs.btrfs", path=hosttools.search_path()) is None:
        pytest.skip("needs mkfs.btrfs (btrfs-progs)")
    _tree(tmp_path / "src/img", {"a": _random(300_000, 5), "d/b": b"b"})
    built = _build(tmp_path, "img / x86_64 none btrfs 40%\n")
    image = built.out / "arch/x86_64/img.fs"
    dump = run_tool(["btrfs", "inspect-internal", "dump-super", str(image)], lambda _: None)
    total, used = (images._dump_super_field(dump.stdout, k) for k in ("total_bytes", "bytes_used"))
    assert (total - used) * 100 >= 40 * total
    with pytest.raises(InputError, match=r"aitab:1: field fs_size: img needs .* as btrfs"):
        _build(tmp_path, "img / x86_64 none btrfs 1\n", out="small")


def test_any_file_name_goes_into_an_ext_image(tmp_path: Path) -> None:
    # The fixups address inodes by number, so no name needs quoting for debugfs.
    names = {"new\nline": b"1", 'quote"d': b"2", "<12>": b"3", "sp ace/x": b"4", "\\": b"5"}
    _tree(tmp_path / "src/img", names)
    built = _build(tmp_path, "img / any none ext4 50%\n")
    image = built.out / "arch/any/img.fs"
    listing = _debugfs(image, "ls -p /")
    for name in ("new\nline", 'quote"d', "<12>", "sp ace", "\\"):
        assert f"/{name}/".encode() in listing, name
    for ino in range(12, 12 + 6):
        assert re.search(rf"mtime: 0x{EPOCH:08x}:".encode(), _debugfs(image, f"stat <{ino}>"))


def test_bad_source_date_epoch(tmp_path: Path) -> None:
    _tree(tmp_path / "src/img", {"a": b"a"})
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SOURCE_DATE_EPOCH", "yesterday")
        with pytest.raises(InputError, match=r"SOURCE_DATE_EPOCH=yesterday is not valid"):
            build(tmp_path / "aitab", tmp_path / "src", tmp_path / "out")
    assert source_date_epoch({}) is None
    assert source_date_epoch({"SOURCE_DATE_EPOCH": ""}) is None
    assert source_date_epoch({"SOURCE_DATE_EPOCH": "1"}) == 1
    with pytest.raises(InputError):
        source_date_epoch({"SOURCE_DATE_EPOCH": "0"})
    with pytest.raises(InputError):
        source_date_epoch({"SOURCE_DATE_EPOCH": str(2**32)})


def test_bad_basedir_and_unreadable_aitab(tmp_path: Path) -> None:
    for basedir in ("", "/arch", "a/../b", "a//b"):
        with pytest.raises(InputError, match="basedir"):
            build(tmp_path / "aitab", tmp_path, tmp_path / "out", basedir=basedir)
    with pytest.raises(InputError, match=r"cannot read the aitab .*aitab: No such file"):
        build(tmp_path / "aitab", tmp_path, tmp_path / "out")
    (tmp_path / "aitab").write_text("img / any xz\n")
    with pytest.raises(InputError, match=r"aitab:1: missing field\(s\) fs_type"):
        build(tmp_path / "aitab", tmp_path, tmp_path / "out")


# --------------------------------------------------------------------------- the tool helper


def test_run_tool_logs_and_uses_a_minimal_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "5")
    monkeypatch.setenv("LANG", "de_DE.UTF-8")
    lines: list[str] = []
    proc = run_tool(["env"], lines.append, env={"EXTRA": "a b"})
    assert lines == ["$ 'EXTRA=a b' env"]
    assert sorted(proc.stdout.splitlines()) == [
        "EXTRA=a b",
        "LC_ALL=C",
        "MTOOLSRC=/dev/null",
        f"PATH={_PATH}",
        "TZ=UTC",
    ]
    assert run_tool(["true"], lines.append, stdout=False).stdout == ""


def test_run_tool_failure_names_tool_status_and_stderr() -> None:
    script = "echo one >&2; echo two >&2; echo; echo three >&2; echo four >&2; exit 3"
    with pytest.raises(HookError) as error:
        run_tool(["sh", "-c", script], lambda _: None)
    assert str(error.value) == "sh failed with exit status 3: two / three / four"
    proc = run_tool(["sh", "-c", "exit 4"], lambda _: None, check=False)
    assert proc.returncode == 4
    with pytest.raises(HookError, match=r"sh failed with signal 9: no error output"):
        run_tool(["sh", "-c", "kill -9 $$"], lambda _: None)


def test_run_tool_missing_tool_names_the_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(hosttools.TOOL_PACKAGES, "mkfs.nothing", ("nothing-progs", "nothing"))
    with pytest.raises(HookError) as error:
        run_tool(["mkfs.nothing", "x"], lambda _: None)
    assert str(error.value) == (
        "mkfs.nothing is not installed (install the Debian package nothing-progs (Arch: nothing))"
    )


# --------------------------------------------------------------------------- sizing arithmetic


def test_journal_sizes_follow_libext2fs() -> None:
    assert default_journal_blocks(2048) == 1024
    assert default_journal_blocks(32767) == 1024
    assert default_journal_blocks(32768) == 4096
    assert default_journal_blocks(1 << 20) == 16384  # 4 GiB: 64 MiB
    assert default_journal_blocks(1 << 30) == 262144


def test_mapping_blocks() -> None:
    # ext2/3: 12 direct blocks, then single, double and triple indirect blocks.
    assert [mapping_blocks(n, extents=False) for n in (0, 12, 13, 1036)] == [0, 0, 1, 1]
    assert mapping_blocks(1037, extents=False) == 1 + 2
    assert mapping_blocks(12 + 1024 + 1024 * 1024, extents=False) == 1 + 1 + 1024
    assert mapping_blocks(12 + 1024 + 1024 * 1024 + 1, extents=False) == 1 + 1025 + 3
    # ext4: 4 extents in the inode; a leaf holds 340.
    assert mapping_blocks(2 * 32768, extents=True) == 0
    assert mapping_blocks(2 * 32768 + 1, extents=True) == 1
    assert mapping_blocks(4, extents=True, fragmented=True) == 0
    assert mapping_blocks(341, extents=True, fragmented=True) == 2


def test_dir_blocks() -> None:
    assert dir_blocks([], csum=True) == 1
    # 4096 - 12 (tail) - 24 (. and ..) = 4060 bytes: 338 12-byte entries, then a new block.
    assert dir_blocks([4] * 338, csum=True) == 1
    assert dir_blocks([4] * 339, csum=True) == 2
    assert dir_blocks([4] * 339, csum=False) == 1
    # First fit: 15 entries of 260 bytes leave 160 bytes of the first block, the 16th opens a
    # second (4084 bytes without . and ..), 14 more leave 184 there; 13 + 15 short names then
    # fill the two gaps before a third block is needed.
    assert dir_blocks([252] * 30 + [4] * 28, csum=True) == 2
    assert dir_blocks([252] * 30 + [4] * 29, csum=True) == 3


def test_used_inodes_reads_the_bitmaps_of_dumpe2fs() -> None:
    text = """\
Inodes per group:         16
Group 0: (Blocks 0-32767) csum 0xf984 [ITABLE_ZEROED]
  Free inodes: 14-15
Group 1: (Blocks 32768-65535) csum 0xcdaf [INODE_UNINIT, ITABLE_ZEROED]
  Free inodes: 17, 19-32
Group 2: (Blocks 65536-76799) csum 0xde02
  Free inodes: \n"""
    assert used_inodes(text) == [*range(1, 14), 16, 18, *range(33, 49)]


def test_fixup_commands() -> None:
    assert list(fixup_commands([1, 2, 8, 11, 12], 7, root_owned=False, root_mode=0o41777)) == [
        "sif <2> mode 041777\n",
        *(f"sif <{i}> {f} @7\n" for i in (2, 11, 12) for f in ("atime", "mtime", "ctime")),
    ]
    owned = "".join(fixup_commands([12], 7, root_owned=True, root_mode=0o40755))
    assert owned.endswith("sif <12> uid 0\nsif <12> gid 0\n")


@pytest.mark.parametrize("fs_type", ["ext2", "ext3", "ext4"])
def test_geometry_matches_mke2fs(fs_type: str, tmp_path: Path) -> None:
    # Empty filesystems, sizes chosen to hit: one group, a dropped last group, many groups.
    empty = TreeUsage(inodes=0, blocks=1, bytes=0, newest_mtime=0)  # the root directory
    conf = tmp_path / "mke2fs.conf"
    conf.write_text(extimage._MKE2FS_CONF)
    for blocks in (2304, 32768 + 200, 65536 + 256, 300000):
        plan = plan_ext(fs_type, empty, blocks)
        assert plan is not None
        image = tmp_path / "fs.img"
        image.write_bytes(b"")
        argv = [
            "mke2fs",
            "-F",
            "-q",
            "-b",
            str(BLOCK),
            "-t",
            fs_type,
            "-T",
            "default",
            "-N",
            str(plan.inodes),
            "-m",
            "0",
            str(image),
            str(blocks),
        ]
        if plan.journal:
            argv[1:1] = ["-J", f"size={plan.journal * BLOCK // MiB}"]
        subprocess.run(
            argv, check=True, capture_output=True, env={"PATH": _PATH, "MKE2FS_CONFIG": str(conf)}
        )
        stats = _dumpe2fs(image)
        assert (stats.blocks, stats.inodes, stats.used) == (
            plan.geometry.blocks,
            plan.geometry.inodes,
            plan.used,
        ), blocks


def test_geometry_refuses_what_mke2fs_refuses() -> None:
    assert ext_geometry("ext4", 2048, 512, 1024) is None  # journal over half the space
    assert ext_geometry("ext2", 2048, 512, 0) is not None
    assert ext_geometry("ext2", 20, 5000, 0) is None  # tables larger than the group
    assert ext_geometry("ext4", 32768, 40000, 1024) is None  # more inodes than a bitmap holds


@pytest.mark.parametrize("percent", [1, 10, 50, 90, 99])
def test_plan_ext_free_is_the_smallest_whole_mib(percent: int) -> None:
    usage = TreeUsage(inodes=3000, blocks=50000, bytes=0, newest_mtime=0)
    plan = plan_ext_free("ext4", usage, percent)
    assert plan.blocks % 256 == 0
    assert plan.free * 100 >= percent * plan.geometry.blocks
    smaller = plan_ext("ext4", usage, plan.blocks - 256, percent)
    assert smaller is None or smaller.free * 100 < percent * smaller.geometry.blocks
    assert plan.geometry.inodes * (100 - percent) >= (11 + 3000) * 100


def test_scan_tree(tmp_path: Path) -> None:
    root = _tree(tmp_path / "t", {"a": b"x" * 5000, "d/b": b"", "l": "short", "L": "x" * 60})
    os.link(root / "a", root / "d/hard")
    os.mkfifo(root / "fifo")
    os.utime(root / "d/b", (2000000000, 2000000000))
    usage = scan_tree(root, "ext4")
    # a (once), d, d/b, l, L, fifo
    assert usage.inodes == 6
    # a: 2 blocks; L: a block for its 60-byte target; the root and d: one block each.
    assert usage.blocks == 2 + 1 + 1 + 1
    assert usage.bytes == 5000
    assert usage.newest_mtime == 2000000000
    assert scan_tree(root).blocks == 0  # not an ext filesystem: only counts
