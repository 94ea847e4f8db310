"""Build an mkinitcpio-style initramfs with the lab's emulation (`vm/mkinitramfs`).

The hook search path is `hook_dirs` (in order; e.g. the project's `initcpio/` for the
archiso hook, or a test's own hook directory) followed by `vm/initcpio`, which provides
`base` and `udev`: the first directory with `install/<hook>` wins, so a caller can
override the lab's hooks but never loses them.
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
_NO_ENV: Mapping[str, str] = MappingProxyType({})


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
) -> Path:
    """Build `out` with HOOKS `hooks` for `kernel` and return `out`.

    `hook_dirs` come first in the search path, `vm/initcpio` last. `env` is added to the
    environment the install hooks see (e.g. `ARCHISO_HOOK_SYSROOT`). `modules` is
    mkinitcpio.conf's MODULES (added to the image and loaded by /init before the hooks'
    `run_hook`). `builddir` keeps the build root there (it must not exist or be empty).
    mkinitramfs's output (and the build time) is written next to the image as
    `<out>.log`.
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
    started = time.monotonic()
    proc = subprocess.run(
        cmd,
        env={**os.environ, **env, "LC_ALL": "C"},
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        check=False,
    )
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
