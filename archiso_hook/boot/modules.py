"""Kernel modules for the boot: kernel/kmod's loader, given the module parameters of the
kernel command line (`loop.max_loop=16`), which modprobe would apply. Not read, unlike
modprobe: modprobe.d configuration (aliases, options, blacklists, install commands)."""

from __future__ import annotations

import functools

from archiso_hook.cmdline import split_cmdline
from archiso_hook.kernel.kmod import LiveKernel, ModuleIndex, modname


def cmdline_module_options(text: str) -> dict[str, bytes]:
    """Module parameters given on the kernel command line, as modprobe applies them:
    `loop.max_loop=8 dm-mod.use_blk_mq=y` -> {"loop": b"max_loop=8", "dm_mod": ...}.

    The kernel keeps these for built-in code only; for a module they take effect
    because the loader passes them along, which finit_module(2) leaves to us.
    """
    options: dict[str, list[str]] = {}
    for key, value in split_cmdline(text):
        module, dot, param = key.partition(".")
        if not (dot and module and param):
            continue
        quoted = f'"{value}"' if value is not None and any(c.isspace() for c in value) else value
        word = param if quoted is None else f"{param}={quoted}"
        options.setdefault(modname(module), []).append(word)
    return {name: " ".join(words).encode() for name, words in options.items()}


def _read_cmdline() -> str:
    try:
        with open("/proc/cmdline", encoding="utf-8", errors="surrogateescape") as f:
            return f.read()
    except OSError:
        return ""


@functools.cache
def default_index() -> ModuleIndex:
    """The running kernel's modules in the initramfs, shared by the whole process."""
    return ModuleIndex(kernel=LiveKernel(options=cmdline_module_options(_read_cmdline())))


def ensure_modules(*names: str) -> list[str]:
    """Load modules (names or aliases) with their dependencies; returns those inserted."""
    return default_index().load(*names)
