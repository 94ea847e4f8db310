"""The PyInstaller hook that bundles the modules named "module:function" (imported by
lazy.function when first needed, which PyInstaller's analysis cannot see). A frozen tree
without them fails at the first command that needs one: `archiso-hook build` once did,
because the hook was named for a module that only those names reach, so it never ran."""

from __future__ import annotations

import ast
import re
import runpy
from pathlib import Path

import archiso_hook

REPO = Path(__file__).resolve().parents[2]
HOOK = REPO / "tools" / "pyinstaller" / "hook-archiso_hook.py"
ROOT = Path(archiso_hook.__file__).resolve().parent
TARGET = re.compile(r"^(archiso_hook(?:\.[a-z_0-9]+)+):([a-z_0-9]+)$")


def named_targets() -> set[str]:
    """Every string constant in the sources that names a function as "module:function"."""
    found: set[str] = set()
    for path in ROOT.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                match = TARGET.match(node.value)
                if match:
                    found.add(match.group(1))
    return found


def test_every_hook_runs_for_every_frozen_program() -> None:
    # PyInstaller runs hook-NAME.py only when NAME is in the import graph. __main__.py
    # imports the package archiso_hook (and what it names); anything else may be reached
    # only through a "module:function" name, which the analysis does not follow.
    main = ast.parse((ROOT / "__main__.py").read_text(encoding="utf-8"))
    imported = {"archiso_hook"} | {
        node.module
        for node in ast.walk(main)
        if isinstance(node, ast.ImportFrom) and node.module is not None
    }
    hooks = sorted(HOOK.parent.glob("hook-*.py"))
    assert HOOK in hooks
    for hook in hooks:
        module = hook.name.removeprefix("hook-").removesuffix(".py")
        assert module in imported, f"{hook.name} would not run"


def test_the_hook_names_every_module_the_sources_import_by_name() -> None:
    hidden = set(runpy.run_path(str(HOOK))["hiddenimports"])
    targets = named_targets()
    # The command line's table and the executor's handlers are among them.
    assert "archiso_hook.commands.build" in targets
    assert "archiso_hook.boot.mounting" in targets
    missing = {t for t in targets if not t.startswith("archiso_hook.build")} - hidden
    assert not missing, f"not bundled: {sorted(missing)}"
    assert not any(m.startswith("archiso_hook.build") for m in hidden)
    # Each names a module that exists.
    for module in targets:
        relative = Path(*module.split(".")[1:])
        assert (ROOT / relative).with_suffix(".py").exists() or (
            ROOT / relative / "__init__.py"
        ).exists(), module
