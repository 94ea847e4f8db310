"""Module names and aliases resolved to modules, and the order modprobe loads them in:
modules.dep, the aliases, built-ins and modules.softdep, through `ModuleIndex`."""

from __future__ import annotations

import os
from collections.abc import Sequence

import attrs

from archiso_hook.errors import HookError
from archiso_hook.kernel.kmod.index import BinaryIndex, fnmatch
from archiso_hook.kernel.kmod.load import Kernel, LiveKernel, Module, fs_path, load_error

# Plain strings, not pathlib: its import (urllib.parse, ipaddress...) is start-up time.
MODULES_DIR = "/usr/lib/modules"
MODULE_SUFFIXES = (".ko", ".ko.gz", ".ko.xz", ".ko.zst")


def modname(name: str) -> str:
    """A module's canonical name: `-` as `_`, without a directory or `.ko*` suffix."""
    name = name.rpartition("/")[2]
    return name.partition(".")[0].replace("-", "_")


def _underscores(alias: str) -> str | None:
    # libkmod's alias_normalize(): `-` as `_` outside `[...]`; None if unbalanced.
    out: list[str] = []
    in_bracket = False
    for char in alias:
        if char == "]" and not in_bracket:
            return None
        in_bracket = (in_bracket or char == "[") and char != "]"
        out.append("_" if char == "-" and not in_bracket else char)
    return None if in_bracket else "".join(out)


def normalize_alias(alias: str) -> str:
    """A module name or alias as the indexes store it: `-` as `_`, except in `[...]`."""
    normalized = _underscores(alias)
    if normalized is None:
        raise HookError(f"invalid kernel module name {alias!r}: unbalanced brackets")
    return normalized


@attrs.frozen
class Softdep:
    """A `softdep MODULE pre: ... post: ...` line; MODULE may be an fnmatch pattern."""

    module: str
    pre: tuple[str, ...]
    post: tuple[str, ...]


def parse_softdeps(text: str) -> list[Softdep]:
    """The softdep lines of a modprobe.d-style file such as depmod's modules.softdep.

    As in libkmod, names before any `pre:` or `post:` are dropped (depmod copies such
    lines verbatim from modules' own MODULE_SOFTDEP), and the other commands are ignored.
    """
    softdeps = []
    for line in text.replace("\\\n", "").splitlines():
        words = line.split()
        if len(words) < 2 or words[0] != "softdep":
            continue
        lists: dict[str, list[str]] = {"pre:": [], "post:": []}
        current: list[str] | None = None
        for word in words[2:]:
            if word in lists:
                current = lists[word]
            elif current is not None:
                current.append(word)
        module = _underscores(words[1])
        if module is not None:  # libkmod skips the line as a syntax error
            softdeps.append(Softdep(module, tuple(lists["pre:"]), tuple(lists["post:"])))
    return softdeps


@attrs.frozen
class Step:
    """One module to insert. A failure of one not `required` (a softdep) is ignored."""

    module: Module
    required: bool


def default_root() -> str:
    return os.path.join(MODULES_DIR, os.uname().release)


