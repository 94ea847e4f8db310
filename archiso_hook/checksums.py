"""Checksum files of a medium, in every layout archiso media have used. Pure parsing
and naming: reading and comparing is transfer.py's (and httpfetch's over HTTP).

Where an image's checksum may be, looked for in this order (the first file found is
the one used):

| file (for `<basedir>/x86_64/airootfs.sfs`) | names the image as | made by |
|---|---|---|
| `x86_64/airootfs.sfs.sha512`, `.md5` | `airootfs.sfs` | `archiso-hook build` |
| `x86_64/airootfs.sha512`, `.md5` | `airootfs.sfs` | archiso 2014 (md5), 2017- (sha512) |
| `<basedir>/checksum.x86_64.md5` | `x86_64/airootfs.sfs` | archiso 2011-11..2014, with `aitab` |
| `<basedir>/checksum.md5` | `x86_64/airootfs.sfs` | archiso 2011-08 |

The two files at the top of the base directory also vouch for the aitab, which the
boot checks with checksum=y as archiso's `md5sum -c` did.
"""

from __future__ import annotations

import hashlib
import os
import posixpath
import re

import attrs

from archiso_hook.errors import HookError, InputError

# Preferred first.
ALGORITHMS = (("sha512", 128), ("md5", 32))
_LINE = re.compile(r"^([0-9A-Fa-f]+) [ *](.+)$")


@attrs.frozen
class Expected:
    algorithm: str
    digest: str  # lower-case hex
    source: str  # the checksum file

    def mismatch(self, name: str, digest: str | None) -> str | None:
        """The sentence saying that `name`, whose digest is `digest`, is corrupt; None
        when the digest is the one expected."""
        if digest == self.digest:
            return None
        return (
            f"{name} is corrupt: its {self.algorithm} is {digest}, "
            f"but {self.source} says {self.digest}"
        )


@attrs.frozen
class Source:
    """A place a checksum of one file may be: a path, or a URL."""

    path: str  # the checksum file
    name: str  # the file, as that checksum file names it
    algorithm: str


def sources(image: str, arches: tuple[str, ...]) -> list[Source]:
    """Where a checksum of `image` (`<basedir>/<dir>/<file>`, a path or a URL) may be,
    in the order looked for. `arches`: whose checksum.<arch>.md5 may list it (an image
    of `any` is in the booting architecture's)."""
    directory, filename = posixpath.split(image)
    basedir, subdir = posixpath.split(directory)
    stem = filename.split(".", 1)[0]
    found = [Source(f"{image}.{a}", filename, a) for a, _ in ALGORITHMS]
    if stem and stem != filename:
        found += [Source(f"{directory}/{stem}.{a}", filename, a) for a, _ in ALGORITHMS]
    # A URL's directory must be below the server's root for a base directory to exist.
    below_root = "://" not in directory or "/" in directory.split("://", 1)[1]
    if basedir and subdir and below_root:
        relative = f"{subdir}/{filename}"
        found += [Source(f"{basedir}/checksum.{arch}.md5", relative, "md5") for arch in arches]
        found.append(Source(f"{basedir}/checksum.md5", relative, "md5"))
    return found


def aitab_sources(aitab: str, arches: tuple[str, ...]) -> list[Source]:
    """The checksum files that may vouch for the aitab at `<basedir>/aitab`."""
    basedir = posixpath.dirname(aitab)
    names = [f"checksum.{arch}.md5" for arch in arches] + ["checksum.md5"]
    return [Source(f"{basedir}/{name}", "aitab", "md5") for name in names]


def find(image: str, arches: tuple[str, ...]) -> Source | None:
    """The first checksum file of `sources` that exists on this machine, or None."""
    return next((s for s in sources(image, arches) if os.path.exists(s.path)), None)


def arches_of(image: str) -> tuple[str, ...]:
    """Whose checksum.<arch>.md5 may list an image found by its path (or URL) alone:
    that of the directory it is in; for `any`, each such file beside the base directory
    (for a URL, this machine's)."""
    directory = posixpath.dirname(image)
    subdir = posixpath.basename(directory)
    if subdir != "any":
        return (subdir,)
    if "://" in image:
        machine = os.uname().machine
        return ("i686",) if machine in ("i386", "i486", "i586", "i686") else (machine,)
    try:
        names = sorted(os.listdir(posixpath.dirname(directory) or "."))
    except OSError:
        return ()
    return tuple(
        name.removeprefix("checksum.").removesuffix(".md5")
        for name in names
        if name.startswith("checksum.") and name.endswith(".md5") and name.count(".") == 2
    )


def describe_sources(image: str, arches: tuple[str, ...]) -> str:
    """What was looked for, in a sentence."""
    directory, filename = posixpath.split(image)
    stem = filename.split(".", 1)[0]
    basedir = posixpath.dirname(directory)
    text = f"no {filename}.sha512 or .md5 beside it"
    if stem and stem != filename:
        text += f", nor {stem}.sha512 or .md5"
    sums = " or ".join([f"checksum.{arch}.md5" for arch in arches] + ["checksum.md5"])
    return f"{text}, nor {sums} in {basedir}"


def check_aitab(text: str, source: Source, aitab: str, data: bytes) -> bool:
    """Whether the checksum file `source` (holding `text`) vouches for the aitab `data`
    read from `aitab`: False when it does not list it (a layout for the images only);
    a different digest is a HookError."""
    if not any(line.rstrip("\r").endswith(" aitab") for line in text.splitlines()):
        return False
    expected = parse_source(text, source)
    corrupt = expected.mismatch(aitab, hashlib.md5(data).hexdigest())
    if corrupt:
        raise HookError(corrupt, hint="write the medium again (or fix the server's copy of it)")
    return True


def parse_source(text: str, source: Source) -> Expected:
    """The digest `source`'s file (with `text`) gives for its image."""
    return parse(text, source.path, source.name)


def parse(text: str, path: str, name: str) -> Expected:
    """The digest a checksum file gives for `name`: a file of its own directory (a bare
    name), or below it (`x86_64/airootfs.sfs` in a file at the top of the base directory).

    The algorithm is the file's extension. A line naming an absolute path or one with
    `..` refuses the whole file: a checksum file cannot vouch for anything outside its
    directory, and one that tries is not trusted for the rest either.
    """
    algorithm, length = next((a, n) for a, n in ALGORITHMS if path.endswith(f".{a}"))
    found: str | None = None
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.startswith("#"):
            continue
        match = _LINE.match(line.rstrip("\r"))
        if not match or len(match.group(1)) != length:
            raise InputError(
                f"{path}:{lineno}: not a {algorithm} checksum line "
                f"(expected {length} hex digits, two spaces and a file name)"
            )
        listed = match.group(2)
        normal = posixpath.normpath(listed)
        if listed.startswith("/") or normal == ".." or normal.startswith("../"):
            raise InputError(
                f"{path}:{lineno}: lists {listed!r}, a path outside "
                "the directory of the checksum file; refusing this checksum file"
            )
        if normal == name:
            found = match.group(1).lower()
    if found is None:
        raise InputError(f"{path}: has no {algorithm} checksum for {name}")
    return Expected(algorithm, found, path)
