"""Fetch a Debian kernel for the lab: an uncompressed vmlinux plus a module tree.

`fetch_kernel()` resolves the current kernel package of the architecture from apt
(`apt-cache depends linux-image-amd64`), downloads it with `apt-get download`, unpacks it
with `dpkg-deb -x`, runs `depmod` on the unpacked tree and extracts the ELF vmlinux from
the bzImage (QEMU boots an ELF vmlinux through its PVH entry point, which saves the
in-guest decompression: ~2.3 s per boot under TCG).

Everything is cached under `<lab>/kernel/<package>_<version>/`; a cache entry is
published with an atomic rename, and builders serialise on a lock file, so concurrent
callers (several pytest processes) are safe.
"""

from __future__ import annotations

import fcntl
import functools
import lzma
import os
import re
import shutil
import struct
import subprocess
import tempfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import attrs

from vm import cache_dir

__all__ = [
    "ARCHES",
    "Arch",
    "Kernel",
    "KernelError",
    "extract_vmlinux",
    "fetch_kernel",
    "has_pvh_entry",
    "resolve_kernel_package",
]


class KernelError(RuntimeError):
    """The kernel could not be resolved, downloaded or unpacked."""


@attrs.frozen
class Arch:
    """How one lab architecture maps onto Debian packages and QEMU."""

    name: str
    #: dpkg architecture, e.g. "amd64"
    dpkg: str
    #: the meta package that depends on the current kernel ABI package
    meta_package: str
    #: ELF e_machine of the vmlinux
    elf_machine: int
    #: ELF class: 1 = 32 bit, 2 = 64 bit
    elf_class: int
    qemu: str

    def qualify(self, package: str) -> str:
        """`package` with the `:arch` qualifier apt needs for a foreign architecture."""
        native = _native_dpkg_arch()
        return package if self.dpkg == native else f"{package}:{self.dpkg}"


ARCHES: dict[str, Arch] = {
    "x86_64": Arch("x86_64", "amd64", "linux-image-amd64", 62, 2, "qemu-system-x86_64"),
    "i686": Arch("i686", "i386", "linux-image-686", 3, 1, "qemu-system-i386"),
}


@attrs.frozen
class Kernel:
    """An unpacked Debian kernel ready to boot in QEMU."""

    #: kernel release (`uname -r`), e.g. "6.1.0-56-amd64"
    version: str
    #: uncompressed ELF kernel (boot it with `-kernel`)
    vmlinux: Path
    #: the original bzImage (`/boot/vmlinuz-<version>`)
    bzimage: Path
    #: directory containing `lib/modules/<version>/` (depmod already run)
    moduleroot: Path
    arch: str
    #: Debian package version, e.g. "6.1.192-2"
    package_version: str = ""
    #: the vmlinux has a PVH entry point (QEMU boots an ELF kernel only through one)
    pvh: bool = True

    @property
    def boot_file(self) -> Path:
        """What QEMU's `-kernel` boots: the vmlinux, or the bzImage when the vmlinux has
        no PVH entry (Debian's 686 kernel: its build has no CONFIG_PVH)."""
        return self.vmlinux if self.pvh else self.bzimage

    @property
    def moduledir(self) -> Path:
        """`<moduleroot>/lib/modules/<version>`."""
        return self.moduleroot / "lib" / "modules" / self.version


_XZ_MAGIC = b"\xfd7zXZ\x00"
_GZIP_MAGIC = b"\x1f\x8b\x08"
_ELF_MAGIC = b"\x7fELF"
_COMPLETE = ".complete"


def _run(argv: list[str], *, cwd: Path | None = None) -> str:
    try:
        proc = subprocess.run(
            argv,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            check=False,
            env={**os.environ, "LC_ALL": "C"},
        )
    except FileNotFoundError as exc:
        raise KernelError(f"{argv[0]}: command not found") from exc
    if proc.returncode != 0:
        raise KernelError(
            f"{' '.join(argv)} failed with status {proc.returncode}:\n{proc.stderr.strip()}"
        )
    return proc.stdout


def _native_dpkg_arch() -> str:
    return _run(["dpkg", "--print-architecture"]).strip()


