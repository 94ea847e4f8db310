"""Boot over HTTP: one file fetched whole, or refused (httpmedium fetches the medium's
files with it).

Any HTTP server will do (nginx, python -m http.server, a CDN). Each file is
streamed to the tmpfs and hashed as it arrives; a broken transfer is resumed
where it stopped (Range) after a back-off, for as long as the server comes back
within GIVE_UP seconds.

A file is whole or refused, whatever the server does:
- a resumed transfer is taken only from a 206 whose Content-Range starts at the byte
  asked for and names the size the first answer gave; a 200 instead (no Range support)
  starts over, if the size is the same; a 416 means "complete" only at the end of the
  file; a 206 to a request without Range, or more bytes than announced, is refused;
- every file has a cap: its announced size, the room in RAM (`room`), and `limit`
  (the aitab and checksum files are small); a transfer slower than MIN_RATE over
  STALL_WINDOW seconds counts as broken, and a file may be restarted at most
  MAX_RESTARTS times, so a server that drips a byte a second cannot hold the boot;
- what retrying cannot mend fails at once: a refusal above, an untrusted certificate,
  a URL that is not one, an HTTP 4xx (but 408 and 429), a redirect to another scheme
  than http or https (http may go to https, never back).
"""

from __future__ import annotations

import functools
import hashlib
import http.client
import os
import re
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

import attrs

from archiso_hook.errors import HookError
from archiso_hook.log import Log
from archiso_hook.sizes import human

# urllib.request imports ssl when it can; an image without OpenSSL boots over http only.
try:
    import ssl
except ImportError:  # pragma: no cover  (images without archiso_pxe_common's OpenSSL)
    ssl = None  # type: ignore[assignment]

CHUNK = 1 << 20
TIMEOUT = 20.0  # seconds without a byte before a connection counts as broken
GIVE_UP = 120.0  # seconds of failed attempts in a row (no chunk gained) before giving up
BACKOFF = (1.0, 2.0, 4.0, 8.0, 15.0)
MIN_RATE = 32 << 10  # bytes per second; slower over STALL_WINDOW counts as broken
STALL_WINDOW = 60.0
MAX_RESTARTS = 32  # resumes and restarts of one file
SMALL_LIMIT = 1 << 20  # the aitab and checksum files
USER_AGENT = "archiso-hook"
#: HTTP errors that may heal by waiting: a timeout, too many requests, the server's own.
_TRANSIENT_4XX = {408, 429}


class FetchError(HookError):
    pass


@attrs.frozen
class Fetched:
    url: str
    path: str
    size: int
    digest: str | None  # of the algorithm asked for
    resumed: int  # how many times the transfer was resumed


class NotFoundError(Exception):
    """The server has no such file (HTTP 404)."""


class _BrokenError(Exception):
    """The transfer broke off in a way that may heal: try again."""


class _SafeRedirects(urllib.request.HTTPRedirectHandler):
    """Redirects to the same scheme, or from http to https; anything else is refused."""

    def redirect_request(  # noqa: PLR0917 (urllib's signature)
        self, req: urllib.request.Request, fp: Any, code: int, msg: str, headers: Any, newurl: str
    ) -> urllib.request.Request | None:
        old, new = req.full_url.split(":", 1)[0].lower(), newurl.split(":", 1)[0].lower()
        if new not in (old, "https"):
            raise FetchError(
                f"cannot fetch {req.full_url}: the server redirects to {newurl}, "
                f"another scheme than {old}",
                hint="give the server's final URL",
            )
        return super().redirect_request(req, fp, code, msg, headers, newurl)


#: Where the archiso_pxe_http install hook puts the CA certificates the boot trusts.
CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"


@functools.cache
def _opener() -> urllib.request.OpenerDirector:
    """urllib with our redirects, and for https OpenSSL trusting CA_BUNDLE as well as its
    own default places: the frozen OpenSSL looks where it was built to (Debian's
    /usr/lib/ssl), which the initramfs does not have."""
    handlers: list[urllib.request.BaseHandler] = [_SafeRedirects()]
    if ssl is not None:
        context = ssl.create_default_context()
        if os.path.isfile(CA_BUNDLE):
            context.load_verify_locations(cafile=CA_BUNDLE)
        handlers.append(urllib.request.HTTPSHandler(context=context))
    return urllib.request.build_opener(*handlers)


