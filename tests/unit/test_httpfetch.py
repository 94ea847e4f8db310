"""The HTTP fetcher against a real HTTP server on 127.0.0.1 that breaks connections.

The server honours Range and can be told to cut each response after some bytes, to
go away, or to lack a file; the fetcher must resume, verify and refuse as the boot
needs. (The QEMU tests do the same against nginx.)
"""

from __future__ import annotations

import contextlib
import hashlib
import http.server
import io
import os
import re
import ssl
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from archiso_hook.boot import httpfetch, httpmedium
from archiso_hook.cli import main as cli_main
from archiso_hook.errors import HookError
from archiso_hook.log import Log
from vm.tlsca import CertificateAuthority


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
    got = httpmedium.fetch_medium(url, "arch", "x86_64", str(out), log(), require_checksums=True)
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
        httpmedium.fetch_medium(
            url, "arch", "x86_64", str(tmp_path), log(), require_checksums=False
        )


def test_missing_aitab_and_checksums(server: tuple[str, type[Handler]], tmp_path: Path) -> None:
    url, handler = server
    with pytest.raises(HookError, match=r"arch/aitab is not on the server \(HTTP 404\)"):
        httpmedium.fetch_medium(
            url, "arch", "x86_64", str(tmp_path), log(), require_checksums=False
        )
    medium(handler, sums=False)
    with pytest.raises(HookError, match=r"checksum=y, but the server has no checksum of .*root"):
        httpmedium.fetch_medium(url, "arch", "x86_64", str(tmp_path), log(), require_checksums=True)


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
        httpmedium.fetch_medium(
            url, "arch", "x86_64", str(tmp_path), log(), require_checksums=False
        )


def test_gives_up_when_the_server_stays_away(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(httpfetch, "GIVE_UP", 0.5)
    monkeypatch.setattr(httpfetch, "BACKOFF", (0.1,))
    with pytest.raises(
        HookError, match=r"cannot fetch http://127.0.0.1:9/x: .*no progress for 0.5 s"
    ):
        httpfetch.fetch("http://127.0.0.1:9/x", str(tmp_path / "x"), log())


# --------------------------------------------------------------------------- hostile servers


class Liar(http.server.BaseHTTPRequestHandler):
    """A server that answers `/f` (DATA) with `script`'s answers, one per request, in order
    (the last one repeats): each is (status, headers, body, seconds between bytes)."""

    script: list[tuple[int, dict[str, str], bytes, float]]
    requests: list[str]

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        cls = type(self)
        cls.requests.append(self.headers.get("Range", ""))
        status, headers, body, drip = cls.script[min(len(cls.requests), len(cls.script)) - 1]
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()
        self.close_connection = True
        with contextlib.suppress(OSError):  # the client may have hung up: it may refuse
            if not drip:
                self.wfile.write(body)
                return
            for i in range(len(body)):
                self.wfile.write(body[i : i + 1])
                self.wfile.flush()
                time.sleep(drip)


DATA = bytes(range(256)) * 8192  # 2 MiB


def whole(data: bytes = DATA) -> tuple[int, dict[str, str], bytes, float]:
    return 200, {"Content-Length": str(len(data))}, data, 0.0


def cut(n: int, data: bytes = DATA) -> tuple[int, dict[str, str], bytes, float]:
    """The whole file announced, `n` bytes sent, then the connection closes."""
    return 200, {"Content-Length": str(len(data))}, data[:n], 0.0


def part(
    start: int, body: bytes, total: int = len(DATA)
) -> tuple[int, dict[str, str], bytes, float]:
    end = start + len(body) - 1
    headers = {"Content-Range": f"bytes {start}-{end}/{total}", "Content-Length": str(len(body))}
    return 206, headers, body, 0.0


@pytest.fixture
def liar() -> Iterator[tuple[str, type[Liar]]]:
    handler = type("L", (Liar,), {"script": [], "requests": []})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True).start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/f", handler
    finally:
        httpd.shutdown()
        httpd.server_close()


