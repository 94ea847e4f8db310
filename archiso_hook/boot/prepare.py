"""copytoram= and checksum=: read the images once, copying them to RAM and/or hashing
them, then release the medium. Imported only when a boot copies or verifies (hashlib,
threads); the decision to is images.prepare_images's."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING

from archiso_hook import checksums
from archiso_hook.boot import transfer
from archiso_hook.errors import HookError
from archiso_hook.paths import BOOTMNT, IMG_DEV_MNT
from archiso_hook.sizes import human
from archiso_hook.steps import Mount, PrepareImages

if TYPE_CHECKING:
    from archiso_hook.boot.executor import Boot


def copy_and_verify(boot: Boot, step: PrepareImages, sizes: Sequence[int], *, copy: bool) -> None:
    arches = (str(boot.options.arch),)
    expected = [
        transfer.expected_digest(
            path,
            arches,
            required_by="checksum=y",
            hint="make the medium with archiso-hook build, which writes them, or boot "
            "without checksum=y",
        )
        for path in step.images
    ] if step.verify else []  # fmt: skip
    if copy:
        boot.do(
            Mount(
                "copytoram",
                step.copy_to,
                "tmpfs",
                read_only=False,
                options=f"size={step.copy_size},mode=0755",
            )
        )
    destinations = [f"{step.copy_to}/{os.path.basename(p)}" if copy else None for p in step.images]
    what = " and ".join(w for w, on in (("copying to RAM", copy), ("verifying", step.verify)) if on)
    progress = transfer.Progress(what, sum(sizes), boot.log.progress)
    checked = transfer.read_checked(step.images, destinations, expected, progress)
    if checked.corrupt:
        raise HookError(
            checked.corrupt[0],
            hint="the download or the copy of the medium is damaged: fetch or write "
            "it again; nothing was mounted from it",
        )
    seconds = checked.seconds
    jobs = [result.job for result in checked.results]
    rate = sum(sizes) / seconds if seconds else 0.0
    boot.log.info(
        f"{what}: {len(jobs)} image(s), {human(sum(sizes))} in {seconds:.1f} s "
        f"({human(rate)}/s){'; checksums match' if step.verify else ''}"
    )
    boot.state.timings["prepare_images_seconds"] = round(seconds, 3)
    if copy:
        boot.image_paths.update((job.source, str(job.destination)) for job in jobs)
        for job in jobs:  # what vouches for each image goes along (verify=)
            for suffix in step.companions:
                _copy_small(job.source + suffix, f"{job.destination}{suffix}")
        release_medium(boot)


def release_medium(boot: Boot) -> None:
    """Everything on the medium is in RAM: unmount it so it can be removed."""
    keys = {f"mount:{BOOTMNT}", f"mount:{IMG_DEV_MNT}"}
    medium = boot.refs.get("medium")
    if medium is not None and not isinstance(medium, str):
        keys.add(f"loop:{medium.path}")
    if boot.options.nbd_srv is not None:
        keys.add(f"nbd:{medium}")
    if boot.release(keys, why="releasing the medium"):
        boot.log.warning("the medium could not be released; it must stay attached")
        return
    if boot.options.network_source:
        boot.log.info("released the server's medium: the images are in RAM")
        boot.call("archiso_hook.boot.netboot:network_done", boot)
    else:
        boot.log.info("released the medium: it can be removed now")


def check_aitab(boot: Boot, path: str, data: bytes) -> None:
    """checksum=y: the aitab too, when the medium's checksum.<arch>.md5 (or
    checksum.md5) lists it, as archiso's `md5sum -c` checked it."""
    for source in checksums.aitab_sources(path, (str(boot.options.arch),)):
        try:
            with open(source.path, encoding="utf-8", errors="replace") as f:
                text = f.read()
        except FileNotFoundError:
            continue
        except OSError as e:
            raise HookError(f"cannot read {source.path}: {e.strerror}") from None
        if checksums.check_aitab(text, source, path, data):
            boot.log.info(f"{path}: md5 checksum verified against {source.path}")
        return


def _copy_small(source: str, destination: str, limit: int = 1 << 20) -> None:
    """A signature file beside an image, copied along to RAM if the medium has it."""
    try:
        with open(source, "rb") as f:
            data = f.read(limit + 1)
    except FileNotFoundError:
        return  # its absence is for the signature check to report
    if len(data) > limit:
        raise HookError(f"{source} has more than {human(limit)}: not a signature")
    with open(destination, "wb") as f:
        f.write(data)
