"""Build the lab's tiny live root: busybox-static plus a checking `/sbin/init`.

`make_liveroot()` writes a directory tree (to be packed into an ext4, squashfs or ISO
image by the caller). Its `/sbin/init` is `vm/liveroot/init`, a busybox sh script that
runs the checks named in `lab.check=a,b,c` and prints `LAB: PASS` or `LAB: FAIL`, then
powers off. `write_manifest()` records sha256 sums for its `files` check, and
`make_ext4()` packs a tree into an ext4 image with `mkfs.ext4 -d`.

With `sysroot` (the i386 root of `tools/i386-root`), busybox and the libraries come from
that root instead of the host: an i686 live root built on this x86_64 host.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
from collections.abc import Collection, Iterable, Mapping
from pathlib import Path
from types import MappingProxyType

from vm import VM_DIR

__all__ = [
    "BUSYBOX",
    "INIT_SCRIPT",
    "LiverootError",
    "host_libraries",
    "install_host_file",
    "make_ext4",
    "make_liveroot",
    "sysroot_libraries",
    "write_manifest",
]

BUSYBOX = Path("/bin/busybox")
INIT_SCRIPT = VM_DIR / "liveroot" / "init"
HOOK_DIR = "usr/lib/archiso-hook"
_NO_FILES: Mapping[str, bytes] = MappingProxyType({})

_DIRS: dict[str, int] = {
    "proc": 0o555,
    "sys": 0o555,
    "dev": 0o755,
    "run": 0o755,
    "tmp": 0o1777,
    "etc": 0o755,
    "root": 0o700,
    "mnt": 0o755,
    "usr": 0o755,
    "usr/bin": 0o755,
    "usr/sbin": 0o755,
    "usr/lib": 0o755,
    "usr/lib64": 0o755,
    "usr/share": 0o755,
    "var": 0o755,
    "var/tmp": 0o1777,
}
# Same top-level links as a merged-/usr Debian host, so that host library paths
# (/lib/x86_64-linux-gnu/..., /lib64/ld-linux-x86-64.so.2) land in the same places.
_LINKS: dict[str, str] = {
    "bin": "usr/bin",
    "sbin": "usr/sbin",
    "lib": "usr/lib",
    "lib64": "usr/lib64",
    "var/run": "../run",
}
_OS_RELEASE = """\
NAME="archiso-hook lab"
ID=archiso-hook-lab
PRETTY_NAME="archiso-hook lab live root"
VERSION_ID=1
"""


class LiverootError(RuntimeError):
    """The live root could not be built."""


def make_liveroot(
    dest: Path,
    *,
    hook_tree: Path | None = None,
    extra_files: Mapping[str, bytes] = _NO_FILES,
    sysroot: Path | None = None,
) -> Path:
    """Build the live root in `dest` (missing or empty) and return `dest`.

    The tree has the standard directories, busybox-static at `/usr/bin/busybox` with a
    link per applet, `/etc/os-release`, `/etc/passwd`, `/etc/group`, and `/sbin/init` =
    `vm/liveroot/init`.

    `hook_tree` is a PyInstaller `--onedir` tree (an executable `archiso-hook` next to
    `_internal/`): it is copied to `/usr/lib/archiso-hook/`, linked as
    `/usr/bin/archiso-hook`, and the host libraries it needs but does not bundle (glibc)
    are copied in, found with `ldd` on the executable and every shared object.

    `extra_files` maps paths inside the root to contents; they are written last (mode
    0755 if the content starts with `#!`, else 0644), replacing what is there.

    `sysroot` is a root of another architecture (an i386 Debian root): busybox-static
    and the libraries the hook tree needs are taken from it (`sysroot_libraries`).
    """
    dest = Path(dest)
    if dest.exists() and any(dest.iterdir()):
        raise LiverootError(f"{dest}: not empty")
    dest.mkdir(parents=True, exist_ok=True)
    dest.chmod(0o755)
    for name, mode in _DIRS.items():
        path = dest / name
        path.mkdir(parents=True, exist_ok=True)
        path.chmod(mode)
    for name, target in _LINKS.items():
        (dest / name).symlink_to(target)

    _install_busybox(dest, sysroot)
    init = dest / "usr/sbin/init"
    shutil.copyfile(INIT_SCRIPT, init)
    init.chmod(0o755)

    etc = dest / "etc"
    (etc / "os-release").write_text(_OS_RELEASE)
    (etc / "hostname").write_text("lab\n")
    (etc / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    (etc / "group").write_text("root:x:0:\n")
    (etc / "fstab").write_text("")

    if hook_tree is not None:
        _install_hook_tree(dest, Path(hook_tree), sysroot)

    for name, content in extra_files.items():
        path = _inside(dest, name)
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.is_symlink() or path.exists():
            path.unlink()
        path.write_bytes(content)
        path.chmod(0o755 if content.startswith(b"#!") else 0o644)
    return dest


def _inside(root: Path, name: str) -> Path:
    rel = Path(name.lstrip("/"))
    if not rel.parts or ".." in rel.parts:
        raise LiverootError(f"invalid path inside the root: {name!r}")
    return root / rel


def _install_busybox(root: Path, sysroot: Path | None = None) -> None:
    busybox = BUSYBOX
    if sysroot is not None:
        busybox = sysroot / _realpath_in(sysroot, BUSYBOX).relative_to("/")
    if not busybox.is_file():
        raise LiverootError(f"{busybox} is missing: apt-get install busybox-static")
    target = root / "usr/bin/busybox"
    shutil.copyfile(busybox, target)
    target.chmod(0o755)
    # An i386 busybox-static runs on this x86_64 kernel too (IA32 emulation).
    applets = subprocess.run(
        [str(busybox), "--list"], capture_output=True, text=True, check=True
    ).stdout.split()
    for applet in applets:
        if applet != "busybox" and "/" not in applet:
            (root / "usr/bin" / applet).symlink_to("busybox")


def _install_hook_tree(root: Path, tree: Path, sysroot: Path | None = None) -> None:
    exe = tree / "archiso-hook"
    if not (exe.is_file() and os.access(exe, os.X_OK) and (tree / "_internal").is_dir()):
        raise LiverootError(f"{tree}: not a PyInstaller onedir tree (archiso-hook + _internal/)")
    dest = root / HOOK_DIR
    shutil.copytree(tree, dest, symlinks=True)
    (root / "usr/bin/archiso-hook").symlink_to("../lib/archiso-hook/archiso-hook")
    objects = [exe, *(p for p in sorted(tree.rglob("*.so*")) if p.is_file() and _is_elf(p))]
    if sysroot is None:
        for lib in host_libraries(objects, bundled=tree):
            install_host_file(root, lib)
    else:
        for lib in sysroot_libraries(objects, sysroot, bundled=tree):
            install_host_file(root, lib, sysroot=sysroot)


def _is_elf(path: Path) -> bool:
    with path.open("rb") as fh:
        return fh.read(4) == b"\x7fELF"


_LDD_LINE = re.compile(r"^\s*(?:(\S+)\s+=>\s+)?(\S+|not found)(?:\s+\(0x[0-9a-fA-F]+\))?\s*$")


def host_libraries(objects: Iterable[Path], *, bundled: Path | None = None) -> list[Path]:
    """The host shared libraries (absolute paths, sorted) that `ldd` lists for `objects`.

    With `bundled` (a PyInstaller tree), the shared objects' dependencies are resolved
    with the tree's library directories on `LD_LIBRARY_PATH`, and libraries found in the
    tree are left out. Executables are resolved without it: the dynamic loader starts a
    PyInstaller bootloader before anything can point it at `_internal/` (its libz.so.1
    must come from the system even though `_internal/` has one). A library that is
    neither found nor bundled raises `LiverootError`.
    """
    plain_env = dict(os.environ, LC_ALL="C")
    plain_env.pop("LD_LIBRARY_PATH", None)
    bundle_env = dict(plain_env)
    bundled_names: set[str] = set()
    if bundled is not None:
        sodirs = sorted({str(p.parent) for p in bundled.rglob("*.so*")})
        bundled_names = {p.name for p in bundled.rglob("*.so*")}
        bundle_env["LD_LIBRARY_PATH"] = ":".join(sodirs)
        bundled = bundled.resolve()
    found: set[Path] = set()
    for obj in objects:
        is_library = ".so" in obj.name
        proc = subprocess.run(
            ["ldd", str(obj)],
            capture_output=True,
            text=True,
            env=bundle_env if is_library else plain_env,
            check=False,
        )
        if proc.returncode != 0:  # static executable or not an ELF object
            continue
        for line in proc.stdout.splitlines():
            match = _LDD_LINE.match(line)
            if not match:
                continue
            soname, where = match[1], match[2]
            if where == "not found":
                if is_library and soname and soname in bundled_names:
                    continue
                raise LiverootError(f"{obj}: library {soname} not found (ldd)")
            if not where.startswith("/"):  # linux-vdso.so.1
                continue
            path = Path(where)
            if bundled is not None and path.resolve().is_relative_to(bundled):
                continue
            found.add(path)
    return sorted(found)


def install_host_file(root: Path, path: Path, *, sysroot: Path | None = None) -> None:
    """Copy the host file `path` to the same path under `root`, recreating the chain of
    symlinks that leads to it (e.g. `/lib64/ld-linux-x86-64.so.2` -> the real loader).

    With `sysroot`, `path` names a file of that root (links resolved inside it)."""
    seen: set[Path] = set()
    while path not in seen:
        seen.add(path)
        inside = root / path.relative_to("/")
        inside.parent.mkdir(parents=True, exist_ok=True)
        if sysroot is None:
            source, base = path, Path(os.path.realpath(path.parent))
        else:
            base = _realpath_in(sysroot, path.parent)
            source = sysroot / base.relative_to("/") / path.name
        if source.is_symlink():
            link = os.readlink(source)
            if not inside.is_symlink() and not inside.exists():
                # A relative link reached through a directory link (/lib64 -> /opt/x) must
                # not dangle where the new root has a plain directory: point it home.
                if not link.startswith("/") and _resolves_to(root, inside.parent) != base:
                    inside.symlink_to(os.path.normpath(base / link))
                else:
                    inside.symlink_to(link)
            path = Path(os.path.normpath(link if link.startswith("/") else base / link))
            continue
        if not inside.exists():
            shutil.copy2(source, inside)
        return
    raise LiverootError(f"symlink loop at {path}")


def _resolves_to(root: Path, directory: Path) -> Path | None:
    """Where `directory` (under `root`) leads, as an absolute path inside `root`."""
    real = Path(os.path.realpath(directory))
    try:
        return Path("/") / real.relative_to(os.path.realpath(root))
    except ValueError:
        return None


def _realpath_in(sysroot: Path, path: Path) -> Path:
    """`path` (absolute) with its symlinks resolved inside `sysroot`, where an absolute
    link target starts over at `sysroot` (as in a chroot); the result is absolute."""
    parts = list(path.parts[1:])
    resolved = Path("/")
    hops = 0
    while parts:
        part = parts.pop(0)
        if part == "..":
            resolved = resolved.parent
            continue
        candidate = resolved / part
        host = sysroot / candidate.relative_to("/")
        if not host.is_symlink():
            resolved = candidate
            continue
        hops += 1
        if hops > 40:
            raise LiverootError(f"too many levels of symlinks at {path} in {sysroot}")
        target = Path(os.readlink(host))
        if target.is_absolute():
            resolved = Path("/")
            parts = [*target.parts[1:], *parts]
        else:
            parts = [*target.parts, *parts]
    return resolved


def _library_dirs(sysroot: Path) -> list[Path]:
    """The directories the dynamic loader of `sysroot` searches: its ld.so.conf (with
    the files it includes), then /lib and /usr/lib."""
    dirs: list[Path] = []

    def read(conf: Path) -> None:
        for line in conf.read_text().splitlines():
            words = line.split("#", 1)[0].split()
            if words[:1] == ["include"]:
                for pattern in words[1:]:
                    for included in sorted(sysroot.glob(pattern.lstrip("/"))):
                        read(included)
            elif words and words[0].startswith("/"):
                dirs.append(Path(words[0]))

    conf = sysroot / "etc/ld.so.conf"
    if conf.is_file():
        read(conf)
    dirs += [Path("/lib"), Path("/usr/lib")]
    return list(dict.fromkeys(dirs))


_NEEDED = re.compile(r"\(NEEDED\)\s+Shared library: \[([^\]]+)\]")
_INTERP = re.compile(r"\[Requesting program interpreter: ([^\]]+)\]")


def sysroot_libraries(
    objects: Iterable[Path], sysroot: Path, *, bundled: Path | None = None
) -> list[Path]:
    """What `host_libraries` finds with ldd, for ELF objects of `sysroot`'s architecture:
    the libraries they need (paths inside `sysroot`, sorted), found from their `NEEDED`
    entries and `PT_INTERP` with `readelf` and searched in `sysroot`'s loader path.

    The host's ldd cannot run another architecture's loader, so the walk is done here.
    As there, a library found in `bundled` satisfies a shared object, not an executable.
    A library that is neither found nor bundled raises `LiverootError`.
    """
    dirs = _library_dirs(sysroot)
    bundled_names = {p.name for p in bundled.rglob("*.so*")} if bundled is not None else set()
    found: set[Path] = set()
    queue = [(Path(obj), ".so" in Path(obj).name) for obj in objects]
    walked: set[Path] = set()
    while queue:
        obj, is_library = queue.pop()
        if obj in walked:
            continue
        walked.add(obj)
        proc = subprocess.run(
            ["readelf", "--wide", "--dynamic", "--program-headers", str(obj)],
            capture_output=True,
            text=True,
            env=dict(os.environ, LC_ALL="C"),
            check=False,
        )
        if proc.returncode != 0:
            raise LiverootError(f"readelf {obj} failed:\n{proc.stderr.strip()}")
        for interp in _INTERP.findall(proc.stdout):
            found.add(Path(interp))
        for soname in _NEEDED.findall(proc.stdout):
            if is_library and soname in bundled_names:
                continue
            for directory in dirs:
                real = sysroot / _realpath_in(sysroot, directory / soname).relative_to("/")
                if real.is_file():
                    found.add(directory / soname)
                    queue.append((real, True))
                    break
            else:
                raise LiverootError(f"{obj}: library {soname} not found in {sysroot}")
    return sorted(found)


def write_manifest(
    tree: Path,
    manifest: Path | None = None,
    *,
    prefix: str = "/",
    exclude: Collection[str] = (),
) -> Path:
    """Write `sha256sum -c` lines for every regular file under `tree` and return the path.

    Paths are written as `prefix` + the path relative to `tree` (default: absolute paths
    in the booted root, which `lab.check=files` verifies from `/`). `manifest` defaults
    to `<tree>/lab/manifest.sha256` (itself left out); `exclude` lists relative paths to
    leave out. Symlinks are not recorded.
    """
    tree = Path(tree)
    manifest = Path(manifest) if manifest is not None else tree / "lab" / "manifest.sha256"
    skip = {Path(p.lstrip("/")) for p in exclude}
    lines: list[str] = []
    for path in sorted(tree.rglob("*")):
        if path.is_symlink() or not path.is_file():
            continue
        if path.resolve() == manifest.resolve():
            continue
        rel = path.relative_to(tree)
        if rel in skip:
            continue
        if "\n" in str(rel) or "\\" in str(rel):
            raise LiverootError(f"cannot record {rel!r} in a sha256sum manifest")
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        lines.append(f"{digest}  {prefix.rstrip('/')}/{rel}\n")
    manifest.parent.mkdir(parents=True, exist_ok=True)
    manifest.write_text("".join(lines))
    return manifest


def _settle_atimes(tree: Path) -> None:
    """Read `tree` once as mke2fs -d will, so that its reading cannot move a time it copies.

    mke2fs copies each file's access time, to the second, as it found it before reading
    the file. Under relatime, the first read of a file not read since its last change
    moves that time, so an image made right after the tree would differ from the next
    one, whenever the read falls in a later second than the writing did.
    """
    for top, dirs, files in os.walk(tree):  # lists every directory
        for name in [*dirs, *files]:
            path = os.path.join(top, name)
            if os.path.islink(path):
                os.readlink(path)
            elif os.path.isfile(path):
                with open(path, "rb") as f:
                    while f.read(1 << 20):
                        pass


def _tree_bytes(tree: Path) -> int:
    total = 0
    for dirpath, dirnames, filenames in os.walk(tree):
        for name in filenames + dirnames:
            st = os.lstat(os.path.join(dirpath, name))
            total += (st.st_size + 4095) // 4096 * 4096 + 256  # data blocks + an inode
    return total


def make_ext4(
    tree: Path | None,
    image: Path,
    *,
    label: str,
    free_mib: int = 48,
    size_mib: int | None = None,
    uuid: str | None = None,
) -> Path:
    """Pack `tree` into a new ext4 image (`mkfs.ext4 -d`) labelled `label`; with `tree`
    None the filesystem is empty.

    The image is `size_mib` MiB, or by default the tree's size plus 20 % plus `free_mib`
    MiB (room for the journal and for what the guest writes: the `write` check needs 16
    MiB). With `uuid`, the image is reproducible: that filesystem UUID, the same
    directory hash seed, and mke2fs's clock at `$SOURCE_DATE_EPOCH` (default 1700000000).
    """
    if size_mib is None:
        used = _tree_bytes(tree) if tree is not None else 0
        size_mib = (used * 12 // 10) // (1 << 20) + free_mib + 8
    cmd = ["mkfs.ext4", "-q", "-F", "-m", "0", "-L", label]
    env = dict(os.environ, LC_ALL="C")
    if uuid is not None:
        cmd += ["-U", uuid, "-E", f"hash_seed={uuid}"]
        # mke2fs stamps the superblock with the current time unless told otherwise.
        env["E2FSPROGS_FAKE_TIME"] = os.environ.get("SOURCE_DATE_EPOCH", "1700000000")
        if tree is not None:
            _settle_atimes(tree)
    if tree is not None:
        cmd += ["-d", str(tree)]
    image.parent.mkdir(parents=True, exist_ok=True)
    image.unlink(missing_ok=True)
    proc = subprocess.run(
        [*cmd, str(image), f"{size_mib}M"],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    if proc.returncode != 0:
        what = f"-d {tree}" if tree is not None else str(image)
        raise LiverootError(f"mkfs.ext4 {what} failed:\n{proc.stderr.strip()}")
    return image
