"""Labels, UUIDs and partition entries, read by blockid from images the real tools make,
against what `blkid -p` (util-linux) and sfdisk report for the same images."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from archiso_hook.boot.blockid import Identity, identify_file, partition_entry

TOOLS = ("blkid", "mke2fs", "mkfs.vfat", "mkfs.btrfs", "xorriso", "sfdisk")


def _run(*cmd: str, stdin: str | None = None, env: dict[str, str] | None = None) -> str:
    return subprocess.run(
        cmd, check=True, capture_output=True, text=True, input=stdin, env=env
    ).stdout


def _blkid(path: Path) -> Identity:
    """blkid -p's TYPE, LABEL and UUID, with its ext2/ext3 named as mount(2) takes them."""
    values: dict[str, str] = {}
    for line in _run("blkid", "-p", "-o", "udev", str(path)).splitlines():
        key, _, value = line.partition("=")
        values[key] = value
    label = values.get("ID_FS_LABEL_ENC")
    if label is not None:  # the encoded form is exact; the plain one has '_' for ' '
        raw = re.sub(rb"\\x([0-9a-f]{2})", lambda m: bytes.fromhex(m[1].decode()), label.encode())
        label = raw.decode()
    fstype = values.get("ID_FS_TYPE")
    return Identity(
        "ext4" if fstype in ("ext2", "ext3") else fstype, label, values.get("ID_FS_UUID")
    )


def _iso(out: Path, tree: Path, *args: str) -> None:
    # Without SOURCE_DATE_EPOCH (make exports it): xorriso would let it override the
    # volume dates these images set.
    env = {k: v for k, v in os.environ.items() if k != "SOURCE_DATE_EPOCH"}
    _run("xorriso", "-outdev", str(out), *args, "-map", str(tree), "/", env=env)


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    path = os.environ.get("PATH", "") + ":/usr/sbin:/sbin"
    missing = [tool for tool in TOOLS if shutil.which(tool, path=path) is None]
    if missing:
        pytest.fail(f"missing tools for the probe tests: {', '.join(missing)}")
    work = tmp_path_factory.mktemp("blockid")
    tree = work / "tree"
    tree.mkdir()
    (tree / "hello").write_text("hello\n")
    out: dict[str, Path] = {}

    def new(name: str, size: str | None = None) -> Path:
        out[name] = work / name
        if size:
            _run("truncate", "-s", size, str(out[name]))
        return out[name]

    _run("mke2fs", "-q", "-t", "ext4", "-L", "ARCH_COW", str(new("ext4")), "4M")
    _run("mke2fs", "-q", "-t", "ext2", str(new("ext2-unlabelled")), "4M")
    _run("mkfs.vfat", "-n", "ARCHISO_EFI", str(new("vfat16", "4M")))
    _run("mkfs.vfat", "-F", "32", "-n", "Lower Case", str(new("vfat32", "40M")))
    _run("mkfs.vfat", str(new("vfat-unlabelled", "4M")))
    _run("mkfs.btrfs", "-q", "-L", "persist ent", str(new("btrfs", "120M")))
    _iso(new("iso-joliet"), tree, "-volid", "ARCH_202601", "-joliet", "on")
    _iso(new("iso-plain"), tree, "-volid", "ARCH_202601")
    _iso(new("iso-mixed-case"), tree, "-volid", "Arch Mixed", "-joliet", "on")
    _iso(new("iso-utf8"), tree, "-volid", "ÄRCH é", "-joliet", "on")
    # Two dates: blkid forms the UUID from the modification date (as GRUB does); xorriso
    # writes no hundredths.
    _iso(
        new("iso-dates"), tree, "-volid", "DATES",
        "-volume_date", "c", "2020010101000000", "-volume_date", "m", "2021020203040506",
    )  # fmt: skip
    return out


@pytest.mark.parametrize(
    "name",
    [
        "ext4", "ext2-unlabelled", "vfat16", "vfat32", "vfat-unlabelled", "btrfs",
        "iso-joliet", "iso-plain", "iso-mixed-case", "iso-utf8", "iso-dates",
    ],
)  # fmt: skip
def test_label_and_uuid_are_blkids(images: dict[str, Path], name: str) -> None:
    assert identify_file(str(images[name])) == _blkid(images[name])


def test_the_iso_uuid_comes_from_the_modification_date(images: dict[str, Path]) -> None:
    assert identify_file(str(images["iso-dates"])).uuid == "2021-02-02-03-04-05-00"


def _reader(path: Path):  # type: ignore[no-untyped-def]
    data = path.read_bytes()
    return lambda offset, length: data[offset : offset + length]


def test_gpt_partitions_have_sfdisks_uuids_and_names(tmp_path: Path) -> None:
    disk = tmp_path / "gpt"
    _run("truncate", "-s", "8M", str(disk))
    script = (
        "label: gpt\n"
        'start=2048, size=4096, name="ARCHISO_EFI", uuid=0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0\n'
        'start=6144, size=4096, name="Ärch data"\n'
        "start=10240, size=2048\n"
    )
    _run("sfdisk", "-q", str(disk), stdin=script)
    table = json.loads(_run("sfdisk", "--json", str(disk)))["partitiontable"]
    read = _reader(disk)
    for number, part in enumerate(table["partitions"], start=1):
        assert partition_entry(read, number) == (part["uuid"].lower(), part.get("name"))
    assert partition_entry(read, 4) == (None, None)
    assert partition_entry(read, 0) == (None, None)


def test_mbr_partuuid_is_the_disk_signature_and_number(tmp_path: Path) -> None:
    disk = tmp_path / "mbr"
    _run("truncate", "-s", "8M", str(disk))
    script = (
        "label: dos\nlabel-id: 0xdeadbeef\n"
        "start=2048, size=4096, type=83\nstart=6144, size=4096, type=5\n"
        "start=8192, size=2048, type=83\n"
    )
    _run("sfdisk", "-q", str(disk), stdin=script)
    ptuuid = next(
        line.partition("=")[2]
        for line in _run("blkid", "-p", "-o", "export", str(disk)).splitlines()
        if line.startswith("PTUUID=")
    )
    read = _reader(disk)
    assert partition_entry(read, 1) == (f"{ptuuid}-01", None)
    assert partition_entry(read, 5) == (f"{ptuuid}-05", None)


def test_a_disk_without_a_table_has_no_partition_entries(images: dict[str, Path]) -> None:
    assert partition_entry(_reader(images["ext4"]), 1) == (None, None)
    assert partition_entry(lambda offset, length: b"", 1) == (None, None)


def test_truncated_or_foreign_data_identifies_as_nothing(
    tmp_path: Path, images: dict[str, Path]
) -> None:
    cut = tmp_path / "cut"
    cut.write_bytes(images["iso-joliet"].read_bytes()[: 0x8000 + 100])
    assert identify_file(str(cut)).label is None
    zeros = tmp_path / "zeros"
    zeros.write_bytes(bytes(1 << 20))
    assert identify_file(str(zeros)) == Identity(None)
