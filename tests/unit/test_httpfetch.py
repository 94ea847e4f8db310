"""The HTTP fetcher against a real HTTP server on 127.0.0.1 that breaks connections.

The server honours Range and can be told to cut each response after some bytes, to
go away, or to lack a file; the fetcher must resume, verify and refuse as the boot
needs. (The QEMU tests do the same against nginx.)
"""

from __future__ import annotations

import hashlib
import http.server
import io
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from archiso_hook import httpfetch
from archiso_hook.errors import HookError
from archiso_hook.log import Log


class Handler(http.server.BaseHTTPRequestHandler):
    root: Path
    cut_after: int | None = None  # bytes sent per response before closing
    cuts_left = 0
    no_range = False
    requests: list[str]

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        self.requests.append(f"{self.path} {self.headers.get('Range', '')}".strip())
        path = self.root / self.path.lstrip("/")
        if not path.is_file():
            self.send_error(404)
            return
        data = path.read_bytes()
        start = 0
        header = self.headers.get("Range")
        if header and not self.no_range:
            start = int(header.removeprefix("bytes=").rstrip("-"))
            if start >= len(data):
                self.send_error(416)
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        cls = type(self)
        if cls.cut_after is not None and cls.cuts_left > 0:
            cls.cuts_left -= 1
            self.wfile.write(body[: cls.cut_after])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(body)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[str, type[Handler]]]:
    root = tmp_path / "srv"
    root.mkdir()
    handler = type("H", (Handler,), {"root": root, "requests": []})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/", handler
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture(autouse=True)
def no_waiting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(httpfetch, "BACKOFF", (0.0,))


def medium(handler: type[Handler], *, sums: bool = True) -> bytes:
    arch = handler.root / "arch"
    (arch / "x86_64").mkdir(parents=True)
    (arch / "aitab").write_text("root / x86_64 xz ext4 50%\nother / i686 xz ext4 50%\n")
    data = os.urandom(3 << 20)
    (arch / "x86_64" / "root.fs.sfs").write_bytes(data)
    if sums:
        digest = hashlib.sha512(data).hexdigest()
        (arch / "x86_64" / "root.fs.sfs.sha512").write_text(f"{digest}  root.fs.sfs\n")
    return data


def log() -> Log:
    return Log(stream=io.StringIO())


def test_fetches_this_arch_only_and_verifies(
    server: tuple[str, type[Handler]], tmp_path: Path
) -> None:
    url, handler = server
    data = medium(handler)
    out = tmp_path / "out"
    out.mkdir()
    got = httpfetch.fetch_medium(url, "arch", "x86_64", str(out), log(), require_checksums=True)
    assert [f.size for f in got] == [len(data)]
    assert (out / "arch/x86_64/root.fs.sfs").read_bytes() == data
    assert not any("i686" in r for r in handler.requests)


def test_resumes_a_broken_transfer_with_range(
    server: tuple[str, type[Handler]], tmp_path: Path
) -> None:
    url, handler = server
    data = medium(handler)
    handler.cut_after, handler.cuts_left = 1 << 20, 2
    target = tmp_path / "root.fs.sfs"
    got = httpfetch.fetch(f"{url}arch/x86_64/root.fs.sfs", str(target), log(), algorithm="sha512")
    assert target.read_bytes() == data
    assert got.digest == hashlib.sha512(data).hexdigest()
    assert got.resumed == 2
    ranges = [r for r in handler.requests if "bytes=" in r]
    assert [r.split("bytes=")[1] for r in ranges] == [f"{1 << 20}-", f"{2 << 20}-"]


def test_a_server_without_range_starts_over(
    server: tuple[str, type[Handler]], tmp_path: Path
) -> None:
    url, handler = server
    data = medium(handler)
    handler.cut_after, handler.cuts_left, handler.no_range = 1 << 20, 1, True
    target = tmp_path / "root.fs.sfs"
    got = httpfetch.fetch(f"{url}arch/x86_64/root.fs.sfs", str(target), log(), algorithm="md5")
    assert target.read_bytes() == data and got.digest == hashlib.md5(data).hexdigest()


def test_a_corrupt_image_is_refused_naming_both_digests(
    server: tuple[str, type[Handler]], tmp_path: Path
) -> None:
    url, handler = server
    medium(handler)
    (handler.root / "arch/x86_64/root.fs.sfs").write_bytes(b"x" * 1000)
    with pytest.raises(
        HookError, match=r"root.fs.sfs is corrupt: its sha512 is [0-9a-f]{128}, but"
    ):
        httpfetch.fetch_medium(url, "arch", "x86_64", str(tmp_path), log(), require_checksums=False)


def test_missing_aitab_and_checksums(server: tuple[str, type[Handler]], tmp_path: Path) -> None:
    url, handler = server
    with pytest.raises(HookError, match=r"arch/aitab is not on the server \(HTTP 404\)"):
        httpfetch.fetch_medium(url, "arch", "x86_64", str(tmp_path), log(), require_checksums=False)
    medium(handler, sums=False)
    with pytest.raises(HookError, match=r"checksum=y, but the server has no .*root.fs.sfs.sha512"):
        httpfetch.fetch_medium(url, "arch", "x86_64", str(tmp_path), log(), require_checksums=True)


def test_images_larger_than_the_space_are_refused_before_writing(
    server: tuple[str, type[Handler]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url, handler = server
    medium(handler)
    real = os.statvfs

    class Small:
        f_bavail, f_frsize = 256, 4096  # 1 MiB

    monkeypatch.setattr(os, "statvfs", lambda p: Small if str(p) == str(tmp_path) else real(p))
    with pytest.raises(HookError, match=r"the images do not fit in RAM: 3\.0 MiB so far, and "):
        httpfetch.fetch_medium(url, "arch", "x86_64", str(tmp_path), log(), require_checksums=False)


def test_gives_up_when_the_server_stays_away(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(httpfetch, "GIVE_UP", 0.5)
    monkeypatch.setattr(httpfetch, "BACKOFF", (0.1,))
    with pytest.raises(
        HookError, match=r"cannot fetch http://127.0.0.1:9/x: .*no progress for 0.5 s"
    ):
        httpfetch.fetch("http://127.0.0.1:9/x", str(tmp_path / "x"), log())
