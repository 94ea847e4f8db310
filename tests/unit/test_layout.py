"""The package boundaries of archiso_hook, read from the sources' import statements.

- `kernel/` (the kernel's interfaces) imports only the standard library, attrs (value
  types, as everywhere) and `archiso_hook.errors`, besides its own modules;
- `boot/` (the initramfs) imports neither `build/` nor `live/`;
- `live/` (the live system) does not import `plan`: it reads what the boot did from the
  state file, never by planning again;
- nothing but the command line's `build` command imports `build/`;
- no module is over 500 lines.

Every import counts, also one inside a function or under TYPE_CHECKING: a boundary that
holds only at run time still couples the code.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "archiso_hook"
MAX_LINES = 500
THIRD_PARTY = {"attrs", "attr", "pyudev", "pyroute2", "psutil"}


def modules() -> dict[str, Path]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def imports(path: Path, name: str) -> set[str]:
    """The absolute names of every module `path` imports (`from a import b` counts as
    `a.b` when b is a module of the hook, else as `a`)."""
    known = modules()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                full = f"{base}.{alias.name}"
                found.add(full if full in known else base)
    return found


def top(name: str) -> str:
    return name.split(".", maxsplit=1)[0]


def inside(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


ALL = modules()


@pytest.mark.parametrize("name", [n for n in ALL if inside(n, "archiso_hook.kernel")])
def test_kernel_imports_only_the_standard_library_and_errors(name: str) -> None:
    wrong = sorted(
        imported
        for imported in imports(ALL[name], name)
        if (
            top(imported) == "archiso_hook"
            and imported != "archiso_hook.errors"
            and not inside(imported, "archiso_hook.kernel")
        )
        or (
            top(imported) != "archiso_hook"
            and top(imported) not in sys.stdlib_module_names
            and top(imported) not in {"attrs", "attr", "__future__"}
        )
    )
    assert not wrong, f"{name} imports {wrong}: kernel/ may use the stdlib, attrs and errors"


@pytest.mark.parametrize("name", [n for n in ALL if inside(n, "archiso_hook.boot")])
def test_boot_imports_neither_build_nor_live(name: str) -> None:
    wrong = sorted(
        imported
        for imported in imports(ALL[name], name)
        if inside(imported, "archiso_hook.build") or inside(imported, "archiso_hook.live")
    )
    assert not wrong, f"{name} imports {wrong}: the initramfs's code stands on its own"


@pytest.mark.parametrize("name", [n for n in ALL if inside(n, "archiso_hook.live")])
def test_live_does_not_import_plan(name: str) -> None:
    wrong = sorted(
        imported
        for imported in imports(ALL[name], name)
        if imported == "archiso_hook.plan" or inside(imported, "archiso_hook.build")
    )
    assert not wrong, f"{name} imports {wrong}: the live system reads the state file"


@pytest.mark.parametrize(
    "name",
    [n for n in ALL if not (inside(n, "archiso_hook.build") or n == "archiso_hook.commands.build")],
)
def test_only_the_command_line_imports_the_builder(name: str) -> None:
    wrong = sorted(i for i in imports(ALL[name], name) if inside(i, "archiso_hook.build"))
    assert not wrong, f"{name} imports {wrong}"


@pytest.mark.parametrize("name", sorted(ALL))
def test_no_module_is_over_500_lines(name: str) -> None:
    lines = len(ALL[name].read_text().splitlines())
    assert lines <= MAX_LINES, f"{ALL[name]} has {lines} lines: split it by what its parts do"


def test_the_reader_sees_a_boundary_crossed(tmp_path: Path) -> None:
    """The checks above can fail: the reader finds every kind of import."""
    source = tmp_path / "probe.py"
    source.write_text(
        "import os\n"
        "from archiso_hook import plan\n"
        "def f():\n"
        "    from archiso_hook.live.watch import run_foreground\n"
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n"
        "    from archiso_hook.build import builder\n"
    )
    found = imports(source, "archiso_hook.kernel.probe")
    assert {"os", "archiso_hook.plan", "archiso_hook.live.watch"} <= found
    assert "archiso_hook.build.builder" in found


def test_no_import_is_deferred_by_hand() -> None:
    """Deferral comes from structure (a table of "module:function" names, a module
    imported only where it is needed), not from an import inside a function that ruff's
    PLC0415 would flag and a noqa would silence."""
    silenced = [name for name, path in ALL.items() if "noqa: PLC0415" in path.read_text()]
    assert not silenced, silenced
