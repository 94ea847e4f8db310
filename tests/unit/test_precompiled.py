"""The table of attrs' compiled methods: made and used in fresh interpreters, as the build
and the frozen hook do (PYTHONHASHSEED=0 and -OO, as there)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from archiso_hook.boot import precompiled

ENV = {**os.environ, "PYTHONHASHSEED": "0", "PYTHONDONTWRITEBYTECODE": "1"}


def python(*args: str, env: dict[str, str] = ENV) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-OO", *args], capture_output=True, text=True, env=env, check=False
    )


def make_table(path: Path) -> None:
    run = python("-m", "archiso_hook.boot.precompiled", str(path))
    assert run.returncode == 0, run.stderr
    assert "compilations of attrs" in run.stdout


# What a hook start imports, then values whose methods attrs generated, then a class
# compiled from source with postponed annotations (inherited by compile() from its caller).
USE = """from __future__ import annotations
import json, sys
from archiso_hook.boot import precompiled
stats = precompiled.install(sys.argv[1])
from archiso_hook import cmdline, plan
from archiso_hook.boot import executor as boot
from archiso_hook.aitab import parse_aitab
entries = parse_aitab("root / x86_64 xz ext4 64\\n", source="aitab")
again = parse_aitab("root / x86_64 xz ext4 64\\n", source="aitab")
code = compile("x: undefined_name = 1", "<t>", "exec")
exec(code, {})
print(json.dumps({
    "stats": None if stats is None else [stats.found, stats.compiled],
    "equal": entries == again,
    "hash": hash(entries[0]) == hash(again[0]),
    "repr": repr(entries[0]),
}))
"""


def use(table: Path, env: dict[str, str] = ENV) -> dict[str, object]:
    run = python("-c", USE, str(table), env=env)
    assert run.returncode == 0, run.stderr
    result: dict[str, object] = json.loads(run.stdout)
    return result


def test_the_table_answers_every_compilation_and_changes_nothing(tmp_path: Path) -> None:
    table = tmp_path / "attrs-methods.marshal"
    make_table(table)
    with_table = use(table)
    without = use(tmp_path / "missing")
    assert without["stats"] is None
    assert isinstance(with_table["stats"], list)
    found, compiled = with_table["stats"]
    assert found > 20 and compiled == 0, with_table
    assert with_table["equal"] is True and with_table["hash"] is True
    assert with_table["repr"] == without["repr"]


def test_a_table_of_another_interpreter_or_seed_is_left_alone(tmp_path: Path) -> None:
    table = tmp_path / "attrs-methods.marshal"
    make_table(table)
    assert use(table, env={**ENV, "PYTHONHASHSEED": "random"})["stats"] is None
    assert python("-c", USE, str(table)).returncode == 0
    run = subprocess.run(  # -O: not the optimisation level the table was made with
        [sys.executable, "-O", "-c", USE, str(table)],
        capture_output=True,
        text=True,
        env=ENV,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["stats"] is None


def test_a_damaged_table_is_ignored(tmp_path: Path) -> None:
    table = tmp_path / "attrs-methods.marshal"
    make_table(table)
    table.write_bytes(table.read_bytes()[:1000])
    assert use(table)["stats"] is None
    table.write_bytes(b"not marshal")
    assert use(table)["stats"] is None


def test_recording_needs_the_frozen_hooks_seed_and_optimisation(tmp_path: Path) -> None:
    env = {**ENV, "PYTHONHASHSEED": "random"}
    assert (
        python("-m", "archiso_hook.boot.precompiled", str(tmp_path / "t"), env=env).returncode == 2
    )
    run = subprocess.run(
        [sys.executable, "-m", "archiso_hook.boot.precompiled", str(tmp_path / "t")],
        capture_output=True,
        env=ENV,
        check=False,
    )
    assert run.returncode == 2 and not (tmp_path / "t").exists()


def test_hook_modules_are_every_module_but_the_entry_point_and_the_builder() -> None:
    modules = precompiled.hook_modules()
    assert modules[:2] == ["attr", "attrs"]
    assert "archiso_hook.plan" in modules and "archiso_hook.boot.precompiled" in modules
    assert "archiso_hook.live.watch" in modules and "archiso_hook.kernel.dm" in modules
    assert "archiso_hook.__main__" not in modules and "archiso_hook.__init__" not in modules
    assert [m for m in modules if m.startswith("archiso_hook.build")] == []