def _fetch(url: str, tmp_path: Path, **kw: Any) -> httpfetch.Fetched:
    return httpfetch.fetch(url, str(tmp_path / "f"), log(), **kw)


@pytest.mark.parametrize(
    ("script", "message"),
    [
        # a resume answered from byte 0: the start of the file again, appended
        ([cut(1000), part(0, DATA)], "asked for bytes from 1000, it sent them from 0"),
        # an early 416: the file is not complete at byte 1000
        ([cut(1000), (416, {}, b"", 0.0)], r"it answered 416 \(nothing there\) at byte 1000"),
        # a 206 never asked for
        ([part(0, DATA)], r"it answered 206 \(a part\) to a request for the whole file"),
        # the file changed size between two requests
        ([cut(1000), part(1000, DATA[1000:], total=len(DATA) + 1)], "it now says the file has"),
        ([cut(1000), whole(DATA + b"x")], "it now sends a file of 2097153 bytes"),
        (
            [cut(1000), (206, {"Content-Length": "5"}, b"12345", 0.0)],
            "its 206 has no usable Content-Range",
        ),
        # more than announced: a 206 without Content-Length, longer than its range
        (
            [
                cut(1000),
                (
                    206,
                    {"Content-Range": f"bytes 1000-{len(DATA) - 1}/{len(DATA)}"},
                    DATA[1000:] + b"tail",
                    0.0,
                ),
            ],
            f"it sent more than {len(DATA)} bytes",
        ),
    ],
)
def test_an_answer_that_would_make_a_wrong_file_is_refused(
    liar: tuple[str, type[Liar]], tmp_path: Path, script: list[Any], message: str
) -> None:
    url, handler = liar
    handler.script = script
    with pytest.raises(HookError, match=f"refusing {url}: {message}") as error:
        _fetch(url, tmp_path)
    assert "the server does not serve this file consistently" in str(error.value)
    assert len(handler.requests) == len(script)  # refused at once, not retried


def test_a_416_at_the_very_end_is_a_complete_file(
    liar: tuple[str, type[Liar]], tmp_path: Path
) -> None:
    url, handler = liar
    handler.script = [cut(len(DATA) - 1) , (416, {}, b"", 0.0)]  # fmt: skip
    with pytest.raises(HookError, match=r"416 \(nothing there\) at byte 2097151"):
        _fetch(url, tmp_path)  # one byte short: not complete
    handler.requests.clear()
    handler.script = [whole(), (416, {}, b"", 0.0)]
    assert _fetch(url, tmp_path).size == len(DATA)


def test_a_resume_from_the_right_byte_is_taken(
    liar: tuple[str, type[Liar]], tmp_path: Path
) -> None:
    url, handler = liar
    handler.script = [cut(1000), part(1000, DATA[1000:])]
    got = _fetch(url, tmp_path, algorithm="sha512")
    assert (tmp_path / "f").read_bytes() == DATA and got.resumed == 1
    assert handler.requests == ["", "bytes=1000-"]


def test_small_files_are_capped(liar: tuple[str, type[Liar]], tmp_path: Path) -> None:
    url, handler = liar
    handler.script = [whole()]  # announced: refused before a byte is written
    with pytest.raises(HookError, match=r"it has 2\.0 MiB, more than the 1\.0 MiB such a file"):
        _fetch(url, tmp_path, limit=httpfetch.SMALL_LIMIT)
    handler.script = [(200, {}, DATA, 0.0)]  # not announced: cut at the cap
    with pytest.raises(HookError, match=r"it sent more than 1048576 bytes"):
        _fetch(url, tmp_path, limit=httpfetch.SMALL_LIMIT)


def test_an_unannounced_size_is_checked_against_the_room_as_it_grows(
    liar: tuple[str, type[Liar]], tmp_path: Path
) -> None:
    url, handler = liar
    handler.script = [(200, {}, DATA, 0.0)]
    seen: list[int] = []

    def room(size: int) -> None:
        seen.append(size)
        if size > 1 << 20:
            raise httpfetch.FetchError("the images do not fit in RAM")

    with pytest.raises(HookError, match="the images do not fit in RAM"):
        _fetch(url, tmp_path, room=room)
    assert seen and max(seen) > 1 << 20 and (tmp_path / "f").stat().st_size <= 1 << 20


