"""archiso's old hook names in mkinitcpio's HOOKS: `archiso_shutdown`, `archiso_kms`.

mkinitcpio fails a build on a hook it cannot find ("Hook '...' cannot be found", a
build error), so a mkinitcpio.conf written for archiso would no longer make an image.
Each old name is a small install hook that builds and warns what to write instead.
Run through the lab's implementation of mkinitcpio's hook API (vm/initcpio/functions).
"""

from __future__ import annotations

import subprocess

import pytest

from vm import REPO

FUNCTIONS = REPO / "vm" / "initcpio" / "functions"
INSTALL = REPO / "initcpio" / "install"


def run_build_hook(hook: str) -> tuple[int, str]:
    """(build errors, stderr) of mkinitcpio's run_build_hook for `hook`."""
    script = '. "$1"; _d_install="$2"; run_build_hook "$3"; echo "errors=$_builderrors"'
    result = subprocess.run(
        ["bash", "-c", script, "bash", str(FUNCTIONS), str(INSTALL), hook],
        capture_output=True,
        text=True,
        check=True,
    )
    errors = int(result.stdout.strip().splitlines()[-1].removeprefix("errors="))
    return errors, result.stderr


def test_a_hook_mkinitcpio_cannot_find_is_a_build_error() -> None:
    errors, stderr = run_build_hook("archiso_never_was")
    assert errors == 1 and "Hook 'archiso_never_was' cannot be found" in stderr


@pytest.mark.parametrize(
    ("hook", "advice"),
    [
        ("archiso_shutdown", "archiso_shutdown is not needed: the archiso hook takes the live "
         "root apart at power-off itself (its /shutdown); remove archiso_shutdown from HOOKS"),
        ("archiso_kms", "archiso_kms is archiso's old name of mkinitcpio's kms hook: write kms "
         "in HOOKS instead"),
    ],
)  # fmt: skip
def test_old_hook_names_build_and_say_what_to_write(hook: str, advice: str) -> None:
    errors, stderr = run_build_hook(hook)
    assert errors == 0, stderr
    assert f"==> WARNING: {advice}" in stderr