def _open(url: str, offset: int, size: int | None) -> Any:
    """The server's answer for `url` from `offset` on; None if there is nothing left."""
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    if offset:
        request.add_header("Range", f"bytes={offset}-")
    try:
        return _opener().open(request, timeout=TIMEOUT)  # http or https: parse_http_server
    except urllib.error.HTTPError as e:
        if e.code == 404:
            raise NotFoundError() from None
        if e.code == 416 and offset:
            if offset == size:  # nothing past the end: the file is complete
                return None
            raise _refused(url, f"it answered 416 (nothing there) at byte {offset}", size) from None
        if 400 <= e.code < 500 and e.code not in _TRANSIENT_4XX:
            raise FetchError(f"cannot fetch {url}: HTTP {e.code} {e.reason}") from None
        raise
    except ValueError as e:  # not a URL urllib can open
        if url.lower().startswith("https:"):
            raise FetchError(
                f"cannot fetch {url}: this archiso-hook has no TLS (OpenSSL)",
                hint="add archiso_pxe_common to HOOKS, or ARCHISO_WITH_TLS=1 to mkinitcpio.conf",
            ) from None
        raise FetchError(f"cannot fetch {url}: {e}") from None
    except urllib.error.URLError as e:
        if type(e.reason).__name__ == "SSLCertVerificationError":
            raise FetchError(
                f"cannot fetch {url}: the server's certificate is not trusted: "
                f"{getattr(e.reason, 'verify_message', None) or e.reason}",
                hint="the initramfs trusts the CA certificates of the system that built it, "
                "or those of ARCHISO_CA_BUNDLE= in mkinitcpio.conf",
            ) from None
        raise


def _refused(url: str, what: str, size: int | None) -> FetchError:
    of = f" (a file of {size} bytes)" if size is not None else ""
    return FetchError(
        f"refusing {url}: {what}{of}; the server does not serve this file consistently",
        hint="fix or replace the server; nothing was mounted from it",
    )


_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")


def _length(response: Any) -> int | None:
    value = response.headers.get("Content-Length")
    return int(value) if value and value.isdigit() else None


def fetch(
    url: str,
    path: str,
    log: Log,
    *,
    algorithm: str | None = None,
    progress: Callable[[int, int | None], None] | None = None,
    room: Callable[[int], None] | None = None,
    limit: int | None = None,
    deadline: float | None = None,
) -> Fetched:
    """Download `url` to `path`, resuming after failures; hash it on the way.

    `room(size)` is called with the file's size as soon as it is known (before its first
    byte is written; as it grows when the server announces none), to refuse a download
    the tmpfs cannot hold (never ENOSPC half-way). `limit` caps the file's size, and
    `deadline` the seconds the whole download may take.
    """
    hasher = hashlib.new(algorithm) if algorithm else None
    buffer = memoryview(bytearray(CHUNK))  # each chunk received into it, written, hashed
    offset = 0
    resumed = restarts = attempt = 0
    failing_since: float | None = None
    started = time.monotonic()
    size: int | None = None
    with open(path, "wb") as out:
        while True:
            gained = 0
            try:
                response = _open(url, offset, size)
                if response is None:
                    break
                with response:
                    first = size is None and offset == 0
                    size, restart = _check_answer(url, response, offset, size, limit)
                    if restart:  # no Range support: the same file from its start
                        log.warning(f"{url}: the server cannot resume; starting over")
                        out.seek(0)
                        out.truncate()
                        offset = 0
                        hasher = hashlib.new(algorithm) if algorithm else None
                    if first and size is not None and room:
                        room(size)
                    window_start, window_bytes = time.monotonic(), 0
                    receive = _receiver(response)
                    while n := receive(buffer):
                        chunk = buffer[:n]
                        cap = size if size is not None else limit
                        if cap is not None and offset + n > cap:
                            raise _refused(url, f"it sent more than {cap} bytes", size)
                        if size is None and room:
                            room(offset + n)
                        out.write(chunk)
                        if hasher:
                            hasher.update(chunk)
                        offset += n
                        gained += n
                        if progress:
                            progress(n, size)
                        window_bytes += n
                        now = time.monotonic()
                        if now - window_start >= STALL_WINDOW:
                            if window_bytes < MIN_RATE * (now - window_start):
                                raise _BrokenError(
                                    f"{human(window_bytes / (now - window_start))}/s, less "
                                    f"than {human(MIN_RATE)}/s"
                                )
                            window_start, window_bytes = now, 0
                        if deadline is not None and now - started > deadline:
                            raise FetchError(
                                f"cannot fetch {url}: not complete after {deadline:g} s "
                                f"({human(offset)} fetched)"
                            )
                if size is None or offset >= size:
                    break
                raise http.client.IncompleteRead(b"", size - offset)
            except NotFoundError:
                raise
            except urllib.error.HTTPError as e:
                error = f"HTTP {e.code} {e.reason}"
            except _BrokenError as e:
                error = str(e)
            except (OSError, http.client.HTTPException) as e:
                error = _describe(e)
            now = time.monotonic()
            if gained >= CHUNK:  # a real step forward, not a trickle
                failing_since, attempt = None, 0
            failing_since = failing_since or now
            if now - failing_since > GIVE_UP:
                raise FetchError(
                    f"cannot fetch {url}: {error}; no progress for {GIVE_UP:g} s, "
                    f"{human(offset)} fetched",
                    hint="is the server up, and reachable from this machine?",
                )
            restarts += 1
            if restarts > MAX_RESTARTS:
                raise FetchError(
                    f"cannot fetch {url}: {error}; the transfer broke off {restarts} times, "
                    f"{human(offset)} fetched",
                    hint="check the network and the server",
                )
            delay = BACKOFF[min(attempt, len(BACKOFF) - 1)]
            attempt += 1
            if offset:
                resumed += 1
            if deadline is not None and now + delay - started > deadline:
                raise FetchError(
                    f"cannot fetch {url}: {error}; not complete after {deadline:g} s "
                    f"({human(offset)} fetched)"
                )
            log.warning(
                f"{url}: {error}; retrying in {delay:g} s"
                + (f" from {human(offset)}" if offset else "")
            )
            time.sleep(delay)
    return Fetched(url, path, offset, hasher.hexdigest() if hasher else None, resumed)


