"""Kernel modules, loaded in-process the way kmod's modprobe loads them, without running it.

The initramfs holds the modules of the running kernel under /usr/lib/modules/$(uname -r)
with only depmod's binary indexes (mkinitcpio deletes the text ones), so this module reads
kmod's index format itself (`BinaryIndex`), resolves a name or alias to modules the way
libkmod does (`ModuleIndex.lookup`), orders them with their dependencies and soft
dependencies as `modprobe` would (`ModuleIndex.probe_list`) and hands each to the kernel
with finit_module(2) (`LiveKernel`). Everything but `LiveKernel` is pure: the kernel is
injected, so resolution and load order are testable without loading anything.

Module options given on the kernel command line (`loop.max_loop=16`) are applied as
modprobe applies them (`cmdline_module_options`). Not read, unlike modprobe: modprobe.d
configuration (aliases, options, blacklists, install commands).
"""

from __future__ import annotations

import bisect
import ctypes
import errno
import functools
import os
import re
import struct
from collections.abc import Callable, Iterator, Sequence
from typing import Protocol

import attrs

from archiso_hook.errors import HookError

# Plain strings, not pathlib: its import (urllib.parse, ipaddress...) is start-up time.
MODULES_DIR = "/usr/lib/modules"
SYSFS_MODULES = "/sys/module"

# libkmod/libkmod-index.c: a big-endian radix tree. Node offsets carry in their high
# nibble which optional parts the node has; values are sorted by priority.
INDEX_MAGIC = 0xB007F457
INDEX_VERSION_MAJOR = 0x0002
_NODE_PREFIX = 0x80000000
_NODE_VALUES = 0x40000000
_NODE_CHILDS = 0x20000000
_NODE_MASK = 0x0FFFFFFF
_HEADER = struct.Struct(">III")
_U32 = struct.Struct(">I")
_WILDCARDS = "*?["

MODULE_SUFFIXES = (".ko", ".ko.gz", ".ko.xz", ".ko.zst")


# --- fnmatch(3) ------------------------------------------------------------------------


_POSIX_CLASSES = {
    "alnum": "0-9A-Za-z",
    "alpha": "A-Za-z",
    "blank": " \\t",
    "cntrl": "\\x00-\\x1f\\x7f",
    "digit": "0-9",
    "graph": "!-~",
    "lower": "a-z",
    "print": " -~",
    "punct": re.escape("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~"),
    "space": " \\t\\n\\r\\f\\v",
    "upper": "A-Z",
    "xdigit": "0-9A-Fa-f",
}
_NEVER = re.compile(r"(?!)")


def fnmatch(pattern: str, name: str) -> bool:
    """glibc's fnmatch(pattern, name, 0) in the C locale, as kmod calls it.

    Python's fnmatch differs: no backslash escapes, `[^...]` negation or character
    classes. Malformed patterns (an unclosed `[`, a range after a class) are left out:
    glibc's answer for them depends on the name; depmod never writes them.
    """
    return _fnmatch_regex(pattern).fullmatch(name) is not None


@functools.lru_cache(maxsize=1024)
def _fnmatch_regex(pattern: str) -> re.Pattern[str]:
    parts: list[str] = []
    i = 0
    while i < len(pattern):
        char = pattern[i]
        i += 1
        if char == "*":
            parts.append(".*")
        elif char == "?":
            parts.append(".")
        elif char == "\\":
            if i == len(pattern):
                return _NEVER  # glibc: a trailing backslash matches nothing
            parts.append(re.escape(pattern[i]))
            i += 1
        elif char == "[":
            bracket = _bracket(pattern, i)
            if bracket is None:
                parts.append(re.escape("["))  # unterminated: a literal '['
            elif bracket[0] is None:
                return _NEVER  # glibc rejects the bracket: it matches nothing
            else:
                parts.append(bracket[0])
                i = bracket[1]
        else:
            parts.append(re.escape(char))
    return re.compile("".join(parts), re.DOTALL)


