"""What a boot loads, by structure: the commands the hooks run (`mount`, `handoff`,
`watch --foreground`, `shutdown VERB`) are read without argparse, and the modules they
run import none of what a disk boot does not need. Each import costs every boot (under
emulation a tenth of a second and more), and psutil the watchdog 2 MiB of RSS for the
whole session; `archiso-hook status` is what loads psutil.

The probe is a fresh interpreter without `site` (as the frozen hook starts: no .pth
files, no editable-install finder importing pathlib), with the venv's packages on its
path."""

from __future__ import annotations

import subprocess
import sys
import sysconfig
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

# Every module a disk boot runs, from `mount` to the handoff, the watchdog and the shutdown.
BOOT_PATH = (
    "archiso_hook.bootcmd", "archiso_hook.commands.mount", "archiso_hook.boot.executor",
    "archiso_hook.boot.medium", "archiso_hook.boot.seam", "archiso_hook.boot.state",
    "archiso_hook.boot.release", "archiso_hook.live.handoff", "archiso_hook.live.watch",
    "archiso_hook.live.shutdown", "archiso_hook.boot.report",
)  # fmt: skip
# What a disk boot never needs: the builder and its tools, the network stack, psutil,
# the parameters' reference (paramdoc).
FORBIDDEN = (
    "argparse", "archiso_hook.cli", "subprocess", "hashlib", "pathlib", "socket", "asyncio",
    "tempfile", "shutil", "psutil", "pyroute2", "archiso_hook.build",
    "archiso_hook.boot.httpfetch", "archiso_hook.boot.httpmedium",
    "archiso_hook.paramdoc", "archiso_hook.boot.netboot", "archiso_hook.boot.prepare",
    "archiso_hook.boot.signatures", "archiso_hook.kernel.nbd",
)  # fmt: skip
BOOT_ARGV = (
    ["mount", "/new_root"], ["mount", "/new_root", "archisobasedir=arch"], ["handoff"],
    ["watch", "--foreground"], ["shutdown"], ["shutdown", "reboot"],
)  # fmt: skip


def loaded_after(code: str) -> set[str]:
    """The modules a fresh interpreter without site has loaded after running `code`."""
    probe = (
        f"import sys\nsys.path[:0] = [{str(REPO)!r}, {sysconfig.get_paths()['purelib']!r}]\n"
        f"{code}\nprint(' '.join(sorted(sys.modules)))"
    )
    result = subprocess.run(
        [sys.executable, "-S", "-c", probe], capture_output=True, text=True, check=True
    )
    return set(result.stdout.split())


def test_the_boot_path_loads_nothing_a_disk_boot_does_not_need() -> None:
    code = "\n".join(f"import {module}" for module in BOOT_PATH)
    # The handlers of every step of a disk boot, as the executor finds them.
    code += (
        "\nfrom archiso_hook.aitab import parse_aitab\n"
        "from archiso_hook.boot import executor\n"
        "from archiso_hook.options import parse_options\n"
        "from archiso_hook.lazy import function\n"
        "from archiso_hook.plan import medium_steps, plan_boot\n"
        "options = parse_options('archisolabel=ARCH_2026 cow_persistent=P')\n"
        "aitab = parse_aitab('root / x86_64 xz ext4 50%\\nshare /usr/share any xz none 0\\n',"
        " 'aitab')\n"
        "plan = plan_boot(options, aitab, newroot='/new_root')\n"
        "for step in [*medium_steps(options), *plan.image_steps]:\n"
        "    function(executor.HANDLERS[type(step).__name__])\n"
    )
    code += "\nfrom archiso_hook.bootcmd import boot_command\n"
    code += "\n".join(f"assert boot_command({argv!r}) is not None" for argv in BOOT_ARGV)
    loaded = loaded_after(code)
    assert {"archiso_hook.boot.executor", "archiso_hook.boot.images"} <= loaded
    assert [module for module in FORBIDDEN if module in loaded] == []


def test_other_commands_and_usage_go_to_the_full_parser() -> None:
    from archiso_hook.bootcmd import boot_command  # noqa: PLC0415

    for argv in (["mount"], ["mount", "--help"], ["mount", "/new_root", "-x"],
                 ["shutdown", "sleep"], ["watch"], ["status"], ["handoff", "x"]):  # fmt: skip
        assert boot_command(argv) is None, argv


def test_the_probe_sees_what_is_loaded() -> None:
    # The same probe sees argparse and psutil when they are loaded: the test above can fail.
    loaded = loaded_after(
        "from archiso_hook import cli\nfrom archiso_hook.live import status\n"
        "cli.build_parser()\nstatus._system('/nonexistent')"
    )
    assert {"argparse", "psutil"} <= loaded