def _receiver(response: Any) -> Callable[[memoryview], int]:
    """What reads the body into a buffer: as much as has arrived, without waiting to fill
    it (so that a trickle is seen as one), never past the announced length (as read1).
    A body of known length is received straight into the buffer (readinto1); a chunked
    one, or one that ends with the connection, through read1 and a copy."""
    fp: Any = getattr(response, "fp", None)
    if response.chunked or response.length is None or not hasattr(fp, "readinto1"):

        def copy(buffer: memoryview) -> int:
            data = response.read1(len(buffer))
            buffer[: len(data)] = data
            return len(data)

        return copy

    def receive(buffer: memoryview) -> int:
        want = min(len(buffer), response.length)
        if not want:
            return 0
        n: int = fp.readinto1(buffer[:want])
        response.length -= n
        return n

    return receive


def _check_answer(
    url: str, response: Any, offset: int, size: int | None, limit: int | None
) -> tuple[int | None, bool]:
    """The file's size, and whether the answer starts it over; a FetchError for an answer
    that would make a wrong file."""
    status = response.status
    if status not in (200, 206):
        raise _refused(url, f"it answered {status} to a download", size)
    if status == 206:
        if not offset:
            raise _refused(url, "it answered 206 (a part) to a request for the whole file", size)
        match = _CONTENT_RANGE.fullmatch(response.headers.get("Content-Range", "").strip())
        if match is None or match.group(3) == "*":
            raise _refused(url, "its 206 has no usable Content-Range", size)
        start, total = int(match.group(1)), int(match.group(3))
        if start != offset:
            raise _refused(url, f"asked for bytes from {offset}, it sent them from {start}", size)
        if size is not None and total != size:
            raise _refused(url, f"it now says the file has {total} bytes", size)
        announced: int | None = total
    else:
        announced = _length(response)
        if size is not None and announced is not None and announced != size:
            raise _refused(url, f"it now sends a file of {announced} bytes", size)
    if limit is not None and announced is not None and announced > limit:
        raise FetchError(
            f"refusing {url}: it has {human(announced)}, more than the {human(limit)} "
            "such a file may have"
        )
    return (size if size is not None else announced), (status == 200 and bool(offset))


def _describe(error: BaseException) -> str:
    if isinstance(error, urllib.error.URLError):
        reason = error.reason
        return reason.strerror or str(reason) if isinstance(reason, OSError) else str(reason)
    if isinstance(error, socket.timeout | TimeoutError):
        return f"no data for {TIMEOUT:g} s"
    if isinstance(error, http.client.IncompleteRead):
        return "the connection closed early"
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    return str(error) or type(error).__name__
