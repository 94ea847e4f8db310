"""The install hooks' help() texts, which `mkinitcpio -H <hook>` prints."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from archiso_hook import paramdoc
from archiso_hook.cmdline import PARAMETERS

INSTALL = Path(__file__).resolve().parents[2] / "initcpio" / "install"
HOOKS = sorted(path.name for path in INSTALL.iterdir())
# The venv's archiso-hook (its console script): what the package installs on a build host.
VENV_BIN = Path(sys.executable).parent
assert (VENV_BIN / "archiso-hook").is_file()
BASH = shutil.which("bash") or "/bin/bash"


def help_text(hook: str, *, path: str | None = None, sysroot: str = "/nonexistent") -> str:
    """What mkinitcpio -H does: source the install file in bash, then call help. By
    default archiso-hook is found on PATH, as /usr/bin/archiso-hook on a build host."""
    env = dict(os.environ, ARCHISO_HOOK_SYSROOT=sysroot)
    env["PATH"] = f"{VENV_BIN}:{env['PATH']}" if path is None else path
    result = subprocess.run(
        [BASH, "-c", 'unset -f help; . "$1" && help', "bash", str(INSTALL / hook)],
        capture_output=True,
        text=True,
        check=False,
        env=env,
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


def path_without_archiso_hook(tmp_path: Path) -> str:
    """A PATH with only what help() runs besides archiso-hook (this host may have it)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "cat").symlink_to(shutil.which("cat") or "/bin/cat")
    return str(bin_dir)


def test_archiso_help_prints_the_reference_generated_from_the_code(tmp_path: Path) -> None:
    # Found beside the hook in ARCHISO_HOOK_SYSROOT (a staging tree), or on PATH.
    tree = tmp_path / "usr/lib/archiso-hook"
    tree.mkdir(parents=True)
    (tree / "archiso-hook").symlink_to(VENV_BIN / "archiso-hook")
    path = path_without_archiso_hook(tmp_path)
    for text in (help_text("archiso"), help_text("archiso", path=path, sysroot=str(tmp_path))):
        assert paramdoc.text() in text


def test_archiso_help_without_archiso_hook_says_where_the_parameters_are(tmp_path: Path) -> None:
    text = help_text("archiso", path=path_without_archiso_hook(tmp_path))
    assert "archiso_http_srv" not in text
    assert "Kernel parameters: 'archiso-hook parameters' lists them" in text
    assert "/usr/share/doc/archiso-hook/README.md" in text
    assert [line for line in text.splitlines() if len(line) > 80] == []