@functools.cache
def resolve_kernel_package(arch: str = "x86_64") -> tuple[str, str]:
    """Return `(package, version)` of the current kernel image package for `arch`.

    The ABI package name comes from the meta package's dependency (never hardcoded),
    e.g. `("linux-image-6.1.0-56-amd64", "6.1.192-2")`; for a foreign architecture the
    package carries its `:arch` qualifier. One `apt-cache show` of the meta package
    usually answers both (its `Depends:` pins `(= version)`); the result is memoised
    per process because apt-cache takes about a second here.
    """
    spec = _arch(arch)
    meta = spec.qualify(spec.meta_package)
    package = version = ""
    for line in _run(["apt-cache", "show", "--no-all-versions", meta]).splitlines():
        if not line.startswith("Depends:"):
            continue
        for dep in line.split(":", 1)[1].split(","):
            match = re.fullmatch(r"\s*(linux-image-\S+)\s*(?:\(\s*=\s*([^)\s]+)\s*\))?\s*", dep)
            if match:
                package, version = spec.qualify(match[1]), match[2] or ""
                break
        break
    if not package:
        raise KernelError(f"apt-cache show {meta}: no linux-image-* dependency")
    if not version:
        for line in _run(["apt-cache", "show", "--no-all-versions", package]).splitlines():
            if line.startswith("Version:"):
                version = line.split(":", 1)[1].strip()
                break
    if not version:
        raise KernelError(f"apt-cache show {package}: no Version field")
    return package, version


def _arch(arch: str) -> Arch:
    try:
        return ARCHES[arch]
    except KeyError:
        raise KernelError(f"unknown lab architecture {arch!r} (known: {sorted(ARCHES)})") from None


def _release_of(package: str) -> str:
    return package.split(":", 1)[0].removeprefix("linux-image-")


def _cache_root() -> Path:
    return cache_dir() / "kernel"


def _entry_name(package: str, version: str) -> str:
    return f"{package}_{version}".replace(":", "_").replace("/", "_")


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _kernel_from_entry(entry: Path, arch: str) -> Kernel:
    meta = dict(
        line.split("=", 1) for line in (entry / _COMPLETE).read_text().splitlines() if "=" in line
    )
    release = meta["version"]
    return Kernel(
        version=release,
        vmlinux=entry / "vmlinux",
        bzimage=entry / "root" / "boot" / f"vmlinuz-{release}",
        moduleroot=entry / "root",
        arch=arch,
        package_version=meta.get("package_version", ""),
        pvh=has_pvh_entry(entry / "vmlinux"),
    )


def _newest_cached(arch: str) -> Path | None:
    root = _cache_root()
    if not root.is_dir():
        return None
    suffix = ARCHES[arch].meta_package.removeprefix("linux-image-")
    candidates = [
        entry
        for entry in root.iterdir()
        if (entry / _COMPLETE).is_file() and entry.name.split("_", 1)[0].endswith(suffix)
    ]
    return max(candidates, key=lambda p: (p / _COMPLETE).stat().st_mtime, default=None)


def fetch_kernel(arch: str = "x86_64") -> Kernel:
    """Return the current Debian kernel for `arch`, downloading and unpacking it once.

    If apt cannot resolve the package (no apt lists), the newest cached kernel of the
    architecture is used; with no cache either, `KernelError` is raised.
    """
    spec = _arch(arch)
    try:
        package, version = resolve_kernel_package(arch)
    except KernelError:
        cached = _newest_cached(arch)
        if cached is None:
            raise
        return _kernel_from_entry(cached, arch)

    root = _cache_root()
    entry = root / _entry_name(package, version)
    if (entry / _COMPLETE).is_file():
        return _kernel_from_entry(entry, arch)
    with _locked(root / ".lock"):
        if not (entry / _COMPLETE).is_file():
            _build_entry(entry, package, version, spec)
    return _kernel_from_entry(entry, arch)


def _build_entry(entry: Path, package: str, version: str, spec: Arch) -> None:
    release = _release_of(package)
    if entry.exists():  # a half-built leftover (no .complete): start over
        shutil.rmtree(entry)
    for stale in entry.parent.glob(".tmp-*"):  # from builds that were killed (we hold the lock)
        shutil.rmtree(stale, ignore_errors=True)
    work = Path(tempfile.mkdtemp(prefix=".tmp-", dir=entry.parent))
    try:
        # apt-get download writes into the current directory; as root it warns that
        # the _apt sandbox user cannot write there, which is harmless.
        _run(["apt-get", "download", "-q", f"{package}={version}"], cwd=work)
        debs = sorted(work.glob("*.deb"))
        if len(debs) != 1:
            raise KernelError(f"apt-get download {package}: expected one .deb, got {debs}")
        tree = work / "root"
        _run(["dpkg-deb", "-x", str(debs[0]), str(tree)])
        debs[0].unlink()
        shutil.rmtree(tree / "usr" / "share" / "doc", ignore_errors=True)
        bzimage = tree / "boot" / f"vmlinuz-{release}"
        moddir = tree / "lib" / "modules" / release
        if not bzimage.is_file() or not moddir.is_dir():
            raise KernelError(f"{package}: no {bzimage.name} or lib/modules/{release} inside")
        _run(["depmod", "-b", str(tree), release])
        extract_vmlinux(bzimage, work / "vmlinux", elf_machine=spec.elf_machine)
        (work / _COMPLETE).write_text(
            f"package={package}\npackage_version={version}\nversion={release}\n"
        )
        work.rename(entry)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise


