"""Checksum files in every layout archiso media have used: where each is looked for,
what each vouches for, and that the builder writes archiso's 2011 layout so that the
boot, `transfer --verify` and the HTTP engine read it back."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest

from archiso_hook import checksums
from archiso_hook.build.builder import build
from archiso_hook.checksums import Source
from archiso_hook.errors import HookError, InputError

IMAGE = "/m/arch/x86_64/airootfs.sfs"


def test_the_places_looked_at_newest_layout_first() -> None:
    assert checksums.sources(IMAGE, ("x86_64",)) == [
        Source(f"{IMAGE}.sha512", "airootfs.sfs", "sha512"),  # archiso-hook build
        Source(f"{IMAGE}.md5", "airootfs.sfs", "md5"),
        Source("/m/arch/x86_64/airootfs.sha512", "airootfs.sfs", "sha512"),  # archiso 2017-
        Source("/m/arch/x86_64/airootfs.md5", "airootfs.sfs", "md5"),  # archiso 2014
        Source("/m/arch/checksum.x86_64.md5", "x86_64/airootfs.sfs", "md5"),  # 2011-11..2014
        Source("/m/arch/checksum.md5", "x86_64/airootfs.sfs", "md5"),  # 2011-08
    ]


def test_a_url_at_the_servers_root_has_no_base_directory() -> None:
    assert [s.path for s in checksums.sources("http://h/root.fs.sfs", ("x86_64",))] == [
        "http://h/root.fs.sfs.sha512",
        "http://h/root.fs.sfs.md5",
        "http://h/root.sha512",
        "http://h/root.md5",
    ]
    assert checksums.sources("http://h/arch/x86_64/a.sfs", ("x86_64",))[-1] == Source(
        "http://h/arch/checksum.md5", "x86_64/a.sfs", "md5"
    )


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("layout", "name", "algorithm"),
    [
        ("airootfs.sfs.sha512", "airootfs.sfs", "sha512"),
        ("airootfs.sha512", "airootfs.sfs", "sha512"),
        ("airootfs.md5", "airootfs.sfs", "md5"),
        ("../checksum.x86_64.md5", "./x86_64/airootfs.sfs", "md5"),
        ("../checksum.md5", "x86_64/airootfs.sfs", "md5"),
    ],
)
def test_each_layout_of_a_real_medium_gives_the_digest(
    tmp_path: Path, layout: str, name: str, algorithm: str
) -> None:
    image = _write(tmp_path / "arch/x86_64/airootfs.sfs", "the image")
    digest = hashlib.new(algorithm, image.read_bytes()).hexdigest()
    sums = _write(image.parent / layout, f"{'0' * len(digest)}  aitab\n{digest}  {name}\n")
    source = checksums.find(str(image), ("x86_64",))
    assert source is not None and Path(source.path).resolve() == sums.resolve()
    expected = checksums.parse_source(sums.read_text(), source)
    assert (expected.algorithm, expected.digest) == (algorithm, digest)


def test_what_was_looked_for_is_said() -> None:
    assert checksums.describe_sources(IMAGE, ("x86_64",)) == (
        "no airootfs.sfs.sha512 or .md5 beside it, nor airootfs.sha512 or .md5, "
        "nor checksum.x86_64.md5 or checksum.md5 in /m/arch"
    )


@pytest.mark.parametrize(
    ("listed", "refused"),
    [("../x86_64/airootfs.sfs", True), ("/etc/passwd", True), ("x86_64/../../x", True),
     ("i686/airootfs.sfs", False), ("./x86_64/airootfs.sfs", False)],
)  # fmt: skip
def test_a_base_directory_file_may_name_files_below_it_only(listed: str, refused: bool) -> None:
    text = f"{'a' * 32}  {listed}\n{'b' * 32}  x86_64/airootfs.sfs\n"
    if refused:
        with pytest.raises(InputError, match=rf"lists '{listed}', a path outside the directory"):
            checksums.parse(text, "/m/arch/checksum.x86_64.md5", "x86_64/airootfs.sfs")
    else:
        got = checksums.parse(text, "/m/arch/checksum.x86_64.md5", "x86_64/airootfs.sfs")
        assert got.digest == "b" * 32


def test_the_aitab_is_checked_when_the_file_lists_it() -> None:
    source = Source("/m/arch/checksum.x86_64.md5", "aitab", "md5")
    data = b"root / x86_64 xz ext4 50%\n"
    good = f"{hashlib.md5(data).hexdigest()}  aitab\n{'b' * 32}  x86_64/a.sfs\n"
    assert checksums.check_aitab(good, source, "/m/arch/aitab", data)
    assert not checksums.check_aitab(f"{'b' * 32}  x86_64/a.sfs\n", source, "/m/arch/aitab", data)
    with pytest.raises(HookError, match=r"^/m/arch/aitab is corrupt: its md5 is [0-9a-f]{32}, bu"):
        checksums.check_aitab(good, source, "/m/arch/aitab", data + b"\n")


def test_the_builder_writes_archisos_2011_layout_and_everything_reads_it(tmp_path: Path) -> None:
    aitab = tmp_path / "aitab"
    aitab.write_text(
        "root / x86_64 gzip none\nroot / i686 gzip none\nshare /usr/share any gzip none\n"
    )
    for name, content in (("root/who", "root"), ("share/s", "share")):
        _write(tmp_path / "src" / name, content)
    out = tmp_path / "out"
    result = build(aitab, tmp_path / "src", out, checksum_layout="archiso-2011", log=print)
    media = out / "arch"
    assert sorted(p.name for p in media.glob("**/*") if p.is_file()) == [
        "aitab", "checksum.i686.md5", "checksum.x86_64.md5", "root.sfs", "root.sfs", "share.sfs",
    ]  # fmt: skip
    lines = (media / "checksum.x86_64.md5").read_text().splitlines()
    assert [line.split("  ")[1] for line in lines] == ["aitab", "x86_64/root.sfs", "any/share.sfs"]
    # md5sum -c, run in the base directory as archiso's hook did, agrees.
    check = subprocess.run(
        ["md5sum", "-c", "checksum.x86_64.md5"],
        cwd=media,
        capture_output=True,
        text=True,
        check=False,
    )
    assert check.returncode == 0, check.stdout + check.stderr
    for image in result.images:
        arches = checksums.arches_of(str(image.path))
        source = checksums.find(str(image.path), arches)
        assert source is not None and source.path.endswith(".md5"), image
        expected = checksums.parse_source(Path(source.path).read_text(), source)
        assert expected.digest == hashlib.md5(image.path.read_bytes()).hexdigest()
    # archiso-hook transfer --verify finds them too (an `any` image: in each arch's file).
    verify = subprocess.run(
        [sys.executable, "-m", "archiso_hook", "transfer", "--verify",
         str(media / "x86_64/root.sfs"), str(media / "any/share.sfs")],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert verify.returncode == 0, verify.stderr
    assert verify.stdout.rstrip().endswith("; checksums match")
    with pytest.raises(InputError, match="checksum layout 'md5-only' is not one of image, arch"):
        build(aitab, tmp_path / "src", tmp_path / "o2", checksum_layout="md5-only", log=print)


def test_transfer_says_where_it_looked(tmp_path: Path) -> None:
    image = _write(tmp_path / "arch/x86_64/root.sfs", "x")
    verify = subprocess.run(
        [sys.executable, "-m", "archiso_hook", "transfer", "--verify", str(image)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert verify.returncode == 1
    assert verify.stderr == (
        f"archiso-hook: error: {image} has no checksum: no root.sfs.sha512 or .md5 beside it, "
        f"nor root.sha512 or .md5, nor checksum.x86_64.md5 or checksum.md5 in {tmp_path}/arch\n"
    )