@pytest.mark.parametrize("status", [400, 401, 403, 410, 451])
def test_a_client_error_fails_at_once(
    liar: tuple[str, type[Liar]], tmp_path: Path, status: int
) -> None:
    url, handler = liar
    handler.script = [(status, {"Content-Length": "0"}, b"", 0.0)]
    with pytest.raises(HookError, match=f"cannot fetch {url}: HTTP {status}"):
        _fetch(url, tmp_path)
    assert len(handler.requests) == 1


@pytest.mark.parametrize("status", [408, 429, 500, 503])
def test_errors_that_may_heal_are_retried(
    liar: tuple[str, type[Liar]], tmp_path: Path, status: int
) -> None:
    url, handler = liar
    handler.script = [(status, {"Content-Length": "0"}, b"", 0.0), whole()]
    assert _fetch(url, tmp_path).size == len(DATA)
    assert len(handler.requests) == 2


def test_a_dripping_server_is_broken_off_and_given_up_on(
    liar: tuple[str, type[Liar]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One byte every 50 ms, where at least MIN_RATE is needed over each STALL_WINDOW:
    each connection counts as broken, and MAX_RESTARTS bounds the whole download."""
    monkeypatch.setattr(httpfetch, "STALL_WINDOW", 0.3)
    monkeypatch.setattr(httpfetch, "MAX_RESTARTS", 2)
    url, handler = liar
    handler.script = [(200, {"Content-Length": str(len(DATA))}, DATA[:100], 0.05)]
    with pytest.raises(
        HookError, match=r"/s, less than 32\.0 KiB/s; the transfer broke off 3 times"
    ):
        _fetch(url, tmp_path)
    assert len(handler.requests) == 3


def test_restarts_are_capped(
    liar: tuple[str, type[Liar]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(httpfetch, "MAX_RESTARTS", 4)
    url, handler = liar
    handler.script = [cut(1000), *[part(1000 + i, DATA[1000 + i : 1001 + i]) for i in range(10)]]
    with pytest.raises(HookError, match="the connection closed early; the transfer broke off 5"):
        _fetch(url, tmp_path)
    assert len(handler.requests) == 5


def test_a_deadline_ends_a_slow_download(liar: tuple[str, type[Liar]], tmp_path: Path) -> None:
    url, handler = liar
    handler.script = [(200, {"Content-Length": str(len(DATA))}, DATA[:50], 0.02)]
    with pytest.raises(HookError, match=r"not complete after 0\.2 s"):
        _fetch(url, tmp_path, deadline=0.2)


def test_redirects_keep_the_scheme_or_go_to_https(
    liar: tuple[str, type[Liar]], tmp_path: Path
) -> None:
    url, handler = liar
    handler.script = [(302, {"Location": "ftp://127.0.0.1/f", "Content-Length": "0"}, b"", 0.0)]
    with pytest.raises(
        HookError, match=r"redirects to ftp://127\.0\.0\.1/f, another scheme than http"
    ):
        _fetch(url, tmp_path)
    handler.requests.clear()
    handler.script = [(302, {"Location": url + "?again", "Content-Length": "0"}, b"", 0.0), whole()]
    assert _fetch(url, tmp_path).size == len(DATA)
    redirects = httpfetch._SafeRedirects()
    request = urllib.request.Request("https://example.invalid/f")
    with pytest.raises(HookError, match="another scheme than https"):
        redirects.redirect_request(request, None, 302, "Found", {}, "http://example.invalid/f")


def test_a_url_that_is_not_one_fails_at_once(tmp_path: Path) -> None:
    with pytest.raises(HookError, match="cannot fetch gopher://x/f: unknown url type"):
        _fetch("gopher://x/f", tmp_path)


# --------------------------------------------------------------------------- transfer URL...


def _transfer(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = cli_main(["transfer", "--quiet", *argv])
    return status, out.getvalue(), err.getvalue()


def test_transfer_downloads_urls_and_checks_them(
    server: tuple[str, type[Handler]], tmp_path: Path
) -> None:
    url, handler = server
    data = medium(handler)
    image = f"{url}arch/x86_64/root.fs.sfs"
    status, out, err = _transfer("--to", str(tmp_path / "d"), "--verify", image)
    assert (status, err) == (0, "")
    assert out.startswith(f"fetched: 1 of 1 file(s), {len(data)} bytes in ")
    assert out.rstrip().endswith("; checksums match")
    assert (tmp_path / "d/root.fs.sfs").read_bytes() == data
    assert (tmp_path / "d/root.fs.sfs.sha512").exists()


def test_transfer_says_each_failure_in_a_line_and_exits_1(
    server: tuple[str, type[Handler]], tmp_path: Path
) -> None:
    url, handler = server
    medium(handler)
    (handler.root / "arch/x86_64/root.fs.sfs").write_bytes(b"not the image")
    (handler.root / "arch/aitab.sha512").write_text("0" * 128 + "  aitab\n")
    urls = [f"{url}arch/x86_64/root.fs.sfs", f"{url}arch/missing.sfs", f"{url}arch/aitab"]
    status, out, err = _transfer("--to", str(tmp_path / "d"), "--verify", *urls)
    assert status == 1
    lines = err.splitlines()
    assert len(lines) == 3, err
    assert re.match(rf"archiso-hook: error: {urls[0]} is corrupt: its sha512 is ", lines[0])
    assert lines[1] == (
        f"archiso-hook: error: --verify, but the server has no checksum of {urls[1]}: no "
        f"missing.sfs.sha512 or .md5 beside it, nor missing.sha512 or .md5, nor "
        f"checksum.arch.md5 or checksum.md5 in {url.rstrip('/')} "
        "(publish the checksum files beside the images, or leave out --verify)"
    )
    assert lines[2].startswith(f"archiso-hook: error: {urls[2]} is corrupt")
    assert out.startswith("fetched: 0 of 3 file(s)")
    status, _out, err = _transfer("--to", str(tmp_path / "e"), urls[1])
    assert (status, err) == (1, f"archiso-hook: error: {urls[1]} is not on the server (HTTP 404)\n")


def test_transfer_refuses_a_lying_server_within_its_timeout(
    liar: tuple[str, type[Liar]], tmp_path: Path
) -> None:
    url, handler = liar
    handler.script = [cut(1000), part(0, DATA)]
    status, _out, err = _transfer("--to", str(tmp_path), url)
    assert status == 1 and "asked for bytes from 1000, it sent them from 0" in err
    handler.requests.clear()
    handler.script = [(200, {"Content-Length": str(len(DATA))}, DATA[:50], 0.02)]
    status, _out, err = _transfer("--to", str(tmp_path), "--timeout", "0.2", url)
    assert status == 1 and "not complete after 0.2 s" in err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["http://x/a"], "URLs need --to DIR"),
        (["--to", "d", "http://x/a", "/etc/hostname"], "give either files on this machine or URLs"),
        (["--to", "d", "--timeout", "0", "http://x/a"], "--timeout 0 is not valid"),
        (["--timeout", "5", "/etc/hostname"], "--timeout is for URLs"),
    ],
)
def test_transfer_usage_errors(tmp_path: Path, argv: list[str], message: str) -> None:
    status, _out, err = _transfer(*argv)
    assert status == 2 and message in err and err.count("\n") == 1


# --------------------------------------------------------------------------- https


@pytest.fixture
def tls_server(tmp_path: Path) -> Iterator[tuple[str, CertificateAuthority, bytes]]:
    """An https server on 127.0.0.1 whose certificate the lab's own CA signed."""
    ca = CertificateAuthority.create(tmp_path / "ca", "archiso-hook test CA")
    cert, key = ca.issue(tmp_path / "server", ips=["127.0.0.1"])
    root = tmp_path / "srv"
    root.mkdir()
    data = os.urandom(100_000)
    (root / "f").write_bytes(data)
    handler = type("H", (Handler,), {"root": root, "requests": []})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    httpd.socket = context.wrap_socket(httpd.socket, server_side=True)
    threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True).start()
    try:
        yield f"https://127.0.0.1:{httpd.server_address[1]}/f", ca, data
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture
def trusting(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[Path], None]]:
    """Make the fetcher trust this bundle (as the initramfs's CA_BUNDLE)."""

    def trust(bundle: Path) -> None:
        monkeypatch.setattr(httpfetch, "CA_BUNDLE", str(bundle))
        httpfetch._opener.cache_clear()

    yield trust
    httpfetch._opener.cache_clear()


