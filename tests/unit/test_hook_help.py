"""The install hooks' help() texts, which `mkinitcpio -H <hook>` prints."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from archiso_hook.cmdline import PARAMETERS

INSTALL = Path(__file__).resolve().parents[2] / "initcpio" / "install"
HOOKS = sorted(path.name for path in INSTALL.iterdir())


def help_text(hook: str) -> str:
    """What mkinitcpio -H does: source the install file in bash, then call help."""
    result = subprocess.run(
        ["bash", "-c", 'unset -f help; . "$1" && help', "bash", str(INSTALL / hook)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0 and result.stderr == "", (hook, result.stderr)
    return result.stdout


@pytest.mark.parametrize("hook", HOOKS)
def test_every_install_hook_explains_itself(hook: str) -> None:
    text = help_text(hook)
    assert len(text.splitlines()) >= 3, text


def test_every_kernel_parameter_is_explained_by_a_hook() -> None:
    texts = "\n".join(help_text(hook) for hook in HOOKS)
    names = [param.name for param in PARAMETERS] + ["rd.debug"]
    # As a user looks for it: the name at the start of a word, then = or a blank.
    missing = [n for n in names if not re.search(rf"(^|[\s,]){re.escape(n)}(=|\s|,)", texts, re.M)]
    assert missing == []


@pytest.mark.parametrize("hook", ["archiso", "archiso_loop_mnt"])
def test_help_says_where_the_hook_goes_with_an_example_in_80_columns(hook: str) -> None:
    text = help_text(hook)
    assert f"HOOKS=(base archiso{' archiso_loop_mnt' if hook != 'archiso' else ''}" in text
    assert "Kernel parameters" in text and "Example:" in text
    assert [line for line in text.splitlines() if len(line) > 80] == []
