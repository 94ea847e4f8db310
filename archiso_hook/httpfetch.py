"""Boot over HTTP: fetch the aitab and this architecture's images into RAM.

Any HTTP server will do (nginx, python -m http.server, a CDN). Each file is
streamed to the tmpfs and hashed as it arrives; a broken transfer is resumed
where it stopped (Range) after a back-off, for as long as the server comes back
within GIVE_UP seconds. Checksum files beside the images (`.sha512`, or `.md5`)
are fetched too and, when present, checked before anything is mounted.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import os
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

import attrs

from archiso_hook import checksums
from archiso_hook.aitab import AitabEntry, parse_aitab
from archiso_hook.errors import HookError
from archiso_hook.log import Log
from archiso_hook.sizes import human
from archiso_hook.transfer import Progress

CHUNK = 1 << 20
TIMEOUT = 20.0  # seconds without a byte before a connection counts as broken
GIVE_UP = 120.0  # seconds of failed attempts in a row (no byte gained) before giving up
BACKOFF = (1.0, 2.0, 4.0, 8.0, 15.0)
USER_AGENT = "archiso-hook"


class FetchError(HookError):
    pass


@attrs.frozen
class Fetched:
    url: str
    path: str
    size: int
    digest: str | None  # of the algorithm asked for
    resumed: int  # how many times the transfer was resumed


class _NotFoundError(Exception):
    pass


def _open(url: str, offset: int) -> Any:
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    if offset:
        request.add_header("Range", f"bytes={offset}-")
    try:
        return urllib.request.urlopen(request, timeout=TIMEOUT)  # http or https: parse_http_server
    except urllib.error.HTTPError as e:
        if e.code == 404:
            raise _NotFoundError() from None
        if e.code == 416 and offset:  # nothing left past the offset: the file is complete
            return None
        raise


def _total(response: Any, offset: int) -> int | None:
    if response.status == 206:
        content_range = response.headers.get("Content-Range", "")
        total = content_range.rpartition("/")[2]
        return int(total) if total.isdigit() else None
    length = response.headers.get("Content-Length")
    return int(length) if length and length.isdigit() else None


def fetch(
    url: str,
    path: str,
    log: Log,
    *,
    algorithm: str | None = None,
    progress: Callable[[int, int | None], None] | None = None,
    room: Callable[[int], None] | None = None,
) -> Fetched:
    """Download `url` to `path`, resuming after failures; hash it on the way.

    `room(size)` is called with the file's full size before its first byte is
    written, to refuse a download the tmpfs cannot hold (never ENOSPC half-way).
    """
    hasher = hashlib.new(algorithm) if algorithm else None
    offset = 0
    resumed = 0
    failing_since: float | None = None
    attempt = 0
    size: int | None = None
    buffer = bytearray(CHUNK)
    view = memoryview(buffer)
    with open(path, "wb") as out:
        while True:
            try:
                response = _open(url, offset)
                if response is None:
                    break
                with response:
                    if offset and response.status != 206:  # no Range support: start over
                        log.warning(f"{url}: the server cannot resume; starting over")
                        out.seek(0)
                        out.truncate()
                        offset = 0
                        hasher = hashlib.new(algorithm) if algorithm else None
                    total = _total(response, offset)
                    if size is None and total is not None:
                        size = total
                        if room:
                            room(size)
                    # One buffer for the whole file: no new bytes object per chunk.
                    while n := response.readinto(buffer):
                        chunk = view[:n]
                        out.write(chunk)
                        if hasher:
                            hasher.update(chunk)
                        offset += n
                        failing_since, attempt = None, 0
                        if progress:
                            progress(n, size)
                if size is None or offset >= size:
                    break
                raise http.client.IncompleteRead(b"", size - offset)
            except _NotFoundError:
                raise
            except urllib.error.HTTPError as e:
                if e.code < 500:
                    raise FetchError(f"cannot fetch {url}: HTTP {e.code} {e.reason}") from None
                error = f"HTTP {e.code} {e.reason}"
            except (OSError, http.client.HTTPException, ValueError) as e:
                error = _describe(e)
            now = time.monotonic()
            failing_since = failing_since or now
            if now - failing_since > GIVE_UP:
                raise FetchError(
                    f"cannot fetch {url}: {error}; no progress for {GIVE_UP:g} s, "
                    f"{human(offset)} fetched",
                    hint="is the server up, and reachable from this machine?",
                )
            delay = BACKOFF[min(attempt, len(BACKOFF) - 1)]
            attempt += 1
            if offset:
                resumed += 1
            log.warning(
                f"{url}: {error}; retrying in {delay:g} s"
                + (f" from {human(offset)}" if offset else "")
            )
            time.sleep(delay)
    return Fetched(url, path, offset, hasher.hexdigest() if hasher else None, resumed)


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


def _maybe(url: str, path: str, log: Log) -> bool:
    """Fetch a small optional file; False if the server has none."""
    try:
        fetch(url, path, log)
    except _NotFoundError:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        return False
    return True


def fetch_medium(
    base_url: str,
    basedir: str,
    arch: str,
    root: str,
    log: Log,
    *,
    require_checksums: bool,
) -> list[Fetched]:
    """Fetch `<base_url><basedir>/aitab` and the images it lists for `arch` (and `any`),
    with their checksum files, into `root` laid out as on a medium."""
    base = f"{base_url}{basedir}"
    os.makedirs(f"{root}/{basedir}", exist_ok=True)
    aitab_path = f"{root}/{basedir}/aitab"
    try:
        fetch(f"{base}/aitab", aitab_path, log)
    except _NotFoundError:
        raise FetchError(
            f"{base}/aitab is not on the server (HTTP 404)",
            hint=f"check archiso_http_srv= and archisobasedir={basedir}",
        ) from None
    with open(aitab_path, encoding="utf-8", errors="surrogateescape") as f:
        entries = parse_aitab(f.read(), f"{base}/aitab")
    selected = [e for e in entries if e.arch in (arch, "any")]
    fs = os.statvfs(root)
    free = fs.f_bavail * fs.f_frsize
    sizes: dict[str, int] = {}

    def room_for(name: str) -> Callable[[int], None]:
        def check(size: int) -> None:
            sizes[name] = size
            used = sum(sizes.values())
            if used > free:
                raise FetchError(
                    f"the images do not fit in RAM: {human(used)} so far, and "
                    f"archiso_http_spc gives {human(free)}",
                    hint="raise archiso_http_spc= (or the machine's memory)",
                )

        return check

    results = []
    for entry in selected:
        results.append(
            _fetch_image(
                base,
                root,
                basedir,
                entry,
                log,
                require_checksums=require_checksums,
                room_for=room_for,
            )
        )
    return results


def _fetch_image(
    base: str,
    root: str,
    basedir: str,
    entry: AitabEntry,
    log: Log,
    *,
    require_checksums: bool,
    room_for: Callable[[str], Callable[[int], None]],
) -> Fetched:
    directory = f"{root}/{basedir}/{entry.arch}"
    os.makedirs(directory, exist_ok=True)
    url = f"{base}/{entry.arch}/{entry.filename}"
    path = f"{directory}/{entry.filename}"
    expected = None
    for algorithm, _ in checksums.ALGORITHMS:
        sums = f"{path}.{algorithm}"
        if _maybe(f"{url}.{algorithm}", sums, log):
            with open(sums, encoding="utf-8", errors="surrogateescape") as f:
                expected = checksums.parse(f.read(), f"{url}.{algorithm}", entry.filename)
            break
    if expected is None and require_checksums:
        raise FetchError(
            f"checksum=y, but the server has no {url}.sha512 (or .md5)",
            hint="publish the checksum files beside the images, or boot without checksum=y",
        )
    meter: dict[str, Progress] = {}

    def progress(n: int, total: int | None) -> None:
        if "p" not in meter:
            meter["p"] = Progress(f"downloading {entry.filename}", total or 0, log.progress)
        meter["p"].add(n)

    start = time.monotonic()
    try:
        got = fetch(
            url,
            path,
            log,
            algorithm=expected.algorithm if expected else None,
            progress=progress,
            room=room_for(entry.filename),
        )
    except _NotFoundError:
        raise FetchError(
            f"{url} (aitab line {entry.line}) is not on the server (HTTP 404)",
            hint="the server's copy of the medium is incomplete",
        ) from None
    seconds = max(time.monotonic() - start, 1e-9)
    log.info(
        f"fetched {entry.filename}: {human(got.size)} in {seconds:.1f} s "
        f"({human(got.size / seconds)}/s)"
        + (f", resumed {got.resumed} time(s)" if got.resumed else "")
    )
    if expected is not None:
        if got.digest != expected.digest:
            raise FetchError(
                f"{url} is corrupt: its {expected.algorithm} is {got.digest}, "
                f"but {expected.source} says {expected.digest}",
                hint="fix the copy on the server; nothing was mounted from it",
            )
        log.info(f"{entry.filename}: {expected.algorithm} checksum verified")
    return got
