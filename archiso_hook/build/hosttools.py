"""The host's tools the builder runs (build host), and which package brings each.

A tool that is missing is a HookError naming its Debian and its Arch package; a tool that
fails is one naming its exit status and the last lines it printed.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
from collections.abc import Callable, Mapping, Sequence

from archiso_hook.errors import HookError

Log = Callable[[str], None]

#: tool -> (Debian package, Arch package)
TOOL_PACKAGES: dict[str, tuple[str, str]] = {
    "mksquashfs": ("squashfs-tools", "squashfs-tools"),
    "unsquashfs": ("squashfs-tools", "squashfs-tools"),
    "mke2fs": ("e2fsprogs", "e2fsprogs"),
    "debugfs": ("e2fsprogs", "e2fsprogs"),
    "dumpe2fs": ("e2fsprogs", "e2fsprogs"),
    "e2fsck": ("e2fsprogs", "e2fsprogs"),
    "xorriso": ("xorriso", "libisoburn"),
    "mkfs.btrfs": ("btrfs-progs", "btrfs-progs"),
    "btrfs": ("btrfs-progs", "btrfs-progs"),
    "grub-mkimage": ("grub-common", "grub"),
    "mkfs.fat": ("dosfstools", "dosfstools"),
    "mmd": ("mtools", "mtools"),
    "mcopy": ("mtools", "mtools"),
    "zstd": ("zstd", "zstd"),
    "lz4": ("lz4", "lz4"),
    "lzop": ("lzop", "lzop"),
    "bzip2": ("bzip2", "bzip2"),
    "gpg": ("gpg", "gnupg"),
    "openssl": ("openssl", "openssl"),
}
_SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# Tools see only this (plus what a call adds): no locale, TZ or SOURCE_DATE_EPOCH surprises
# (mksquashfs refuses SOURCE_DATE_EPOCH together with -mkfs-time), and no mtools
# configuration of the user's (MTOOLSRC).
BASE_ENV = {"PATH": _SYSTEM_PATH, "LC_ALL": "C", "TZ": "UTC", "MTOOLSRC": os.devnull}


def search_path() -> str:
    # sbin first: mke2fs and friends live there and are often not on a user's PATH.
    return os.pathsep.join(filter(None, (_SYSTEM_PATH, os.environ.get("PATH"))))


def packages_hint(debian: str, arch: str) -> str:
    """`install the Debian package X (Arch: Y)`: what to do about a missing part."""
    return f"install the Debian package {debian} (Arch: {arch})"


def find_tool(tool: str) -> str:
    """The path of `tool`, or a HookError naming the packages that bring it."""
    executable = shutil.which(tool, path=search_path())
    if executable is None:
        package = TOOL_PACKAGES.get(tool)
        raise HookError(f"{tool} is not installed", packages_hint(*package) if package else None)
    return executable


def run_tool(
    argv: Sequence[str],
    log: Log,
    *,
    env: Mapping[str, str] | None = None,
    check: bool = True,
    stdout: bool = True,
) -> subprocess.CompletedProcess[str]:
    """Run a host tool with a minimal environment, logging the command line.

    Failures (with `check`) and a missing tool are HookErrors; `stdout=False` discards it.
    """
    tool = argv[0]
    executable = find_tool(tool)
    extra = dict(env or {})
    log("$ " + shlex.join([*(f"{k}={v}" for k, v in extra.items()), *argv]))
    try:
        proc = subprocess.run(
            [executable, *argv[1:]],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE if stdout else subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env={**BASE_ENV, **extra},
            text=True,
            errors="replace",
            check=False,
        )
    except OSError as e:
        raise HookError(f"cannot run {tool}: {e.strerror or e}") from None
    if proc.stdout is None:
        proc.stdout = ""
    if check and proc.returncode != 0:
        raise tool_failure(tool, proc)
    return proc


def tool_failure(tool: str, proc: subprocess.CompletedProcess[str]) -> HookError:
    """The error for a tool that failed: its exit status and the last lines it printed."""
    code = proc.returncode
    status = f"exit status {code}" if code >= 0 else f"signal {-code}"
    lines = [line.strip() for line in (proc.stderr or proc.stdout or "").splitlines()]
    tail = " / ".join([line for line in lines if line][-3:]) or "no error output"
    return HookError(f"{tool} failed with {status}: {tail}")


def reason(error: Exception) -> str:
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    return str(error)