def _bracket(pattern: str, i: int) -> tuple[str | None, int] | None:
    """The regex of the bracket expression opened before pattern[i], and where it ends.

    None when the bracket is not closed (it is then a literal '['); (None, end) when glibc
    makes the whole pattern match nothing (an unknown class, a bad collating element).
    """
    negate = i < len(pattern) and pattern[i] in "!^"
    i += negate
    items: list[str] = []
    first = True
    while i < len(pattern):
        char = pattern[i]
        if char == "]" and not first:
            body = "".join(items)
            if not body:
                return (".", i + 1) if negate else (_NEVER.pattern, i + 1)
            return f"[{'^' if negate else ''}{body}]", i + 1
        first = False
        if pattern.startswith("[:", i):
            end = i + 2
            while end < len(pattern) and "a" <= pattern[end] < "z":  # glibc's test, sic
                end += 1
            if pattern.startswith(":]", end):
                cls = _POSIX_CLASSES.get(pattern[i + 2 : end])
                if cls is None:
                    return None, end + 2
                items.append(cls)
                i = end + 2
                continue
        elif pattern.startswith("[=", i) and pattern.startswith("=]", i + 3):
            items.append(re.escape(pattern[i + 2]))  # C locale: [=x=] is x
            i += 5
            continue
        # A character that may start a range: plain, escaped, or [.x.] (the C locale has
        # no multi-character collating elements).
        if char == "\\" and i + 1 < len(pattern):
            char, i = pattern[i + 1], i + 2
        elif pattern.startswith("[.", i):
            if pattern.find(".]", i + 2) != i + 3:
                return None, len(pattern)
            char, i = pattern[i + 2], i + 5
        else:
            i += 1
        if pattern.startswith("-", i) and i + 1 < len(pattern) and pattern[i + 1] != "]":
            high = pattern[i + 1]
            if high == "\\" and i + 2 < len(pattern):
                high = pattern[i + 2]
                i += 1
            i += 2
            if char <= high:  # glibc: a reversed range matches nothing
                items.append(f"{re.escape(char)}-{re.escape(high)}")
            continue
        items.append(re.escape(char))
    return None


# --- the index format --------------------------------------------------------------------


_Values = tuple[tuple[int, str], ...]  # (priority, value) in file order


@attrs.frozen
class _Node:
    prefix: str
    first: int  # the character of children[0]
    children: tuple[int, ...]  # offsets, 0 where there is no child
    values: _Values

    def child(self, char: str) -> int:
        index = ord(char) - self.first
        return self.children[index] if 0 <= index < len(self.children) else 0


