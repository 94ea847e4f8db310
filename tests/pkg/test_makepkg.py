"""The Arch package: packaging/PKGBUILD built by makepkg from this tree, then looked inside.

makepkg refuses to run as root, so the build runs as an unprivileged system user made for
it (`archiso-build`) in a directory that user owns. The tree's .venv (made by `make setup`)
is lent to it through ARCHISO_HOOK_VENV, so nothing is downloaded: PyInstaller really runs
inside makepkg's build(), on the sources `make dist` packed.
"""

from __future__ import annotations

import contextlib
import filecmp
import os
import pwd
import shutil
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import attrs
import pytest

from archiso_hook import __version__
from archiso_hook.build.hosttools import TOOL_PACKAGES
from tests.lend import Lent

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run makepkg as a user")

TREE = Path(__file__).resolve().parents[2]
DOCS = ["README.md", *sorted(p.relative_to(TREE).as_posix() for p in TREE.glob("docs/*.md"))]
USER = "archiso-build"
PACKAGE = f"archiso-hook-{__version__}-1-x86_64.pkg.tar.zst"
HOOK_FILES = sorted(
    f"usr/lib/initcpio/{path.parent.name}/{path.name}"
    for path in (*TREE.glob("initcpio/install/*"), *TREE.glob("initcpio/hooks/*"))
)


@attrs.frozen
class Built:
    workdir: Path
    package: Path
    members: list[str]  # as bsdtar lists them
    root: Path  # the package unpacked
    hooks: dict[str, bytes]  # the tree's hook files when the source tarball was made
    epoch: str  # SOURCE_DATE_EPOCH of the build


def run(args: list[str], **kwargs: object) -> str:
    result = subprocess.run(
        args,
        capture_output=True,
        text=True,
        check=False,
        **kwargs,  # type: ignore[call-overload]
    )
    assert result.returncode == 0, f"{args} failed:\n{result.stdout}\n{result.stderr}"
    return str(result.stdout)


def as_user(workdir: Path, args: list[str], **env: str) -> str:
    """Run in workdir as the build user, with a clean environment."""
    environment = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": str(workdir), **env}
    return run(
        ["runuser", "-u", USER, "--", "env", "-i", *(f"{k}={v}" for k, v in environment.items()),
         *args],
        cwd=workdir,
    )  # fmt: skip


def ensure_user() -> pwd.struct_passwd:
    """The build user, made once. Two test processes may ask at once (test_private_checkout
    builds the package again): the one whose useradd loses finds the other's user."""
    for _attempt in range(20):
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(USER)
        made = subprocess.run(
            ["useradd", "--system", "--user-group", "--no-create-home",
             "--shell", "/usr/sbin/nologin", "--comment", "makepkg tests", USER],
            capture_output=True,
            check=False,
        )  # fmt: skip
        if made.returncode != 0:
            time.sleep(0.5)
    return pwd.getpwnam(USER)


@pytest.fixture(scope="module")
def built(lent_checkout: Lent) -> Iterator[Built]:
    user = ensure_user()
    assert (TREE / ".venv/bin/pyinstaller").exists(), "run make setup first"
    workdir = Path(tempfile.mkdtemp(prefix="archiso-makepkg-", dir="/tmp"))
    try:
        epoch = run(["git", "log", "-1", "--format=%ct"], cwd=TREE).strip()
        hooks = {name: (TREE / name.split("/", 2)[2]).read_bytes() for name in HOOK_FILES}
        run(["make", "-s", "--no-print-directory", "dist", f"DISTDIR={workdir}"], cwd=TREE)
        shutil.copy(TREE / "packaging/PKGBUILD", workdir)
        for path in (workdir, *workdir.iterdir()):
            os.chown(path, user.pw_uid, user.pw_gid)
        # --nodeps: this Debian machine has no pacman database holding mkinitcpio,
        # systemd-libs or python; the dependencies are checked below, in .PKGINFO. (The
        # "failed to initialize alpm library" line while writing .BUILDINFO has the same
        # cause: that file's list of installed packages stays empty.)
        as_user(
            workdir,
            ["makepkg", "--nodeps", "--noconfirm", "--nocolor"],
            PKGEXT=".pkg.tar.zst",  # Debian's makepkg.conf says .gz; Arch's says .zst
            SOURCE_DATE_EPOCH=epoch,
            # the tree's venv, copied where the user can run it (the tree may be in /root)
            ARCHISO_HOOK_VENV=str(lent_checkout.venv),
        )
        package = workdir / PACKAGE
        members = run(["bsdtar", "-tf", str(package)]).splitlines()
        root = workdir / "unpacked"
        root.mkdir()
        run(["bsdtar", "-xpf", str(package), "-C", str(root)])
        yield Built(workdir, package, members, root, hooks, epoch)
    finally:
        shutil.rmtree(workdir)


