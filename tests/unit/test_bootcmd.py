"""The boot's own `mount` path: which command lines skip the full parser."""

from __future__ import annotations

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
