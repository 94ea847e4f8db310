from __future__ import annotations

import errno
import hashlib
import importlib
import os
from pathlib import Path

import pytest

from archiso_hook import checksums
from archiso_hook.boot import transfer
from archiso_hook.errors import HookError, InputError


def make(path: Path, size: int, seed: bytes) -> bytes:
    data = bytearray()
    block = seed
    while len(data) < size:
        block = hashlib.sha512(block).digest()
        data += block
    path.write_bytes(bytes(data[:size]))
    return bytes(data[:size])


@pytest.fixture(params=["thread", "process"])
def hashing(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Each test twice: hashing in threads (OpenSSL's hashes let go of the GIL), and in
    forked children (as with Python's built-in ones, when there is no _hashlib)."""
    monkeypatch.setattr(transfer, "_holds_gil", lambda hasher: request.param == "process")
    return str(request.param)


@pytest.mark.parametrize("workers", [1, 2, 4])
def test_one_read_copies_and_hashes_every_image(tmp_path: Path, workers: int, hashing: str) -> None:
    sources = [tmp_path / f"img{i}" for i in range(5)]
    contents = [
        make(p, size, bytes([i]))
        for i, (p, size) in enumerate(
            zip(sources, [0, 1, transfer.CHUNK, 3 * transfer.CHUNK + 7, 12345], strict=True)
        )
    ]
    (tmp_path / "ram").mkdir()
    jobs = [transfer.Job(str(p), str(tmp_path / "ram" / p.name), "sha512") for p in sources]
    lines: list[str] = []
    progress = transfer.Progress(
        "copying", sum(len(c) for c in contents), lines.append, interval=0.0
    )
    results = transfer.run(jobs, progress=progress, workers=workers)
    assert [r.job for r in results] == jobs
    for result, data in zip(results, contents, strict=True):
        assert result.size == len(data)
        assert result.digest == hashlib.sha512(data).hexdigest()
        assert Path(str(result.job.destination)).read_bytes() == data
    assert progress.done == sum(len(c) for c in contents)
    assert lines and lines[-1].startswith("copying: ")


def test_hash_only_and_copy_only(tmp_path: Path, hashing: str) -> None:
    data = make(tmp_path / "a", 100_000, b"a")
    (result,) = transfer.run([transfer.Job(str(tmp_path / "a"), None, "md5")])
    assert result.digest == hashlib.md5(data).hexdigest()
    (result,) = transfer.run([transfer.Job(str(tmp_path / "a"), str(tmp_path / "b"), None)])
    assert result.digest is None and (tmp_path / "b").read_bytes() == data


def test_a_failure_removes_every_partial_copy(tmp_path: Path, hashing: str) -> None:
    make(tmp_path / "a", 50_000, b"a")
    jobs = [
        transfer.Job(str(tmp_path / "a"), str(tmp_path / "a.copy"), "sha512"),
        transfer.Job(str(tmp_path / "missing"), str(tmp_path / "m.copy"), "sha512"),
    ]
    with pytest.raises(HookError, match=r"cannot open .*/missing: No such file"):
        transfer.run(jobs)
    assert not (tmp_path / "a.copy").exists() and not (tmp_path / "m.copy").exists()


def test_a_destination_that_cannot_be_written_is_an_error(tmp_path: Path) -> None:
    make(tmp_path / "a", 10_000, b"a")
    with pytest.raises(HookError, match=r"cannot write .*/nodir/a: No such file"):
        transfer.run([transfer.Job(str(tmp_path / "a"), str(tmp_path / "nodir" / "a"), None)])


def test_which_hashes_keep_the_gil() -> None:
    # Python's built-in sha512: what hashlib falls back to without OpenSSL (_hashlib).
    builtin = importlib.import_module("_sha512")
    assert transfer._holds_gil(builtin.sha512())
    assert transfer._holds_gil(hashlib.new("sha512")) == (
        type(hashlib.new("sha512")).__module__ != "_hashlib"
    )


def child_answer(path: Path, *offsets: tuple[int, bool]) -> bytes:
    """What the hashing child (run here, not forked) answers to these commands."""
    commands, to_child = os.pipe()
    from_child, answers = os.pipe()
    for offset, done in offsets:
        os.write(to_child, ((offset << 1) | done).to_bytes(8, "little"))
    os.close(to_child)
    try:
        transfer._child_hash(hashlib.sha512(), str(path), commands, answers)
        os.close(answers)
        with os.fdopen(from_child, "rb") as f:
            return f.read()
    finally:
        os.close(commands)


def test_the_hashing_child_answers_the_digest_or_the_error(tmp_path: Path) -> None:
    data = make(tmp_path / "a", 3 * transfer.CHUNK + 5, b"c")
    n = len(data)
    digest = hashlib.sha512(data).hexdigest()
    assert child_answer(tmp_path / "a", (7, False), (n - 1, False), (n, True)) == (
        f"{n} {digest}\n".encode()
    )
    # A file shorter than the reader said: an error, with its errno, for the parent.
    assert child_answer(tmp_path / "a", (n + 10, True)) == (
        f"error {errno.EIO} {tmp_path / 'a'} ended early\n".encode()
    )
    assert child_answer(tmp_path / "missing", (1, True)).startswith(
        f"error {errno.ENOENT} No such file".encode()
    )
    # The parent gave up (its end of the pipe closed before the end): no answer.
    assert child_answer(tmp_path / "a", (10, False)) == b""


def test_progress_line() -> None:
    progress = transfer.Progress("verifying", 300 << 20, lambda _: None)
    progress.done = 100 << 20
    line = progress.line(progress.start + 10)
    assert line == "verifying: 100.0 MiB of 300.0 MiB, 10.0 MiB/s, 20 s left"


SHA = "ab" * 64


def test_checksum_files(tmp_path: Path) -> None:
    assert checksums.parse(f"{SHA}  root.fs.sfs\n", "x/root.fs.sfs.sha512", "root.fs.sfs") == (
        checksums.Expected("sha512", SHA, "x/root.fs.sfs.sha512")
    )
    text = f"{'CD' * 16} *./share.sfs\r\n"
    assert checksums.parse(text, "s.md5", "share.sfs").digest == "cd" * 16
    image = tmp_path / "root.fs.sfs"
    image.write_bytes(b"")

    def found() -> str | None:
        source = checksums.find(str(image), ("x86_64",))
        return None if source is None else source.path

    assert found() is None
    Path(f"{image}.md5").write_text("")
    assert found() == f"{image}.md5"
    Path(f"{image}.sha512").write_text("")
    assert found() == f"{image}.sha512"  # preferred


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (f"{SHA}  ../../etc/shadow\n", "f.sha512:1: lists '../../etc/shadow', a path outside"),
        (f"{SHA}  /etc/passwd\n", "f.sha512:1: lists '/etc/passwd', a path outside"),
        (f"{SHA}  sub/root.fs.sfs\n", "has no sha512 checksum for root.fs.sfs"),  # not ours
        ("abc  root.fs.sfs\n", "f.sha512:1: not a sha512 checksum line"),
        (f"{SHA}  other.sfs\n", "f.sha512: has no sha512 checksum for root.fs.sfs"),
        ("", "has no sha512 checksum"),
    ],
)
def test_bad_checksum_files_are_refused(text: str, message: str) -> None:
    with pytest.raises(InputError) as excinfo:
        checksums.parse(text, "f.sha512", "root.fs.sfs")
    assert message in str(excinfo.value)


def test_the_builders_checksum_files_are_read(tmp_path: Path) -> None:
    from archiso_hook.build.imagesums import write_checksum  # noqa: PLC0415

    image = tmp_path / "root.fs.sfs"
    data = make(image, 5000, b"r")
    checksum = write_checksum(image)
    expected = checksums.parse(checksum.read_text(), str(checksum), image.name)
    assert expected.digest == hashlib.sha512(data).hexdigest()
    assert os.path.basename(str(checksum)) == "root.fs.sfs.sha512"


def _medium(tmp_path: Path) -> tuple[Path, Path]:
    """arch/x86_64/root.sfs and share.sfs, each with its .sha512; share's is wrong."""
    images = tmp_path / "arch" / "x86_64"
    images.mkdir(parents=True)
    root, share = images / "root.sfs", images / "share.sfs"
    root.write_bytes(os.urandom(300_000))
    share.write_bytes(os.urandom(1000))
    for image in (root, share):
        digest = hashlib.sha512(image.read_bytes()).hexdigest()
        if image is share:
            digest = "0" * 128
        (image.parent / f"{image.name}.sha512").write_text(f"{digest}  {image.name}\n")
    return root, share


def test_the_boot_and_the_command_read_and_check_images_the_same_way(tmp_path: Path) -> None:
    root, share = _medium(tmp_path)
    arches = ("x86_64",)
    expected = [
        transfer.expected_digest(str(p), arches, required_by="checksum=y") for p in (root, share)
    ]
    out = tmp_path / "ram"
    out.mkdir()
    lines: list[str] = []
    checked = transfer.read_checked(
        [str(root), str(share)],
        [str(out / "root.sfs"), None],
        expected,
        transfer.Progress("copying", root.stat().st_size + share.stat().st_size, lines.append),
    )
    assert (out / "root.sfs").read_bytes() == root.read_bytes()
    assert not (out / "share.sfs").exists()  # None: hashed, not copied
    assert checked.corrupt == [
        f"{share} is corrupt: its sha512 is {hashlib.sha512(share.read_bytes()).hexdigest()}, "
        f"but {share}.sha512 says {'0' * 128}"
    ]
    # Without expected digests nothing is hashed, and nothing is corrupt.
    unchecked = transfer.read_checked([str(root)], [None], [], transfer.Progress("r", 1, print))
    assert unchecked.corrupt == [] and unchecked.results[0].digest is None


def test_an_image_without_a_checksum_names_what_asked_for_one(tmp_path: Path) -> None:
    root, _ = _medium(tmp_path)
    (root.parent / "root.sfs.sha512").unlink()
    with pytest.raises(HookError, match=r"^checksum=y, but .*root\.sfs has no checksum: no ") as e:
        transfer.expected_digest(str(root), ("x86_64",), required_by="checksum=y", hint="h")
    assert e.value.hint == "h"
    with pytest.raises(HookError, match=r"^/.*root\.sfs has no checksum: no "):
        transfer.expected_digest(str(root), ("x86_64",), required_by=None)
