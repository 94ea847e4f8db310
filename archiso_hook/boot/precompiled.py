"""The methods attrs generates for our classes, compiled when the hook is built.

attrs writes each class's `__init__`, `__eq__`, ... as Python source and compiles it
when the class is defined, at import: a quarter of the instructions the frozen hook
runs before its first line (callgrind). The build runs `python -OO -m
archiso_hook.boot.precompiled TABLE`, which imports every module of the hook and keeps what
attrs compiled, keyed by the file name, mode, compiler flags and the SHA-256 of the
exact source (the sources themselves would make the table half as big again); the
frozen hook's `install()` looks each compilation up there first. Anything not found is
compiled as before and the table is ignored unless the interpreter's version,
optimisation level and fixed hash seed are the ones it was made with (attrs orders some
of what it writes by sets: with another seed the sources differ), so a stale or missing
table costs time, never correctness.
"""

from __future__ import annotations
import __future__

# Built in; hashlib would try OpenSSL's first, which disk boots leave out.
import _sha256  # type: ignore[import-not-found]
import builtins
import marshal
import os
import sys
from collections.abc import Callable
from types import CodeType
from typing import Any

# The file next to this module in the frozen tree (Makefile: --add-data).
TABLE = os.path.join(os.path.dirname(__file__), "attrs-methods.marshal")
# Only attrs' compilations: its module's name as the caller of compile().
_CALLER = "attr._make"
# What compile() inherits from its caller's code unless told not to (PyCF_MASK).
_FUTURE = 0
for _name in __future__.all_feature_names:
    _FUTURE |= getattr(__future__, _name).compiler_flag

Key = tuple[str, str, int, bytes]  # file name, mode, flags, SHA-256 of the source


def _header() -> tuple[int, int, int]:
    return (sys.hexversion, sys.flags.optimize, sys.flags.hash_randomization)


def _wrap(lookup: Callable[[Key, Callable[[], CodeType]], CodeType]) -> Callable[..., Any]:
    """builtins.compile, with attrs' string compilations going through `lookup`."""
    real = builtins.compile

    def compile(  # noqa: PLR0917  (the builtin's signature)
        source: Any,
        filename: Any,
        mode: str,
        flags: int = 0,
        dont_inherit: bool = False,
        optimize: int = -1,
        **kwargs: Any,
    ) -> Any:
        caller = sys._getframe(1)
        if not dont_inherit:
            # What the builtin would have inherited from its caller, not from here.
            flags |= caller.f_code.co_flags & _FUTURE
        if (
            isinstance(source, str)
            and isinstance(filename, str)
            and optimize == -1
            and not kwargs
            and caller.f_globals.get("__name__") == _CALLER
        ):
            digest = _sha256.sha256(source.encode("utf-8", "surrogatepass")).digest()
            key = (filename, mode, flags, digest)
            return lookup(key, lambda: real(source, filename, mode, flags, True))
        return real(source, filename, mode, flags, True, optimize, **kwargs)

    return compile


class Stats:
    """How many of attrs' compilations the table answered, for the debug log. (A plain
    class: this module runs before attrs is imported, so as to see all it compiles.)"""

    def __init__(self) -> None:
        self.found = 0
        self.compiled = 0

    def __str__(self) -> str:
        return f"{self.found} precompiled, {self.compiled} compiled"


# What install() put in place, if anything.
installed: Stats | None = None


def install(path: str = TABLE) -> Stats | None:
    """Answer attrs' compilations from the table at `path`; None if there is none that
    this interpreter can use (not frozen, or built by another Python)."""
    try:
        with open(path, "rb") as f:
            header, table = marshal.loads(f.read())
    except (OSError, EOFError, ValueError, TypeError):
        return None
    if tuple(header) != _header() or not isinstance(table, dict):
        return None
    stats = Stats()

    def lookup(key: Key, compile_it: Callable[[], CodeType]) -> CodeType:
        code = table.get(key)
        if code is None:
            stats.compiled += 1
            return compile_it()
        stats.found += 1
        return code  # type: ignore[no-any-return]

    global installed  # noqa: PLW0603  (once per process, before attrs is imported)
    builtins.compile = _wrap(lookup)
    installed = stats
    return stats


def record(modules: list[str]) -> dict[Key, CodeType]:
    """What attrs compiles while `modules` are imported (each must be new here)."""
    table: dict[Key, CodeType] = {}

    def keep(key: Key, compile_it: Callable[[], CodeType]) -> CodeType:
        table[key] = code = compile_it()
        return code

    real = builtins.compile
    builtins.compile = _wrap(keep)
    try:
        for name in modules:
            __import__(name)
    finally:
        builtins.compile = real
    return table


# The builder's package: it runs on the build host, from sources beside the frozen modules
# (Makefile: BUILDER_DIR), and never at boot.
BUILDER = "build"


def hook_modules() -> list[str]:
    """attrs itself and every module of the hook, as found in its package tree, but the
    builder's."""
    top = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    names = []
    for directory, subdirs, files in os.walk(top):
        subdirs[:] = sorted(d for d in subdirs if not d.startswith(("_", ".")))
        if directory == top:
            subdirs.remove(BUILDER)
        package = os.path.relpath(directory, os.path.dirname(top)).replace(os.sep, ".")
        names += [
            f"{package}.{entry[:-3]}"
            for entry in files
            if entry.endswith(".py") and entry not in ("__init__.py", "__main__.py")
        ]
    return ["attr", "attrs", *sorted(names)]


def main(argv: list[str]) -> int:
    if len(argv) != 1 or sys.flags.optimize != 2 or sys.flags.hash_randomization:
        print(
            "usage: PYTHONHASHSEED=0 python -OO -m archiso_hook.boot.precompiled TABLE "
            "(the seed and -OO of the frozen hook)",
            file=sys.stderr,
        )
        return 2
    if "attr" in sys.modules:
        print("attrs is imported already: its own classes would be missed", file=sys.stderr)
        return 1
    table = record(hook_modules())
    with open(argv[0], "wb") as f:
        f.write(marshal.dumps((_header(), table)))
    print(f"{argv[0]}: {len(table)} compilations of attrs")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
