"""`make test` from a checkout no other user may enter, as root's first clone in its home
directory is (/root is 0700): the tests that build as an unprivileged user (makepkg as its
own user, the builder and the lab's disks as uid 65534) pass there too, through the copy
of the sources and the venv they are lent (tests/lend.py). They run again here, in a clone
of this tree under a 0700 directory, with nothing skipped."""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import tempfile
from pathlib import Path

import pytest

from tests.lend import TREE, copy_sources, lend_venv

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as another user")

#: Every test that runs something as another user.
UNPRIVILEGED = (
    "tests/pkg/test_makepkg.py",
    "tests/unit/test_builder.py::test_non_root_builds_are_root_owned_and_bootable",
    "tests/unit/test_disks.py::test_images_need_no_root",
)


def test_the_unprivileged_builds_pass_from_a_checkout_others_cannot_enter() -> None:
    private = Path(tempfile.mkdtemp(prefix="archiso-private-", dir="/tmp"))
    try:
        assert stat.S_IMODE(private.stat().st_mode) == 0o700  # as /root
        clone = private / "archiso-hook"
        subprocess.run(["git", "clone", "-q", str(TREE), str(clone)], check=True)
        copy_sources(clone)  # the tree as it is now, uncommitted edits too, as make dist
        lend_venv(TREE / ".venv", clone / ".venv")  # what `make setup` would make there
        env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
        proc = subprocess.run(
            [str(clone / ".venv/bin/python"), "-m", "pytest", "-q", "-p", "no:cacheprovider",
             "-rs", *UNPRIVILEGED],
            cwd=clone,
            env=env,
            capture_output=True,
            text=True,
            check=False,
            timeout=600,
        )  # fmt: skip
        output = proc.stdout + proc.stderr
        assert proc.returncode == 0, output[-4000:]
        summary = output.strip().splitlines()[-1]
        assert re.fullmatch(r"=* ?\d+ passed in .*", summary), summary  # none skipped
    finally:
        shutil.rmtree(private)