def test_https_with_the_ca_in_the_bundle(
    tls_server: tuple[str, CertificateAuthority, bytes],
    trusting: Callable[[Path], None],
    tmp_path: Path,
) -> None:
    url, ca, data = tls_server
    trusting(ca.cert)
    assert _fetch(url, tmp_path).size == len(data)
    assert (tmp_path / "f").read_bytes() == data


def test_https_with_another_ca_fails_at_once(
    tls_server: tuple[str, CertificateAuthority, bytes],
    trusting: Callable[[Path], None],
    tmp_path: Path,
) -> None:
    url, _ca, _data = tls_server
    other = CertificateAuthority.create(tmp_path / "other", "another CA")
    trusting(other.cert)
    with pytest.raises(HookError) as error:
        _fetch(url, tmp_path)
    assert str(error.value).startswith(
        f"cannot fetch {url}: the server's certificate is not trusted: "
        "unable to get local issuer certificate"
    )


def test_archisos_2011_layout_on_a_server(
    server: tuple[str, type[Handler]], tmp_path: Path
) -> None:
    """checksum.<arch>.md5 at the top of the base directory: the aitab and each image
    are checked against it, and the file is fetched once."""
    url, handler = server
    data = medium(handler, sums=False)
    arch = handler.root / "arch"
    aitab = (arch / "aitab").read_bytes()
    sums = arch / "checksum.x86_64.md5"
    sums.write_text(
        f"{hashlib.md5(aitab).hexdigest()}  aitab\n{hashlib.md5(data).hexdigest()}  "
        "./x86_64/root.fs.sfs\n"
    )
    out = tmp_path / "out"
    out.mkdir()
    text = io.StringIO()
    got = httpmedium.fetch_medium(
        url, "arch", "x86_64", str(out), Log(stream=text), require_checksums=True
    )
    assert [f.size for f in got] == [len(data)]
    assert f"{url}arch/aitab: md5 checksum verified against {url}arch/checksum.x86_64.md5" in (
        text.getvalue()
    )
    assert handler.requests.count("/arch/checksum.x86_64.md5") == 1
    # A changed aitab is refused before any image is fetched.
    (arch / "aitab").write_bytes(aitab + b"# changed\n")
    with pytest.raises(HookError, match=rf"^{url}arch/aitab is corrupt: its md5 is "):
        httpmedium.fetch_medium(url, "arch", "x86_64", str(tmp_path / "o2"), log(),
                               require_checksums=False)  # fmt: skip


def test_signature_files_are_fetched_beside_their_images(
    server: tuple[str, type[Handler]], tmp_path: Path
) -> None:
    url, handler = server
    medium(handler)
    (handler.root / "arch/x86_64/root.fs.sfs.sig").write_bytes(b"a signature")
    out = tmp_path / "out"
    out.mkdir()
    httpmedium.fetch_medium(
        url, "arch", "x86_64", str(out), log(), require_checksums=False,
        signatures=(".sig", ".cms.sig"),
    )  # fmt: skip
    assert (out / "arch/x86_64/root.fs.sfs.sig").read_bytes() == b"a signature"
    # One the server lacks is for verify= to report, with the image's name.
    assert not (out / "arch/x86_64/root.fs.sfs.cms.sig").exists()