class BinaryIndex:
    """One of depmod's `modules.*.bin` files: keys mapped to prioritised string values.

    Keys are decoded as latin-1 so that each character is one byte of the file, as in C;
    values are decoded like file names. Nodes are parsed when first visited and kept.
    """

    def __init__(self, data: bytes, name: str = "index") -> None:
        self.name = name
        self._data = data
        self._nodes: dict[int, _Node] = {}
        self._patterns: dict[tuple[int, int, str], list[tuple[re.Pattern[str], _Values]]] = {}
        if len(data) < _HEADER.size:
            raise self._corrupt("shorter than its header")
        magic, version, self._root = _HEADER.unpack_from(data)
        if magic != INDEX_MAGIC:
            raise self._corrupt(f"bad magic {magic:#010x}")
        if version >> 16 != INDEX_VERSION_MAJOR:
            raise self._corrupt(f"unsupported version {version:#010x}")

    @classmethod
    def read(cls, path: str | os.PathLike[str]) -> BinaryIndex:
        with open(path, "rb") as f:
            return cls(f.read(), os.fspath(path))

    def _corrupt(self, what: str) -> HookError:
        return HookError(
            f"corrupt kernel module index {self.name}: {what}",
            hint="the initramfs is damaged or was built by an incompatible depmod",
        )

    def _node(self, offset: int) -> _Node | None:
        if offset & _NODE_MASK == 0:
            return None
        node = self._nodes.get(offset)
        if node is None:
            node = self._nodes[offset] = self._parse(offset)
        return node

    def _parse(self, offset: int) -> _Node:
        data = self._data
        pos = offset & _NODE_MASK
        try:
            prefix = ""
            if offset & _NODE_PREFIX:
                end = data.index(0, pos)
                prefix = data[pos:end].decode("latin-1")
                pos = end + 1
            first, children = 0, ()
            if offset & _NODE_CHILDS:
                first, last = data[pos], data[pos + 1]
                if first > last:
                    raise self._corrupt(f"bad child range at {pos}")
                children = struct.unpack_from(f">{last - first + 1}I", data, pos + 2)
                pos += 2 + 4 * len(children)
            values: list[tuple[int, str]] = []
            if offset & _NODE_VALUES:
                (count,) = _U32.unpack_from(data, pos)
                pos += 4
                for _ in range(count):
                    (priority,) = _U32.unpack_from(data, pos)
                    end = data.index(0, pos + 4)
                    values.append((priority, os.fsdecode(data[pos + 4 : end])))
                    pos = end + 1
        except (IndexError, ValueError, struct.error):
            raise self._corrupt(f"truncated node at {offset & _NODE_MASK}") from None
        return _Node(prefix, first, children, tuple(values))

    def search(self, key: str) -> str | None:
        """The first value of exactly `key` (libkmod's index_mm_search)."""
        node = self._node(self._root)
        i = 0
        while node is not None:
            if not key.startswith(node.prefix, i):
                return None
            i += len(node.prefix)
            if i == len(key):
                return node.values[0][1] if node.values else None
            node = self._node(node.child(key[i]))
            i += 1
        return None

    def search_wild(self, key: str) -> list[str]:
        """The values of every stored key that, read as an fnmatch pattern, matches `key`.

        libkmod's index_mm_searchwild: follow `key` down the tree and, at each node on
        the way, try every subtree that starts with a wildcard. The result is sorted by
        priority; among equal priorities the value found last comes first, as libkmod's
        add_value() inserts before its equals.
        """
        priorities: list[int] = []
        found: list[str] = []

        def add(values: _Values) -> None:
            for priority, value in values:
                at = bisect.bisect_left(priorities, priority)
                priorities.insert(at, priority)
                found.insert(at, value)

        offset = self._root
        node = self._node(offset)
        i = 0
        while node is not None:
            for j, char in enumerate(node.prefix):
                if char in _WILDCARDS:
                    for pattern, values in self._patterns_below(offset, j, ""):
                        if pattern.fullmatch(key, i + j):
                            add(values)
                    return found
                if i + j >= len(key) or key[i + j] != char:
                    return found
            i += len(node.prefix)
            for wildcard in _WILDCARDS:
                child = node.child(wildcard)
                if child & _NODE_MASK:
                    for pattern, values in self._patterns_below(child, 0, wildcard):
                        if pattern.fullmatch(key, i):
                            add(values)
            if i == len(key):
                add(node.values)
                return found
            offset = node.child(key[i])
            node = self._node(offset)
            i += 1
        return found

    def _patterns_below(
        self, offset: int, start: int, lead: str
    ) -> list[tuple[re.Pattern[str], _Values]]:
        """The keys of a subtree whose keys all start with a wildcard, compiled.

        The subtree is the node at `offset` without the first `start` characters of its
        prefix, below `lead`. The order is libkmod's: children, then the node itself.
        """
        memo = (offset, start, lead)
        if memo not in self._patterns:
            patterns: list[tuple[re.Pattern[str], _Values]] = []

            def walk(offset: int, start: int, pattern: str) -> None:
                node = self._node(offset)
                if node is None:
                    return
                pattern += node.prefix[start:]
                for index, child in enumerate(node.children):
                    walk(child, 0, pattern + chr(node.first + index))
                if node.values:
                    patterns.append((_fnmatch_regex(pattern), node.values))

            walk(offset, start, lead)
            self._patterns[memo] = patterns
        return self._patterns[memo]

    def items(self) -> Iterator[tuple[str, str]]:
        """Every (key, value) pair, in key order (libkmod's index_mm_dump)."""
        stack: list[tuple[str, int]] = [("", self._root)]
        while stack:
            key, offset = stack.pop()
            if offset & _NODE_MASK == 0:
                continue
            node = self._parse(offset)  # not kept: a dump visits every node once
            key += node.prefix
            for _, value in node.values:
                yield key, value
            for index in reversed(range(len(node.children))):
                stack.append((key + chr(node.first + index), node.children[index]))


# --- names and modules.softdep ------------------------------------------------------------


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


# --- modules, and the kernel they go to -----------------------------------------------------


def _path(value: str | os.PathLike[str]) -> str:
    return os.fspath(value)


def _optional_path(value: str | os.PathLike[str] | None) -> str | None:
    return None if value is None else os.fspath(value)


@attrs.frozen
class Module:
    """A module of the initramfs, or one built into the kernel (no path)."""

    name: str
    path: str | None = attrs.field(converter=_optional_path)
    deps: tuple[str, ...] = ()  # as modules.dep lists them; modprobe loads them in reverse

    @property
    def builtin(self) -> bool:
        return self.path is None


@attrs.frozen
class Step:
    """One module to insert. A failure of one not `required` (a softdep) is ignored."""

    module: Module
    required: bool


