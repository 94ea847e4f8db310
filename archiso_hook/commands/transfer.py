"""`archiso-hook transfer`: read images once (copy and/or verify) with the engine of
copytoram= and checksum=, or download URLs with the engine of archiso_http_srv=."""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING

from archiso_hook import checksums
from archiso_hook.boot import httpfetch, httpmedium, transfer
from archiso_hook.errors import InputError, printable
from archiso_hook.log import Log
from archiso_hook.sizes import human

if TYPE_CHECKING:
    import argparse


def run(args: argparse.Namespace) -> int:
    log = Log(quiet=args.quiet)
    if any("://" in image for image in args.images):
        return _transfer_urls(args, log)
    if args.timeout is not None:
        raise InputError("--timeout is for URLs: a file on this machine is read as it is")
    expected = [
        transfer.expected_digest(image, checksums.arches_of(image), required_by=None)
        for image in args.images
    ] if args.verify else []  # fmt: skip
    destinations = [os.path.join(args.to, os.path.basename(i)) if args.to else None
                    for i in args.images]  # fmt: skip
    total = sum(os.stat(image).st_size for image in args.images)
    what = " and ".join(w for w, on in (("copying", args.to), ("verifying", args.verify)) if on)
    progress = transfer.Progress(what or "reading", total, log.progress)
    checked = transfer.read_checked(args.images, destinations, expected, progress)
    for line in checked.corrupt:
        log.error(line)
    seconds = checked.seconds
    print(
        f"{what or 'read'}: {len(checked.results)} image(s), {total} bytes in {seconds:.3f} s "
        f"({human(total / seconds if seconds else 0)}/s)"
        + ("; checksums match" if not checked.corrupt else "")
    )
    return 1 if checked.corrupt else 0


def _transfer_urls(args: argparse.Namespace, log: Log) -> int:
    """Download URLs with the boot's HTTP engine: one line per failure, exit 1 if any."""
    if not all("://" in image for image in args.images):
        raise InputError("give either files on this machine or URLs, not both")
    if args.to is None:
        raise InputError("URLs need --to DIR: the directory to download them into")
    if args.timeout is not None and args.timeout <= 0:
        raise InputError(f"--timeout {args.timeout:g} is not valid: expected seconds above 0")
    os.makedirs(args.to, exist_ok=True)
    start = time.monotonic()
    total = failed = 0
    for url in args.images:
        name = os.path.basename(url.split("?", 1)[0].rstrip("/"))
        try:
            got = httpmedium.fetch_checked(
                url,
                os.path.join(args.to, name),
                log,
                checksum="required" if args.verify else "no",
                deadline=args.timeout,
                required_by="--verify",
            )
        except httpfetch.FetchError as e:
            log.error(printable(str(e)))
            failed += 1
            continue
        except httpfetch.NotFoundError:
            log.error(f"{url} is not on the server (HTTP 404)")
            failed += 1
            continue
        total += got.size
    seconds = time.monotonic() - start
    done = len(args.images) - failed
    print(
        f"fetched: {done} of {len(args.images)} file(s), {total} bytes in {seconds:.3f} s "
        f"({human(total / seconds if seconds else 0)}/s)"
        + ("; checksums match" if args.verify and not failed else "")
    )
    return 1 if failed else 0
