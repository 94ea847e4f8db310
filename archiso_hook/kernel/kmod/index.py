"""depmod's binary indexes (`modules.*.bin`), read the way libkmod reads them, and glibc's
fnmatch(3), which their wildcard keys are matched with."""

from __future__ import annotations

import bisect
import functools
import os
import re
import struct
from collections.abc import Iterator

import attrs

from archiso_hook.errors import HookError

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