class Kernel(Protocol):
    """What ModuleIndex needs of the running kernel; tests give a fake."""

    def release(self) -> str:
        """`uname -r`, for messages."""
        ...

    def is_loaded(self, name: str) -> bool:
        """Whether the module is live in the kernel, or built in with parameters."""
        ...

    def insert(self, module: Module) -> bool:
        """Insert a module: False if the kernel already had it.

        Raises OSError with the kernel's errno when it refuses the module, HookError
        for anything else.
        """
        ...


# The wording of kmod's insmod for the errnos of init_module(2).
_ERRNO_TEXT = {
    errno.ENOEXEC: "Invalid module format",
    errno.ENOENT: "Unknown symbol in module",
    errno.ESRCH: "Module has wrong symbol version",
    errno.EINVAL: "Invalid parameters",
}
_MISMATCH = "the initramfs's modules do not match the running kernel {release}"
_ERRNO_HINTS = {
    errno.ENOEXEC: _MISMATCH,
    errno.ENOENT: _MISMATCH + ", or a dependency is missing; see dmesg",
    errno.ESRCH: _MISMATCH,
    errno.EPERM: "loading modules needs CAP_SYS_MODULE and kernel.modules_disabled=0",
    errno.EKEYREJECTED: "the kernel only accepts modules signed by a key it trusts",
    errno.ENOKEY: "the kernel only accepts modules signed by a key it trusts",
    errno.EBADMSG: "the module's signature is malformed",
    errno.ENOMEM: "out of memory",
    errno.ENOSYS: "the running kernel cannot load modules (no CONFIG_MODULES)",
}


# --- the kernel ------------------------------------------------------------------------------

MODULE_INIT_COMPRESSED_FILE = 4  # finit_module(2) flag, Linux 5.17+ with MODULE_DECOMPRESS

# Syscall signatures (after the number) and numbers by process ABI, called via syscall(2):
# glibc has no finit_module() wrapper.
_ArgTypes = tuple[type[ctypes.c_int | ctypes.c_ulong | ctypes.c_char_p], ...]
_SYSCALLS: dict[str, tuple[_ArgTypes, dict[str, int]]] = {
    "finit_module": (
        (ctypes.c_int, ctypes.c_char_p, ctypes.c_int),  # fd, param_values, flags
        {"x86_64": 313, "i386": 350, "aarch64": 273},
    ),
    "init_module": (
        (ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p),  # image, len, param_values
        {"x86_64": 175, "i386": 128, "aarch64": 105},
    ),
}

_COMPRESSION_MAGICS = {
    b"\x1f\x8b": "gzip",
    b"\xfd7zXZ\x00": "xz",
    b"\x28\xb5\x2f\xfd": "zstd",
}


def compression_of(head: bytes) -> str | None:
    """The compression of a module file from its first bytes (None: a plain ELF)."""
    for magic, name in _COMPRESSION_MAGICS.items():
        if head.startswith(magic):
            return name
    return None


def decompress(name: str, data: bytes, compression: str) -> bytes:
    """A module's ELF image, decompressed in Python for kernels that cannot."""
    if compression == "gzip":
        import gzip  # noqa: PLC0415  (a compressed module: not at start-up)

        return gzip.decompress(data)
    if compression == "xz":
        import lzma  # noqa: PLC0415  (a compressed module: not at start-up)

        return lzma.decompress(data, format=lzma.FORMAT_XZ)
    raise HookError(
        f"cannot load kernel module {name}: it is {compression}-compressed and the running"
        " kernel cannot decompress modules (no CONFIG_MODULE_DECOMPRESS)",
        hint="use a kernel that decompresses modules, or build the image with"
        " uncompressed or xz-compressed modules",
    )


def _abi() -> str:
    machine = os.uname().machine
    if machine in {"x86_64", "i386", "i486", "i586", "i686"}:
        # The numbers are the process's: a 32-bit program on a 64-bit kernel uses i386's.
        return "x86_64" if ctypes.sizeof(ctypes.c_void_p) == 8 else "i386"
    return machine


