"""The boot's own `mount` path: which command lines skip the full parser."""

from __future__ import annotations

import subprocess
import sys

import pytest

from archiso_hook.bootcmd import is_plain_mount


@pytest.mark.parametrize(
    "argv",
    [
        ["mount", "/new_root"],
        ["mount", "/new_root", "archisolabel=ARCH_2026"],
        ["mount", "/new_root", "archisolabel=ARCH 2026", "copytoram=n"],
    ],
)
def test_the_boots_forms_take_the_fast_path(argv: list[str]) -> None:
    assert is_plain_mount(argv)


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["mount"],
        ["mount", "--help"],
        ["mount", "-h"],
        ["mount", "/new_root", "--verbose"],
        ["mount", "/new_root", "quiet"],  # not KEY=VALUE: argparse says what is wrong
        ["status"],
        ["plan", "--aitab", "x"],
    ],
)
def test_anything_else_goes_to_the_full_command_line(argv: list[str]) -> None:
    assert not is_plain_mount(argv)


@pytest.mark.parametrize(
    ("argv0", "message"),
    [
        # /shutdown is a link to the program (initcpio/install/archiso): `/shutdown VERB`,
        # as systemd runs it at power-off, is `archiso-hook shutdown VERB`.
        ("/shutdown", "archiso-hook shutdown: error: argument verb: invalid choice: 'sleep'"),
        ("/usr/bin/archiso-hook", "archiso-hook: error: argument COMMAND: invalid choice"),
    ],
)
def test_the_program_named_shutdown_runs_the_shutdown(argv0: str, message: str) -> None:
    code = (
        "import runpy, sys\n"
        f"sys.argv = [{argv0!r}, 'sleep']\n"
        "runpy.run_module('archiso_hook', run_name='__main__')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert done.returncode == 2 and done.stderr.startswith(message), done.stderr
