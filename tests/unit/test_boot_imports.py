"""What the boot and the watchdog load: never psutil (it costs the boot its import,
about a quarter of a second under emulation, and the watchdog 2 MiB of RSS), nor
pyroute2 on a disk boot. Only `archiso-hook status` loads psutil."""

from __future__ import annotations

import subprocess
import sys

# Every module a disk boot runs, from `mount` to the handoff, the watchdog and the shutdown.
BOOT_PATH = (
    "archiso_hook.cli", "archiso_hook.bootcmd", "archiso_hook.boot", "archiso_hook.medium",
    "archiso_hook.release", "archiso_hook.handoff", "archiso_hook.watch",
    "archiso_hook.shutdown", "archiso_hook.report",
)  # fmt: skip


def loaded_after(code: str) -> set[str]:
    """The top-level packages a fresh interpreter has loaded after running `code`."""
    probe = f"{code}\nimport sys\nprint(' '.join(sorted({{m.split('.')[0] for m in sys.modules}})))"
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    )
    return set(result.stdout.split())


def test_the_boot_path_loads_neither_psutil_nor_pyroute2() -> None:
    loaded = loaded_after("\n".join(f"import {module}" for module in BOOT_PATH))
    assert "archiso_hook" in loaded
    assert "psutil" not in loaded
    assert "pyroute2" not in loaded


def test_status_does() -> None:
    # The same probe sees psutil when it is loaded: the test above can fail.
    loaded = loaded_after("from archiso_hook import status\nstatus._system('/nonexistent')")
    assert "psutil" in loaded