@attrs.frozen
class Syscalls:
    """finit_module(2) and init_module(2); each raises OSError on failure."""

    finit_module: Callable[[int, bytes, int], None]
    init_module: Callable[[bytes, bytes], None]

    @classmethod
    def from_libc(cls) -> Syscalls:
        abi = _abi()
        libc = ctypes.CDLL(None, use_errno=True)

        def bind(name: str) -> Callable[..., None]:
            argtypes, numbers = _SYSCALLS[name]
            if abi not in numbers:
                raise HookError(f"cannot load kernel modules on {abi}: unknown {name} syscall")
            number = numbers[abi]
            prototype = ctypes.CFUNCTYPE(ctypes.c_long, ctypes.c_long, *argtypes, use_errno=True)
            function = prototype(("syscall", libc))

            def call(*args: object) -> None:
                if function(number, *args) == -1:
                    code = ctypes.get_errno()
                    raise OSError(code, os.strerror(code))

            return call

        finit, init = bind("finit_module"), bind("init_module")
        return cls(
            finit_module=finit,
            init_module=lambda image, params: init(image, len(image), params),
        )


def cmdline_module_options(text: str) -> dict[str, bytes]:
    """Module parameters given on the kernel command line, as modprobe applies them:
    `loop.max_loop=8 dm-mod.use_blk_mq=y` -> {"loop": b"max_loop=8", "dm_mod": ...}.

    The kernel keeps these for built-in code only; for a module they take effect
    because the loader passes them along, which finit_module(2) leaves to us.
    """
    from archiso_hook.cmdline import split_cmdline  # noqa: PLC0415

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


@attrs.define
class LiveKernel:
    """The running kernel: /sys/module, and the module syscalls (bound on first use)."""

    sysfs: str = attrs.field(default=SYSFS_MODULES, converter=_path)
    syscalls: Syscalls | None = None
    options: dict[str, bytes] = attrs.Factory(lambda: cmdline_module_options(_read_cmdline()))

    def release(self) -> str:
        return os.uname().release

    def is_loaded(self, name: str) -> bool:
        directory = os.path.join(self.sysfs, name)
        try:
            with open(os.path.join(directory, "initstate"), encoding="ascii") as f:
                state = f.read().strip()
        except FileNotFoundError:
            # Built-in modules with parameters have a directory but no initstate.
            return os.path.isdir(directory)
        # "coming" or "going": insert anyway; the kernel waits for the other load.
        return state == "live"

    def insert(self, module: Module) -> bool:
        if module.path is None:
            return False
        if self.syscalls is None:
            self.syscalls = Syscalls.from_libc()
        try:
            fd = os.open(module.path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as error:
            raise HookError(
                f"cannot read kernel module {module.name}: {error.strerror} ({module.path})",
                hint="the initramfs is incomplete: rebuild it",
            ) from error
        with os.fdopen(fd, "rb") as file:
            compression = compression_of(file.read(6))
            flags = 0 if compression is None else MODULE_INIT_COMPRESSED_FILE
            params = self.options.get(module.name, b"")
            try:
                self.syscalls.finit_module(fd, params, flags)
                return True
            except OSError as error:
                if error.errno == errno.EEXIST:
                    return False
                # No finit_module (Linux < 3.8), or no in-kernel decompression (unknown
                # flag before 5.17, EOPNOTSUPP without MODULE_DECOMPRESS, EINVAL for
                # another algorithm than the kernel's).
                unsupported = {errno.ENOSYS}
                if compression is not None:
                    unsupported |= {errno.EINVAL, errno.EOPNOTSUPP}
                if error.errno not in unsupported:
                    raise
            file.seek(0)
            image = file.read()
        if compression is not None:
            image = decompress(module.name, image, compression)
        try:
            self.syscalls.init_module(image, params)
        except OSError as error:
            if error.errno == errno.EEXIST:
                return False
            raise
        return True


# --- lookup, load order and loading ---------------------------------------------------------


def default_root() -> str:
    return os.path.join(MODULES_DIR, os.uname().release)


@attrs.define
class ModuleIndex:
    """The modules of one kernel release: lookup, load order and loading.

    Index files are read on first use and kept for the life of the object.
    """

    root: str = attrs.field(factory=default_root, converter=_path)
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
                            raise self._load_error(module, error) from error
        return inserted

    def _load_error(self, module: Module, error: OSError) -> HookError:
        code = error.errno or 0
        release = self.kernel.release()
        return HookError(
            f"cannot load kernel module {module.name}: {_ERRNO_TEXT.get(code, os.strerror(code))}",
            hint=_ERRNO_HINTS.get(code, "see dmesg").format(release=release),
        )


@functools.cache
def default_index() -> ModuleIndex:
    """The running kernel's modules in the initramfs, shared by the whole process."""
    return ModuleIndex()


def ensure_modules(*names: str) -> list[str]:
    """Load modules (names or aliases) with their dependencies; returns those inserted."""
    return default_index().load(*names)