def test_the_package_holds_what_make_install_puts_on_a_system(built: Built) -> None:
    outside_frozen_tree = sorted(
        m
        for m in built.members
        if not m.startswith("usr/lib/archiso-hook/") and not m.endswith("/")
    )
    assert outside_frozen_tree == sorted(
        [
            ".BUILDINFO",
            ".MTREE",
            ".PKGINFO",
            "usr/bin/archiso-hook",
            *HOOK_FILES,
            *(f"usr/share/doc/archiso-hook/{doc}" for doc in DOCS),
            "usr/share/licenses/archiso-hook/LICENSE",
        ]
    )
    assert {"usr/lib/initcpio/install/archiso", "usr/lib/initcpio/hooks/archiso"} <= set(HOOK_FILES)
    launcher = built.root / "usr/bin/archiso-hook"
    assert os.readlink(launcher) == "../lib/archiso-hook/archiso-hook"
    for doc in DOCS:
        packaged = built.root / "usr/share/doc/archiso-hook" / doc
        assert packaged.read_bytes() == (TREE / doc).read_bytes(), doc
    assert (built.root / "usr/share/licenses/archiso-hook/LICENSE").read_bytes() == (
        TREE / "LICENSE"
    ).read_bytes()


def test_the_hooks_in_the_package_are_the_tree_s_byte_for_byte(built: Built) -> None:
    for name, content in built.hooks.items():
        packaged = built.root / name
        assert packaged.read_bytes() == content, name
        assert stat.S_IMODE(packaged.stat().st_mode) == 0o644, name  # as mkinitcpio ships its own


def test_the_frozen_tree_is_what_make_frozen_builds_from_the_same_sources(built: Built) -> None:
    """Nothing stripped or purged by makepkg, and the build is reproducible: the same
    sources and SOURCE_DATE_EPOCH give the same bytes in another directory, as root."""
    reference = built.workdir / "reference"
    reference.mkdir()
    run(["bsdtar", "-xf", str(built.workdir / f"archiso-hook-{__version__}.tar.gz"),
         "-C", str(reference)])  # fmt: skip
    src = reference / f"archiso-hook-{__version__}"
    venv = TREE / ".venv"
    run(["make", "-s", "--no-print-directory", "-o", f"{venv}/.stamp", "frozen", f"VENV={venv}",
         "APT_STAMP=", f"SOURCE_DATE_EPOCH={built.epoch}"], cwd=src)  # fmt: skip
    expected = src / "build/frozen/archiso-hook"
    packaged = built.root / "usr/lib/archiso-hook"
    assert _differences(filecmp.dircmp(packaged, expected)) == []
    assert stat.S_IMODE((packaged / "archiso-hook").stat().st_mode) == 0o755


def _differences(cmp: filecmp.dircmp[str]) -> list[str]:
    out = [f"{cmp.left}/{n}" for n in cmp.left_only] + [f"{cmp.right}/{n}" for n in cmp.right_only]
    # dircmp compares sizes and times only (shallow): compare the bytes.
    _, mismatch, errors = filecmp.cmpfiles(cmp.left, cmp.right, cmp.common_files, shallow=False)
    out += [f"differs: {n}" for n in mismatch + errors]
    for sub in cmp.subdirs.values():
        out += _differences(sub)
    return out


def test_the_packaged_hook_runs(built: Built) -> None:
    out = run([str(built.root / "usr/bin/archiso-hook"), "--version"])
    assert out.strip() == f"archiso-hook {__version__}"


def test_package_metadata(built: Built) -> None:
    info = [
        tuple(line.split(" = ", 1))
        for line in (built.root / ".PKGINFO").read_text().splitlines()
        if " = " in line
    ]
    assert ("pkgname", "archiso-hook") in info
    assert ("pkgver", f"{__version__}-1") in info  # PKGBUILD, pyproject and the code agree
    assert ("license", "GPL-3.0-or-later") in info
    assert ("arch", "x86_64") in info
    assert {v for k, v in info if k == "depend"} == {"glibc", "mkinitcpio", "systemd-libs"}
    # what `archiso-hook build --iso` (and --sign-*) runs, as hosttools names its Arch
    # packages; gnupg and openssl also put gpgv and openssl into a verifying initramfs
    optional = {v.split(":")[0] for k, v in info if k == "optdepend"}
    assert optional == {"squashfs-tools", "e2fsprogs", "libisoburn", "syslinux", "grub",
                        "dosfstools", "mtools", "gnupg", "openssl"}  # fmt: skip
    for tool in ("mksquashfs", "mke2fs", "xorriso", "grub-mkimage", "mkfs.fat", "mcopy",
                 "gpg", "openssl"):  # fmt: skip
        assert TOOL_PACKAGES[tool][1] in optional, tool
    assert ("conflict", "mkinitcpio-archiso") in info
    pyproject = (TREE / "pyproject.toml").read_text()
    assert f'version = "{__version__}"' in pyproject
    assert 'license = { text = "GPL-3.0-or-later" }' in pyproject


def test_srcinfo_is_what_makepkg_prints(built: Built) -> None:
    printed = as_user(built.workdir, ["makepkg", "--printsrcinfo"])
    assert (TREE / "packaging/.SRCINFO").read_text() == printed