def _payload(image: bytes) -> bytes:
    """The compressed kernel inside a bzImage, from the boot protocol header."""
    if len(image) < 0x250 or image[0x202:0x206] != b"HdrS":
        raise KernelError("not a bzImage: no 'HdrS' boot protocol header")
    (protocol,) = struct.unpack_from("<H", image, 0x206)
    setup_sects = image[0x1F1] or 4
    if protocol >= 0x208:
        offset, length = struct.unpack_from("<II", image, 0x248)
        start = (setup_sects + 1) * 512 + offset
        payload = image[start : start + length]
        if payload.startswith((_XZ_MAGIC, _GZIP_MAGIC)):
            return payload
    # Old protocol or unexpected header: scan for a known compressed-stream magic.
    for magic in (_XZ_MAGIC, _GZIP_MAGIC):
        at = image.find(magic, (setup_sects + 1) * 512)
        if at >= 0:
            return image[at:]
    raise KernelError("no xz or gzip payload found in the bzImage")


def _decompress(payload: bytes) -> bytes:
    if payload.startswith(_XZ_MAGIC):
        decomp = lzma.LZMADecompressor(format=lzma.FORMAT_XZ)
        data = decomp.decompress(payload)
        if not decomp.eof:
            raise KernelError("truncated xz payload in the bzImage")
        return data
    if payload.startswith(_GZIP_MAGIC):
        gz = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
        data = gz.decompress(payload)
        if not gz.eof:
            raise KernelError("truncated gzip payload in the bzImage")
        return data
    raise KernelError(f"unsupported kernel compression (magic {payload[:6].hex()})")


def extract_vmlinux(bzimage: Path, out: Path, *, elf_machine: int | None = None) -> Path:
    """Decompress the ELF vmlinux out of `bzimage` into `out` (atomically) and return `out`.

    The payload is located with the boot protocol header (`payload_offset`/`payload_length`,
    falling back to a scan for the xz/gzip magic) and must decompress to an ELF file (of
    `elf_machine`, if given).
    """
    data = _decompress(_payload(bzimage.read_bytes()))
    if not data.startswith(_ELF_MAGIC):
        raise KernelError(f"{bzimage}: the decompressed payload is not an ELF file")
    if elf_machine is not None:
        (machine,) = struct.unpack_from("<H", data, 18)
        if machine != elf_machine:
            raise KernelError(f"{bzimage}: vmlinux is for ELF machine {machine}, not {elf_machine}")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp{os.getpid()}")
    tmp.write_bytes(data)
    tmp.rename(out)
    return out


_PT_NOTE = 4
_XEN_ELFNOTE_PHYS32_ENTRY = 18


def has_pvh_entry(vmlinux: Path) -> bool:
    """Whether an ELF kernel carries the Xen PVH entry note (`XEN_ELFNOTE_PHYS32_ENTRY`),
    without which QEMU refuses to boot it. Reads only the headers and the notes."""
    with vmlinux.open("rb") as f:
        header = f.read(64)
        if not header.startswith(_ELF_MAGIC) or header[4] not in (1, 2):
            return False
        is64 = header[4] == 2
        phoff, phentsize, phnum = struct.unpack_from(
            "<Q14xHH" if is64 else "<I10xHH", header, 32 if is64 else 28
        )
        for index in range(phnum):
            f.seek(phoff + index * phentsize)
            entry = f.read(phentsize)
            if is64:
                p_type, p_offset, p_filesz = struct.unpack_from("<I4xQ16xQ", entry)
            else:
                p_type, p_offset, p_filesz = struct.unpack_from("<II8xI", entry)
            if p_type != _PT_NOTE:
                continue
            f.seek(p_offset)
            notes = f.read(p_filesz)
            at = 0
            while at + 12 <= len(notes):
                namesz, descsz, n_type = struct.unpack_from("<III", notes, at)
                name = notes[at + 12 : at + 12 + namesz].rstrip(b"\0")
                if name == b"Xen" and n_type == _XEN_ELFNOTE_PHYS32_ENTRY:
                    return True
                at += 12 + (namesz + 3) // 4 * 4 + (descsz + 3) // 4 * 4
    return False
