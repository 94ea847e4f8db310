"""Kernel modules, loaded in-process the way kmod's modprobe loads them, without running it.

The initramfs holds the modules of the running kernel under /usr/lib/modules/$(uname -r)
with only depmod's binary indexes (mkinitcpio deletes the text ones), so this package
reads kmod's index format itself (`index`: `BinaryIndex`), resolves a name or alias to
modules the way libkmod does (`resolve`: `ModuleIndex.lookup`), orders them with their
dependencies and soft dependencies as `modprobe` would (`ModuleIndex.probe_list`) and
hands each to the kernel with finit_module(2) (`load`: `LiveKernel`). Everything but
`LiveKernel` is pure: the kernel is injected, so resolution and load order are testable
without loading anything.

Module parameters are the caller's to give (`LiveKernel(options=...)`): the boot reads
them from the kernel command line (archiso_hook.boot.modules).
"""

from __future__ import annotations

from archiso_hook.kernel.kmod.index import BinaryIndex, fnmatch
from archiso_hook.kernel.kmod.load import (
    MODULE_INIT_COMPRESSED_FILE,
    SYSFS_MODULES,
    Kernel,
    LiveKernel,
    Module,
    Syscalls,
    compression_of,
    decompress,
)
from archiso_hook.kernel.kmod.resolve import (
    MODULE_SUFFIXES,
    MODULES_DIR,
    ModuleIndex,
    Softdep,
    Step,
    default_root,
    modname,
    normalize_alias,
    parse_softdeps,
)

__all__ = [
    "MODULES_DIR",
    "MODULE_INIT_COMPRESSED_FILE",
    "MODULE_SUFFIXES",
    "SYSFS_MODULES",
    "BinaryIndex",
    "Kernel",
    "LiveKernel",
    "Module",
    "ModuleIndex",
    "Softdep",
    "Step",
    "Syscalls",
    "compression_of",
    "decompress",
    "default_root",
    "fnmatch",
    "modname",
    "normalize_alias",
    "parse_softdeps",
]
