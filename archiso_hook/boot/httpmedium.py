"""Boot over HTTP, the medium: the aitab and this architecture's images fetched into RAM
laid out as on a medium, each with the checksum file the server has beside it (checked
before anything is mounted) and the signature files verify= needs. Each file is fetched
by httpfetch, which makes it whole or refuses it; `archiso-hook transfer URL...` uses
fetch_checked too."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable
from typing import Literal

from archiso_hook import checksums
from archiso_hook.aitab import AitabEntry, parse_aitab
from archiso_hook.boot.httpfetch import SMALL_LIMIT, Fetched, FetchError, NotFoundError, fetch
from archiso_hook.boot.transfer import Progress
from archiso_hook.log import Log
from archiso_hook.sizes import human


def _maybe(url: str, path: str, log: Log) -> bool:
    """Fetch a small optional file; False if the server has none."""
    try:
        fetch(url, path, log, limit=SMALL_LIMIT)
    except NotFoundError:
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
    signatures: tuple[str, ...] = (),
) -> list[Fetched]:
    """Fetch `<base_url><basedir>/aitab` and the images it lists for `arch` (and `any`),
    with their checksum files, into `root` laid out as on a medium; and beside each image
    its signature files (`signatures`: their suffixes) when the server has them, for
    verify= and cms_verify= to check."""
    base = f"{base_url}{basedir}"
    os.makedirs(f"{root}/{basedir}", exist_ok=True)
    aitab_path = f"{root}/{basedir}/aitab"
    try:
        fetch(f"{base}/aitab", aitab_path, log, limit=SMALL_LIMIT)
    except NotFoundError:
        raise FetchError(
            f"{base}/aitab is not on the server (HTTP 404)",
            hint=f"check archiso_http_srv= and archisobasedir={basedir}",
        ) from None
    seen: dict[str, str | None] = {}  # checksum files: URL -> local copy, or None
    _check_aitab(f"{base}/aitab", aitab_path, arch, log, seen)
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
                arch=arch,
                seen=seen,
            )
        )
        for suffix in signatures:
            url = f"{base}/{entry.arch}/{entry.filename}{suffix}"
            _maybe(url, f"{root}/{basedir}/{entry.arch}/{entry.filename}{suffix}", log)
    return results


def _check_aitab(url: str, path: str, arch: str, log: Log, seen: dict[str, str | None]) -> None:
    """The aitab against the server's checksum.<arch>.md5 (or checksum.md5), when one
    lists it (archiso's 2011-2014 layout); a mismatch is a refusal."""
    for source in checksums.aitab_sources(url, (arch,)):
        local_path = _copy_of(source.path, os.path.dirname(path), log, seen)
        if local_path is None:
            continue
        with open(local_path, encoding="utf-8", errors="surrogateescape") as f:
            text = f.read()
        with open(path, "rb") as f:
            if not checksums.check_aitab(text, source, url, f.read()):
                return
        log.info(f"{url}: md5 checksum verified against {source.path}")
        return


def _fetch_image(
    base: str,
    root: str,
    basedir: str,
    entry: AitabEntry,
    log: Log,
    *,
    require_checksums: bool,
    room_for: Callable[[str], Callable[[int], None]],
    arch: str,
    seen: dict[str, str | None],
) -> Fetched:
    directory = f"{root}/{basedir}/{entry.arch}"
    os.makedirs(directory, exist_ok=True)
    url = f"{base}/{entry.arch}/{entry.filename}"
    try:
        return fetch_checked(
            url,
            f"{directory}/{entry.filename}",
            log,
            checksum="required" if require_checksums else "if-present",
            room=room_for(entry.filename),
            arches=(arch,),
            seen=seen,
        )
    except NotFoundError:
        raise FetchError(
            f"{url} (aitab line {entry.line}) is not on the server (HTTP 404)",
            hint="the server's copy of the medium is incomplete",
        ) from None


def _copy_of(url: str, directory: str, log: Log, seen: dict[str, str | None]) -> str | None:
    """A small optional file of the server, downloaded into `directory` once per `seen`;
    its local path, or None if the server has none."""
    if url not in seen:
        local = os.path.join(directory, os.path.basename(url))
        seen[url] = local if _maybe(url, local, log) else None
    return seen[url]


def _expected_from_server(
    url: str, path: str, arches: tuple[str, ...], log: Log, seen: dict[str, str | None]
) -> checksums.Expected | None:
    """The digest the server's first checksum file of `url` gives (in any layout of
    checksums.sources), each file downloaded beside `path` once per `seen`."""
    for source in checksums.sources(url, arches):
        local_path = _copy_of(source.path, os.path.dirname(path), log, seen)
        if local_path is None:
            continue
        with open(local_path, encoding="utf-8", errors="surrogateescape") as f:
            return checksums.parse_source(f.read(), source)
    return None


def fetch_checked(
    url: str,
    path: str,
    log: Log,
    *,
    checksum: Literal["required", "if-present", "no"],
    room: Callable[[int], None] | None = None,
    deadline: float | None = None,
    required_by: str = "checksum=y",
    arches: tuple[str, ...] | None = None,
    seen: dict[str, str | None] | None = None,
) -> Fetched:
    """`url` to `path`, with the checksum file the server has beside it (`.sha512`, else
    `.md5`): `checksum` is "required" (by what `required_by` names), "if-present" or "no".
    A digest that differs is a FetchError naming both; the file stays where it is, and
    nothing is made of it."""
    name = os.path.basename(path)
    expected = None
    if arches is None:
        arches = checksums.arches_of(url)
    if checksum != "no":
        expected = _expected_from_server(url, path, arches, log, {} if seen is None else seen)
    if expected is None and checksum == "required":
        raise FetchError(
            f"{required_by}, but the server has no checksum of {url}: "
            + checksums.describe_sources(url, arches),
            hint=f"publish the checksum files beside the images, or leave out {required_by}",
        )
    meter: dict[str, Progress] = {}

    def progress(n: int, total: int | None) -> None:
        if "p" not in meter:
            meter["p"] = Progress(f"downloading {name}", total or 0, log.progress)
        meter["p"].add(n)

    start = time.monotonic()
    got = fetch(
        url,
        path,
        log,
        algorithm=expected.algorithm if expected else None,
        progress=progress,
        room=room,
        deadline=deadline,
    )
    seconds = max(time.monotonic() - start, 1e-9)
    log.info(
        f"fetched {name}: {human(got.size)} in {seconds:.1f} s "
        f"({human(got.size / seconds)}/s)"
        + (f", resumed {got.resumed} time(s)" if got.resumed else "")
    )
    if expected is not None:
        corrupt = expected.mismatch(url, got.digest)
        if corrupt:
            raise FetchError(
                corrupt, hint="fix the copy on the server; nothing was mounted from it"
            )
        log.info(f"{name}: {expected.algorithm} checksum verified")
    return got
