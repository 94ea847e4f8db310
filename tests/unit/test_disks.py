"""vm.disks: partitioned disk images, ext4 and FAT images, and the debugfs reader.

Everything is checked with tools other than the ones that wrote it where possible:
`sfdisk --json` for the table, byte comparisons for the contents, `blkid -p` for the
filesystems, mtools for FAT, and a journal written with `debugfs -w` for the replay.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import textwrap
from pathlib import Path

import pytest

from tests.lend import Lent
from vm.disks import (
    ESP,
    LINUX_FS,
    MIB,
    MS_BASIC_DATA,
    DiskError,
    DiskLayout,
    Partition,
    ext4_needs_recovery,
    extract_partition,
    list_dir_from_ext4,
    make_disk,
    make_ext4,
    make_vfat,
    read_file_from_ext4,
    read_layout,
    udev_link_name,
)

FS_UUID = "5a1e0f4c-7d1b-4c55-9a55-0123456789ab"
PART_UUID = "0b6c9a32-4d0e-4f3a-8b1c-fedcba987654"

pytestmark = pytest.mark.skipif(
    not all(shutil.which(t) for t in ("sfdisk", "mcopy", "debugfs", "blkid", "mkfs.vfat")),
    reason="needs sfdisk, mtools, e2fsprogs, dosfstools and blkid (make setup)",
)


def _tree(root: Path) -> Path:
    (root / "root").mkdir(parents=True)
    (root / "etc").mkdir()
    (root / "a dir").mkdir()
    (root / "root" / "note.txt").write_text("a note\n")
    (root / "etc" / "blob.bin").write_bytes(bytes(range(256)) * 40 + b"\0" * 9000 + b"end")
    (root / "a dir" / "with space.txt").write_text("spaced\n")
    (root / "etc" / "empty").write_bytes(b"")
    return root


def _blkid(image: Path, offset: int | None = None) -> dict[str, str]:
    cmd = ["blkid", "-p", "-o", "export"]
    if offset is not None:
        cmd += ["-O", str(offset)]
    out = subprocess.run([*cmd, str(image)], capture_output=True, text=True, check=True).stdout
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def _sfdisk_json(image: Path) -> dict[str, object]:
    out = subprocess.run(
        ["sfdisk", "--json", str(image)], capture_output=True, text=True, check=True
    ).stdout
    table: dict[str, object] = json.loads(out)["partitiontable"]
    return table


def _mtools(*args: str) -> str:
    env = dict(os.environ, MTOOLS_SKIP_CHECK="1", LC_ALL="C")
    return subprocess.run(args, capture_output=True, text=True, check=True, env=env).stdout


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    work = tmp_path_factory.mktemp("images")
    tree = _tree(work / "tree")
    vfat_tree = work / "vfat"
    (vfat_tree / "EFI" / "boot").mkdir(parents=True)
    (vfat_tree / "hello.txt").write_text("hello from vfat\n")
    (vfat_tree / "EFI" / "boot" / "Mixed Case.cfg").write_text("timeout 3\n")
    return {
        "tree": tree,
        "ext4": make_ext4(tree, work / "root.ext4", size_mib=24, label="labroot", uuid=FS_UUID),
        "vfat": make_vfat(
            vfat_tree, work / "esp.fat", size_mib=16, label="LABESP", volume_id="2026-0abc"
        ),
    }


def _gpt(images: dict[str, Path], out: Path) -> DiskLayout:
    return make_disk(
        out,
        [
            Partition(16, image=images["vfat"], name="lab esp", type=ESP),
            Partition(32, image=images["ext4"], name="labroot", uuid=PART_UUID),
            Partition(3),
        ],
    )


# --- partition tables -------------------------------------------------------------------


def test_gpt_layout_is_what_sfdisk_reads(images: dict[str, Path], tmp_path: Path) -> None:
    layout = _gpt(images, tmp_path / "disk.img")
    assert layout.path == tmp_path / "disk.img" and layout.table == "gpt"
    # 1 MiB before the first partition, 1 MiB after the last one for the backup GPT
    assert layout.size == (1 + 16 + 32 + 3 + 1) * MIB == layout.path.stat().st_size
    assert [(p.number, p.start, p.size) for p in layout.partitions] == [
        (1, 1 * MIB, 16 * MIB),
        (2, 17 * MIB, 32 * MIB),
        (3, 49 * MIB, 3 * MIB),
    ]
    table = _sfdisk_json(layout.path)
    assert table["label"] == "gpt" and table["unit"] == "sectors"
    assert str(table["id"]).lower() == layout.disk_id
    parts = table["partitions"]
    assert isinstance(parts, list)
    assert [(p["start"] * 512, p["size"] * 512) for p in parts] == [
        (p.start, p.size) for p in layout.partitions
    ]
    assert [p["type"] for p in parts] == [ESP, LINUX_FS, LINUX_FS]
    assert [p.get("name") for p in parts] == ["lab esp", "labroot", None]
    assert [p["uuid"].lower() for p in parts] == [p.partuuid for p in layout.partitions]
    assert layout.partition(2).partuuid == PART_UUID
    assert read_layout(layout.path) == layout
    assert layout.partition("labroot") == layout.partition(2)
    assert layout.partition(1).partlabel_link == r"/dev/disk/by-partlabel/lab\x20esp"
    assert layout.partition(2).partuuid_link == f"/dev/disk/by-partuuid/{PART_UUID}"
    with pytest.raises(KeyError):
        layout.partition("nope")
    with pytest.raises(DiskError, match="no name"):
        _ = layout.partition(3).partlabel_link
    # what udev's blkid sees on the whole disk
    whole = _blkid(layout.path)
    assert whole["PTTYPE"] == "gpt" and whole["PTUUID"] == layout.disk_id
    # sparse: only the tables and the filesystems' non-zero blocks take room
    allocated = layout.path.stat().st_blocks * 512
    used = sum(p.stat().st_blocks * 512 for p in (images["ext4"], images["vfat"]))
    assert allocated <= used + 256 * 1024, (allocated, used)


def test_partition_contents_at_their_offsets(images: dict[str, Path], tmp_path: Path) -> None:
    layout = _gpt(images, tmp_path / "disk.img")
    disk = layout.path.read_bytes()
    for number, name in ((1, "vfat"), (2, "ext4")):
        part = layout.partition(number)
        image = images[name].read_bytes()
        assert disk[part.start : part.start + len(image)] == image
        assert disk[part.start + len(image) : part.start + part.size].count(0) == (
            part.size - len(image)
        )
    assert disk[layout.partition(3).start :][: 3 * MIB] == bytes(3 * MIB)

    esp = _blkid(layout.path, layout.partition(1).start)
    assert (esp["TYPE"], esp["LABEL"], esp["UUID"]) == ("vfat", "LABESP", "2026-0ABC")
    root = _blkid(layout.path, layout.partition(2).start)
    assert (root["TYPE"], root["LABEL"], root["UUID"]) == ("ext4", "labroot", FS_UUID)

    extracted = extract_partition(layout, "labroot", tmp_path / "part2.img")
    assert extracted.stat().st_size == 32 * MIB
    assert extracted.read_bytes()[: images["ext4"].stat().st_size] == images["ext4"].read_bytes()
    assert _blkid(extracted)["UUID"] == FS_UUID
    fsck = subprocess.run(
        ["e2fsck", "-fn", str(extracted)], capture_output=True, text=True, check=False
    )
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr


def test_identifiers_are_reproducible(images: dict[str, Path], tmp_path: Path) -> None:
    first = _gpt(images, tmp_path / "a" / "disk.img")
    second = _gpt(images, tmp_path / "b" / "disk.img")
    other = _gpt(images, tmp_path / "a" / "other.img")
    assert first.path.read_bytes() == second.path.read_bytes()
    assert first.disk_id == second.disk_id != other.disk_id
    assert first.partition(1).partuuid == second.partition(1).partuuid
    assert first.partition(1).partuuid != other.partition(1).partuuid
    assert first.partition(1).partuuid != first.partition(3).partuuid
    assert other.partition(2).partuuid == PART_UUID  # a chosen PARTUUID stays
    # the filesystem images are reproducible too when their identifiers are given
    again = make_ext4(
        images["tree"], tmp_path / "again.ext4", size_mib=24, label="labroot", uuid=FS_UUID
    )
    assert again.read_bytes() == images["ext4"].read_bytes()


def test_an_image_made_right_after_its_tree_is_reproducible(tmp_path: Path) -> None:
    """mke2fs copies access times, and a tree's first read moves them (relatime): as
    when the tree's writing and the first image fall in different seconds."""
    tree = _tree(tmp_path / "tree")
    os.symlink("note.txt", tree / "root" / "link")
    then = 1_600_000_000  # access time = modification time: the next read moves it
    for path in [tree, *tree.rglob("*")]:
        os.utime(path, (then, then), follow_symlinks=False)
    first = make_ext4(tree, tmp_path / "first.ext4", size_mib=24, label="t", uuid=FS_UUID)
    second = make_ext4(tree, tmp_path / "second.ext4", size_mib=24, label="t", uuid=FS_UUID)
    assert first.read_bytes() == second.read_bytes()


