"""What vouches for the images at boot: their checksum files (a `<image>.sha512` each, or
archiso's 2011 layout) and detached signatures (gpg, openssl cms)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import attrs

from archiso_hook.build.context import BuiltImage
from archiso_hook.build.hosttools import Log, run_tool
from archiso_hook.errors import InputError


@attrs.frozen
class Signing:
    """Detached signatures beside each image, for verify= and cms_verify= at boot.

    `gpg_key`: a key of the caller's GnuPG keyring (GNUPGHOME, else ~/.gnupg) that signs
    `<image>.sig`. `cms`: a code-signing certificate and its private key (PEM) that sign
    `<image>.cms.sig` (DER), as mkarchiso signs with `openssl cms -sign`."""

    gpg_key: str | None = None
    cms: tuple[Path, Path] | None = None


def sign_image(image: Path, signing: Signing, log: Log) -> None:
    """`<image>.sig` and/or `<image>.cms.sig`, as `signing` asks."""
    if signing.gpg_key is not None:
        home = os.environ.get("GNUPGHOME") or os.path.expanduser("~/.gnupg")
        run_tool(
            ["gpg", "--batch", "--yes", "--quiet", "--local-user", signing.gpg_key,
             "--detach-sign", "--output", f"{image}.sig", str(image)],
            log, env={"GNUPGHOME": home, "HOME": os.path.expanduser("~")},
        )  # fmt: skip
    if signing.cms is not None:
        cert, key = signing.cms
        run_tool(
            ["openssl", "cms", "-sign", "-binary", "-noattr", "-in", str(image),
             "-signer", str(cert), "-inkey", str(key), "-outform", "DER",
             "-out", f"{image}.cms.sig"],
            log,
        )  # fmt: skip


CHECKSUM_LAYOUTS = ("image", "archiso-2011")


def _md5(path: Path) -> str:
    digest = hashlib.md5()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_checksums_2011(media: Path, images: list[BuiltImage], log: Log) -> list[BuiltImage]:
    """`<basedir>/checksum.<arch>.md5` for each architecture (in md5sum's format, paths
    relative to the base directory, as `md5sum -c` run there reads them): the aitab,
    the architecture's images and those of `any`. The images, each with its file."""
    arches = sorted({image.arch for image in images} - {"any"})
    if not arches:
        raise InputError(
            "the archiso-2011 checksum layout names its files by architecture: "
            "build at least one image that is not `any`"
        )
    aitab_md5 = _md5(media / "aitab")
    digests = {image.path: _md5(image.path) for image in images}
    files: dict[str, Path] = {}
    for arch in arches:
        lines = [f"{aitab_md5}  aitab"]
        lines += [
            f"{digests[image.path]}  {image.arch}/{image.path.name}"
            for image in images
            if image.arch in (arch, "any")
        ]
        files[arch] = media / f"checksum.{arch}.md5"
        files[arch].write_text("\n".join(lines) + "\n", encoding="utf-8")
        log(f"wrote {files[arch]}")
    return [
        attrs.evolve(image, checksum=files.get(image.arch, files[arches[0]])) for image in images
    ]


def write_checksum(image: Path) -> Path:
    """`<image>.sha512` in sha512sum's format, naming the image by its bare file name."""
    digest = hashlib.sha512()
    with image.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    checksum = image.with_name(image.name + ".sha512")
    checksum.write_text(f"{digest.hexdigest()}  {image.name}\n", encoding="utf-8")
    return checksum