@attrs.define
class ModuleIndex:
    """The modules of one kernel release: lookup, load order and loading.

    Index files are read on first use and kept for the life of the object.
    """

    root: str = attrs.field(factory=default_root, converter=fs_path)
    kernel: Kernel = attrs.field(factory=LiveKernel)
    _indexes: dict[str, BinaryIndex | None] = attrs.field(factory=dict, init=False, repr=False)
    _softdeps: list[Softdep] | None = attrs.field(default=None, init=False, repr=False)
    # Built-ins known by alias only: modules.builtin lacks those that are not tristate
    # (e.g. debugfs, alias fs-debugfs), as libkmod marks what this index finds.
    _builtin_by_alias: set[str] = attrs.field(factory=set, init=False, repr=False)

    def _check_root(self) -> None:
        if not os.path.isdir(self.root):
            raise HookError(
                f"the initramfs has no kernel modules for the running kernel"
                f" {self.kernel.release()} ({self.root} is missing)",
                hint="the image was built for another kernel: rebuild it for this one",
            )

    def _index(self, filename: str) -> BinaryIndex | None:
        # A missing index is empty, as in libkmod (older depmods do not write them all).
        if filename not in self._indexes:
            self._check_root()
            path = os.path.join(self.root, filename)
            self._indexes[filename] = BinaryIndex.read(path) if os.path.isfile(path) else None
        return self._indexes[filename]

    def _search(self, filename: str, key: str) -> str | None:
        index = self._index(filename)
        return None if index is None else index.search(key)

    def _search_wild(self, filename: str, key: str) -> list[str]:
        index = self._index(filename)
        return [] if index is None else index.search_wild(key)

    def softdeps(self) -> list[Softdep]:
        """The softdep lines of modules.softdep (depmod's, from the modules' own info)."""
        if self._softdeps is None:
            self._check_root()
            try:
                with open(
                    os.path.join(self.root, "modules.softdep"), errors="surrogateescape"
                ) as f:
                    text = f.read()
            except FileNotFoundError:
                text = ""
            self._softdeps = parse_softdeps(text)
        return self._softdeps

    def lookup(self, name: str) -> list[str]:
        """The module names that a module name or alias stands for.

        libkmod's order, less modprobe.d: modules.dep (a module's own name), then
        `symbol:` aliases, modules.alias (where every match counts), then modules
        built into the kernel, by name and by alias. Raises HookError if none matches.
        """
        names = self._lookup(name)
        if not names:
            raise HookError(
                f"kernel module {name!r} is not in the initramfs ({self.root});"
                " add it to the image",
                hint=f"e.g. MODULES=({name}) in mkinitcpio.conf",
            )
        return names

    def _lookup(self, name: str) -> list[str]:
        if name.endswith(MODULE_SUFFIXES):
            name = modname(name)
        alias = normalize_alias(name)
        if ":" not in alias and self._search("modules.dep.bin", alias) is not None:
            return [alias]
        if alias.startswith("symbol:"):
            found = self._search_wild("modules.symbols.bin", alias)
            if found:
                return found
        found = self._search_wild("modules.alias.bin", alias)
        if found:
            return found
        if self._search("modules.builtin.bin", alias) is not None:
            return [alias]
        found = self._search_wild("modules.builtin.alias.bin", alias)
        self._builtin_by_alias.update(found)
        return found

    def module(self, name: str) -> Module | None:
        """The module called `name` (already normalized), None if the image lacks it."""
        line = self._search("modules.dep.bin", name)
        if line is None:
            return Module(name, None) if self.is_builtin(name) else None
        path, _, deps = line.partition(":")
        return Module(
            name,
            os.path.join(self.root, path),
            tuple(os.path.join(self.root, dep) for dep in deps.split()),
        )

    def is_builtin(self, name: str) -> bool:
        if name in self._builtin_by_alias:
            return True
        return self._search("modules.builtin.bin", name) is not None

    def probe_list(self, name: str) -> list[Step]:
        """What `modprobe NAME` inserts, in order, for a module name from lookup().

        libkmod's kmod_module_get_probe_list(): each dependency in reverse modules.dep
        order (the deepest first), then the module, each preceded by its softdep pre:
        modules (with their own dependencies) and followed by its post: ones. Like
        libkmod, a module may appear twice; inserting it again is a no-op.
        """
        top = self.module(name)
        if top is None:
            raise HookError(
                f"kernel module {name!r} is listed in the initramfs's indexes but missing"
                f" from {self.root}",
                hint="the image is inconsistent: rebuild it",
            )
        required = {top.name, *(modname(str(dep)) for dep in top.deps)}
        visited: set[str] = set()
        steps: list[Step] = []

        def add_with_softdeps(module: Module) -> None:
            pre, post = self._softdeps_of(module.name)
            for other in pre:
                add_probe_list(other)
            steps.append(Step(module, module.name in required))
            for other in post:
                add_probe_list(other)

        def add_probe_list(module: Module) -> None:
            if module.name in visited:
                return
            visited.add(module.name)
            for dep in reversed(module.deps):
                add_with_softdeps(Module(modname(str(dep)), dep))
            add_with_softdeps(module)

        add_probe_list(top)
        return steps

    def _softdeps_of(self, name: str) -> tuple[list[Module], list[Module]]:
        # libkmod uses the first matching line only, and silently skips unknown names.
        for softdep in self.softdeps():
            if fnmatch(softdep.module, name):
                return self._modules(softdep.pre), self._modules(softdep.post)
        return [], []

    def _modules(self, names: Sequence[str]) -> list[Module]:
        found = []
        for name in names:
            for match in self._lookup(name):
                module = self.module(match)
                if module is not None:
                    found.append(module)
        return found

    def resolve(self, name: str) -> list[str]:
        """The modules that `modprobe NAME` would insert, in order, without built-ins."""
        names: list[str] = []
        for top in self.lookup(name):
            for step in self.probe_list(top):
                if not step.module.builtin and step.module.name not in names:
                    names.append(step.module.name)
        return names

    def load(self, *names: str) -> list[str]:
        """Load modules by name or alias, like `modprobe -a`; returns those newly inserted.

        A module the kernel has (built in, or loaded) is skipped with its dependencies,
        as modprobe does. Raises HookError if a module or one of its dependencies
        cannot be loaded; softdeps are best effort.
        """
        inserted: list[str] = []
        for name in names:
            for top in self.lookup(name):
                if self.is_builtin(top) or self.kernel.is_loaded(top):
                    continue
                for step in self.probe_list(top):
                    module = step.module
                    if module.builtin or module.name in inserted:
                        continue
                    if self.kernel.is_loaded(module.name):
                        continue
                    try:
                        if self.kernel.insert(module):
                            inserted.append(module.name)
                    except HookError:
                        if step.required:
                            raise
                    except OSError as error:
                        if step.required:
                            release = self.kernel.release()
                            raise load_error(module, error, release) from error
        return inserted