def test_dos_table(images: dict[str, Path], tmp_path: Path) -> None:
    layout = make_disk(
        tmp_path / "usb.img",
        [Partition(16, image=images["vfat"], type=MS_BASIC_DATA), Partition(32, images["ext4"])],
        table="dos",
    )
    table = _sfdisk_json(layout.path)
    assert table["label"] == "dos" and table["id"] == layout.disk_id
    parts = table["partitions"]
    assert isinstance(parts, list)
    assert [(p["start"] * 512, p["size"] * 512, p["type"]) for p in parts] == [
        (MIB, 16 * MIB, "c"),
        (17 * MIB, 32 * MIB, "83"),
    ]
    assert [p.partuuid for p in layout.partitions] == [
        f"{layout.disk_id[2:]}-01",
        f"{layout.disk_id[2:]}-02",
    ]
    assert _blkid(layout.path)["PTUUID"] == layout.disk_id[2:]
    assert read_layout(layout.path) == layout
    assert _blkid(layout.path, MIB)["LABEL"] == "LABESP"
    assert read_file_from_ext4(layout.path, "/root/note.txt", 17 * MIB) == b"a note\n"
    with pytest.raises(DiskError, match="no names or PARTUUIDs"):
        make_disk(tmp_path / "x.img", [Partition(1, name="n")], table="dos")
    with pytest.raises(DiskError, match="at most 4"):
        make_disk(tmp_path / "x.img", [Partition(1)] * 5, table="dos")
    with pytest.raises(DiskError, match="no MBR code"):
        make_disk(tmp_path / "x.img", [Partition(1, type=PART_UUID)], table="dos")


