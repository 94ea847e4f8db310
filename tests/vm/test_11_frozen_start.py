"""The staged frozen hook starts without drawing on the kernel's random pool.

Early in a boot the pool is often not ready yet (no RDRAND, no virtio-rng: older
machines and most VMs). Python seeds its string hashes from it at every start, and the
kernel answers such a read by first gathering jitter entropy: in the lab's guest that
was three quarters of the hook's start-up (docs/performance.md). The build fixes the seed
(Makefile, hash_seed=0); this traces a start of the staged tree, on the host, to see
that nothing else asks for randomness either.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from vm.media import STAGE

pytestmark = pytest.mark.vm

HOOK = STAGE / "usr/lib/archiso-hook/archiso-hook"
_GETRANDOM = re.compile(r"getrandom\((?:\"[^\"]*\"(?:\.\.\.)?|0x[0-9a-f]+), (\d+), ([^)]*)\)")


def random_reads(trace: str) -> list[tuple[int, str]]:
    """(bytes, flags) of every getrandom(2) in an `strace -f` log."""
    return [(int(size), flags) for size, flags in _GETRANDOM.findall(trace)]


def test_random_reads_parse() -> None:
    trace = (
        '1234 getrandom("\\x51\\x44\\xe7\\x3f\\xc8\\x9c\\x1e\\x30", 8, GRND_NONBLOCK) = 8\n'
        '1234 getrandom("\\x48\\x5d"..., 24, GRND_NONBLOCK) = 24\n'
        "1235 getrandom(0x7ffd1234, 16, 0) = 16\n"
    )
    assert random_reads(trace) == [(8, "GRND_NONBLOCK"), (24, "GRND_NONBLOCK"), (16, "0")]


def test_frozen_hook_starts_without_the_random_pool(tmp_path: Path) -> None:
    if shutil.which("strace") is None:
        pytest.fail("strace is missing: `make setup` installs it")
    log = tmp_path / "strace.log"
    run = subprocess.run(
        ["strace", "-f", "-o", str(log), "-e", "trace=getrandom,openat", str(HOOK), "--version"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith("archiso-hook ")
    trace = log.read_text()
    assert not re.search(r"/dev/u?random", trace), trace
    # glibc keys its malloc caches with 8 bytes, without waiting: all it may ask for.
    # Python's hash seed is 24 bytes and would fall back to /dev/urandom if the pool
    # were not ready.
    reads = random_reads(trace)
    assert reads, f"no getrandom traced: is this strace's format? {trace[:400]}"
    assert all(size <= 8 and "GRND_NONBLOCK" in flags for size, flags in reads), reads
