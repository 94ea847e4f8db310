"""Build an mkinitcpio-style initramfs with the lab's emulation (`vm/mkinitramfs`).

The hook search path is `hook_dirs` (in order; e.g. the project's `initcpio/` for the
archiso hook, or a test's own hook directory) followed by `vm/initcpio`, which provides
`base` and `udev`: the first directory with `install/<hook>` wins, so a caller can
override the lab's hooks but never loses them.

With `chroot`, mkinitramfs runs inside an i386 root made by `tools/i386-root`, so the
image gets that root's i386 busybox, kmod, udevd and libraries: how the lab builds an
i686 initramfs on this x86_64 host (archiso builds i686 images in an i686 chroot).
"""

from __future__ import annotations

import os
import shlex
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import Literal

from vm import REPO, VM_DIR
from vm.kernel import Kernel

__all__ = [
    "I386_ROOT_TOOL",
    "LAB_HOOKS",
    "MKINITRAMFS",
    "PROJECT_HOOKS",
    "InitramfsError",
    "build_initramfs",
]

MKINITRAMFS = VM_DIR / "mkinitramfs"
#: The lab's base and udev hooks, /init and /init_functions.
LAB_HOOKS = VM_DIR / "initcpio"
#: The project's hooks (the archiso hook).
PROJECT_HOOKS = REPO / "initcpio"
#: Creates the i386 build root and runs commands in it.
I386_ROOT_TOOL = REPO / "tools" / "i386-root"
_NO_ENV: Mapping[str, str] = MappingProxyType({})
_NO_FDS: Mapping[str, Path] = MappingProxyType({})


class InitramfsError(RuntimeError):
    """mkinitramfs failed (the message carries its output)."""


def build_initramfs(
    kernel: Kernel,
    hooks: Sequence[str],
    out: Path,
    *,
    hook_dirs: Sequence[Path],
    env: Mapping[str, str] = _NO_ENV,
    modules: Sequence[str] = (),
    compression: Literal["zstd", "none"] = "zstd",
    builddir: Path | None = None,
    chroot: Path | None = None,
    fds: Mapping[str, Path] = _NO_FDS,
) -> Path:
    """Build `out` with HOOKS `hooks` for `kernel` and return `out`.

    `hook_dirs` come first in the search path, `vm/initcpio` last. `env` is added to the
    environment the install hooks see (e.g. `ARCHISO_HOOK_SYSROOT`). `modules` is
    mkinitcpio.conf's MODULES (added to the image and loaded by /init before the hooks'
    `run_hook`). `builddir` keeps the build root there (it must not exist or be empty).
    mkinitramfs's output (and the build time) is written next to the image as
    `<out>.log`.

    `fds`: files handed to the install hooks as open descriptors, each named by its
    variable (mkarchiso's ARCHISO_GNUPG_FD, ARCHISO_TLS_FD, ARCHISO_TLSCA_FD).

    `chroot` (a root made by `tools/i386-root create`) runs mkinitramfs in that root
    with this repository, the kernel's module tree, the hook directories, the output's
    directory and every absolute path among `env`'s values bound at their own paths.
    """
    dirs = [Path(d).resolve() for d in hook_dirs]
    if LAB_HOOKS not in dirs:
        dirs.append(LAB_HOOKS)
    for d in dirs:
        if not d.is_dir():
            raise InitramfsError(f"hook directory not found: {d}")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    cmd = [
        str(MKINITRAMFS),
        "-k",
        kernel.version,
        "-r",
        str(kernel.moduleroot),
        "-H",
        " ".join(hooks),
        "-D",
        ":".join(str(d) for d in dirs),
        "-o",
        str(out),
        "-c",
        compression,
    ]
    if modules:
        cmd += ["-M", " ".join(modules)]
    if builddir is not None:
        cmd += ["-d", str(builddir)]
    if chroot is not None:
        paths = [REPO, kernel.moduleroot, out.parent, *dirs]
        paths += [Path(v) for v in env.values() if v.startswith("/") and Path(v).exists()]
        if builddir is not None:
            builddir.parent.mkdir(parents=True, exist_ok=True)
            paths.append(builddir.parent)
        wrapper = [str(I386_ROOT_TOOL), "run", str(chroot)]
        for path in _outermost(paths):
            wrapper += ["-b", str(path)]
        for name, value in {**env, "LC_ALL": "C"}.items():
            wrapper += ["-e", f"{name}={value}"]
        cmd = [*wrapper, "--", *cmd]
    started = time.monotonic()
    opened = {name: os.open(path, os.O_RDONLY) for name, path in fds.items()}
    try:
        proc = subprocess.run(
            cmd,
            env={**os.environ, **env, **{k: str(fd) for k, fd in opened.items()}, "LC_ALL": "C"},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            check=False,
            pass_fds=tuple(opened.values()),
        )
    finally:
        for fd in opened.values():
            os.close(fd)
    seconds = time.monotonic() - started
    log = out.with_name(out.name + ".log")
    log.write_text(
        f"# {shlex.join(cmd)}\n{proc.stdout}# {seconds:.2f} s, status {proc.returncode}\n"
    )
    if proc.returncode != 0:
        raise InitramfsError(
            f"mkinitramfs failed with status {proc.returncode} ({log}):\n{proc.stdout.strip()}"
        )
    return out


def _outermost(paths: Sequence[Path]) -> list[Path]:
    """The resolved `paths` without those inside another one (one bind covers them)."""
    resolved = sorted({Path(p).resolve() for p in paths})
    kept: list[Path] = []
    for path in resolved:
        if not any(path.is_relative_to(parent) for parent in kept):
            kept.append(path)
    return kept