def test_disk_errors(images: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(DiskError, match=r"does not fit in 8 MiB"):
        make_disk(tmp_path / "x.img", [Partition(8, image=images["ext4"])])
    with pytest.raises(DiskError, match="at least one partition"):
        make_disk(tmp_path / "x.img", [])
    with pytest.raises(DiskError, match="not a GPT GUID"):
        make_disk(tmp_path / "x.img", [Partition(1, type="83")])
    with pytest.raises(ValueError, match="without quotes"):
        Partition(1, name='a"b')
    with pytest.raises(ValueError, match="36 UTF-16"):
        Partition(1, name="n" * 37)
    with pytest.raises(ValueError, match="GPT type GUID or an MBR code"):
        Partition(1, type="linux")
    with pytest.raises(ValueError):
        Partition(1, uuid="not-a-uuid")
    with pytest.raises(ValueError):
        Partition(0)
    assert Partition(1, uuid=PART_UUID.upper()).uuid == PART_UUID


def test_udev_link_name() -> None:
    assert udev_link_name("ARCH_2026") == "ARCH_2026"
    assert udev_link_name("ARCH 2011") == r"ARCH\x202011"
    assert udev_link_name("a/b\\c") == r"a\x2fb\x5cc"
    assert udev_link_name("été#+-.:=@_") == "été#+-.:=@_"


# --- filesystems -----------------------------------------------------------------------


def test_vfat_label_and_files(images: dict[str, Path], tmp_path: Path) -> None:
    fat = images["vfat"]
    info = _blkid(fat)
    assert (info["TYPE"], info["LABEL"], info["UUID"]) == ("vfat", "LABESP", "2026-0ABC")
    listing = _mtools("mdir", "-i", str(fat), "-/", "-b", "::/").splitlines()
    assert sorted(listing) == [
        "::/EFI/",
        "::/EFI/boot/",
        "::/EFI/boot/Mixed Case.cfg",
        "::/hello.txt",
    ]
    assert _mtools("mtype", "-i", str(fat), "::/hello.txt") == "hello from vfat\n"
    assert _mtools("mtype", "-i", str(fat), "::/EFI/boot/Mixed Case.cfg") == "timeout 3\n"
    header = _mtools("mdir", "-i", str(fat), "::/")
    assert "Volume in drive : is LABESP" in header and "Serial Number is 2026-0ABC" in header
    again = make_vfat(
        fat.parent / "vfat",
        tmp_path / "again.fat",
        size_mib=16,
        label="LABESP",
        volume_id="20260ABC",
    )
    assert again.read_bytes() == fat.read_bytes()

    empty = make_vfat(None, tmp_path / "empty.fat", size_mib=40, label="EMPTY")
    assert _blkid(empty)["LABEL"] == "EMPTY" and empty.stat().st_size == 40 * MIB
    assert _mtools("mdir", "-i", str(empty), "-b", "::/") == ""
    with pytest.raises(DiskError, match="no longer than 11"):
        make_vfat(None, tmp_path / "x.fat", size_mib=8, label="TWELVE_CHARS")
    with pytest.raises(ValueError, match="volume id"):
        make_vfat(None, tmp_path / "x.fat", size_mib=8, label="X", volume_id="xyz")
    big = tmp_path / "big"
    big.mkdir()
    (big / "big.bin").write_bytes(os.urandom(3 * MIB))
    with pytest.raises(DiskError, match="mcopy failed"):
        make_vfat(big, tmp_path / "small.fat", size_mib=2, label="SMALL")


def test_ext4_images(images: dict[str, Path], tmp_path: Path) -> None:
    info = _blkid(images["ext4"])
    assert (info["TYPE"], info["LABEL"], info["UUID"]) == ("ext4", "labroot", FS_UUID)
    assert images["ext4"].stat().st_size == 24 * MIB
    empty = make_ext4(None, tmp_path / "empty.ext4", size_mib=8, label="empty")
    assert [e.name for e in list_dir_from_ext4(empty, "/") or []] == ["lost+found"]
    assert _blkid(empty)["LABEL"] == "empty"
    with pytest.raises(DiskError, match="longer than 16 bytes"):
        make_ext4(None, tmp_path / "x.ext4", size_mib=8, label="a-label-of-17-ch.")
    big = tmp_path / "big"
    big.mkdir()
    (big / "big.bin").write_bytes(os.urandom(5 * MIB))
    with pytest.raises(DiskError, match=r"mkfs\.ext4 -d"):
        make_ext4(big, tmp_path / "small.ext4", size_mib=4, label="small")


# --- the debugfs reader ----------------------------------------------------------------


def test_read_and_list_ext4(images: dict[str, Path], tmp_path: Path) -> None:
    tree, image = images["tree"], images["ext4"]
    for path in ("/root/note.txt", "/etc/blob.bin", "/a dir/with space.txt", "/etc/empty"):
        assert read_file_from_ext4(image, path) == (tree / path[1:]).read_bytes(), path
    assert read_file_from_ext4(image, "/root/missing") is None
    assert read_file_from_ext4(image, "/no/such/dir/file") is None
    with pytest.raises(DiskError, match="not a regular file"):
        read_file_from_ext4(image, "/root")
    with pytest.raises(ValueError, match="absolute path"):
        read_file_from_ext4(image, 'root/"x"')

    entries = list_dir_from_ext4(image, "/etc")
    assert entries is not None
    assert [(e.name, e.size, e.is_file) for e in entries] == [
        ("blob.bin", (tree / "etc/blob.bin").stat().st_size, True),
        ("empty", 0, True),
    ]
    root = list_dir_from_ext4(image, "/")
    assert root is not None
    assert {e.name for e in root if e.is_dir} == {"a dir", "etc", "lost+found", "root"}
    assert list_dir_from_ext4(image, "/nope") is None
    with pytest.raises(DiskError, match="not a directory"):
        list_dir_from_ext4(image, "/root/note.txt")

    # inside a disk image, at the partition's offset
    layout = _gpt(images, tmp_path / "disk.img")
    start = layout.partition("labroot").start
    assert read_file_from_ext4(layout.path, "/root/note.txt", start) == b"a note\n"
    listing = list_dir_from_ext4(layout.path, "/root", start)
    assert [e.name for e in listing or []] == ["note.txt"]
    with pytest.raises(DiskError, match=f"no ext2/3/4 filesystem at offset {MIB}"):
        read_file_from_ext4(layout.path, "/root/note.txt", MIB)  # the vfat partition


def test_reader_replays_a_dirty_journal(images: dict[str, Path], tmp_path: Path) -> None:
    """A filesystem whose journal holds a committed change not yet written in place (a
    guest killed before it remounted read-only) is read as the next mount sees it."""
    image = tmp_path / "dirty.ext4"
    shutil.copyfile(images["ext4"], image)
    block = subprocess.run(
        ["debugfs", "-R", "bmap /root/note.txt 0", str(image)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    newblock = tmp_path / "block"
    newblock.write_bytes(b"b note\n".ljust(1024, b"\0"))  # 1 KiB blocks at this size
    subprocess.run(
        ["debugfs", "-w", "-f", "-", str(image)],
        input=f"jo\njw -b {block} {newblock}\njc\n",
        capture_output=True,
        text=True,
        check=True,
    )
    assert ext4_needs_recovery(image) and not ext4_needs_recovery(images["ext4"])
    before = image.read_bytes()
    assert read_file_from_ext4(image, "/root/note.txt") == b"b note\n"
    assert image.read_bytes() == before  # the replay happened in a copy

    layout = make_disk(tmp_path / "disk.img", [Partition(32, image=image)])
    assert ext4_needs_recovery(layout.path, MIB)
    assert read_file_from_ext4(layout.path, "/root/note.txt", MIB) == b"b note\n"


# --- no privileges ---------------------------------------------------------------------

_UNPRIVILEGED = textwrap.dedent(
    """
    import os, sys
    from pathlib import Path
    from vm.disks import Partition, make_disk, make_ext4, make_vfat, read_file_from_ext4
    assert os.geteuid() != 0
    work = Path(sys.argv[1])
    (work / "t").mkdir()
    (work / "t" / "f").write_text("unprivileged\\n")
    ext4 = make_ext4(work / "t", work / "r.ext4", size_mib=8, label="r")
    fat = make_vfat(work / "t", work / "v.fat", size_mib=8, label="V")
    disk = make_disk(work / "d.img", [Partition(8, image=fat), Partition(8, image=ext4)])
    print(read_file_from_ext4(disk.path, "/f", disk.partition(2).start).decode(), end="")
    """
)


def test_images_need_no_root(lent_checkout: Lent) -> None:
    if os.geteuid() != 0:
        prefix: list[str] = []
    elif shutil.which("setpriv"):
        prefix = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
    else:
        pytest.skip("running as root without setpriv to drop privileges")
    work = Path(tempfile.mkdtemp(prefix="lab-disks-"))
    try:
        if prefix:
            os.chown(work, 65534, 65534)
        # The lent copy: the checkout itself may be where uid 65534 cannot enter.
        proc = subprocess.run(
            [*prefix, str(lent_checkout.python), "-c", _UNPRIVILEGED, str(work)],
            capture_output=True,
            text=True,
            cwd=work,
            env=dict(
                os.environ, PYTHONDONTWRITEBYTECODE="1", PYTHONPATH=str(lent_checkout.sources)
            ),
            check=False,
        )
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout == "unprivileged\n"
    finally:
        shutil.rmtree(work)
