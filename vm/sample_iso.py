"""`make iso`: the sample live medium as a user makes it, an ISO that boots by itself.

    python -m vm.sample_iso [OUT]        (default build/iso/archiso-sample.iso)

Both architectures on one medium (`DUAL_AITAB`: the demo's x86_64 and i686 live roots and
the shared /usr/share), with Debian's amd64 and 686 kernels and an initramfs for each built
with HOOKS=(base archiso): the x86_64 one by the lab's mkinitcpio, the i686 one inside
the i386 root. The installed `archiso-hook build` (`make stage`'s frozen binary, as the
package ships it) lays it out and writes the ISO, with `--serial` and a menu that boots
its default entry after `TIMEOUT` seconds; that entry carries the lab's checks, so an
unattended boot ends in `LAB: PASS` and powers off:

    qemu-system-x86_64 -m 1024 -nographic -cdrom build/iso/archiso-sample.iso

The same sources, kernels and SOURCE_DATE_EPOCH (the Makefile sets it from git) give the
same bytes.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

from vm import REPO, lab_dir
from vm.kernel import fetch_kernel
from vm.lab import archiso_initramfs, archiso_initramfs_i686, staged_hook
from vm.media import DUAL_AITAB, I386_ROOT, SAMPLE_LABEL, STAGE, make_dual_sources

SAMPLE_ISO = REPO / "build" / "iso" / "archiso-sample.iso"
#: What the default entry checks in the live root (vm/liveroot/init), then it powers off.
CHECKS = "arch,write,files,report"
TIMEOUT = 3
TITLE = "archiso-hook sample"
#: The installed command, as a user runs it.
BUILDER = STAGE / "usr" / "bin" / "archiso-hook"


class SampleIsoError(RuntimeError):
    """The sample ISO could not be made (the message says why)."""


def build_command(
    aitab: Path,
    src: Path,
    tree: Path,
    out: Path,
    boot: dict[str, tuple[Path, Path]],
    *,
    timeout: int = TIMEOUT,
    checks: str = CHECKS,
) -> list[str]:
    """`archiso-hook build ...` for the sample medium."""
    argv = [str(BUILDER), "build", "--aitab", str(aitab), "--src", str(src), "--out", str(tree)]
    argv += ["--iso", str(out), "--label", SAMPLE_LABEL, "--title", TITLE]
    for arch, (kernel, initramfs) in sorted(boot.items()):
        argv += ["--boot", f"{arch}={kernel},{initramfs}"]
    argv += ["--serial", "--timeout", str(timeout), "--append", f"lab.check={checks}"]
    return argv


def build_sample_iso(
    out: Path = SAMPLE_ISO,
    log: Callable[[str], None] = print,
    *,
    timeout: int = TIMEOUT,
    checks: str = CHECKS,
) -> Path:
    """Make the sample ISO at `out` (atomically) and return it. `timeout` and `checks`:
    the menu's, and the default entry's `lab.check=` (the bench's ISO has neither)."""
    staged_hook()
    if (
        not (STAGE / "usr/lib/archiso-hook-i686/archiso-hook").exists()
        or not (I386_ROOT / ".complete").exists()
    ):
        raise SampleIsoError("the i686 hook or the i386 root is missing: run `make stage`")
    work = lab_dir() / f"sample-iso-{out.stem}"
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    boot: dict[str, tuple[Path, Path]] = {}
    for arch, make_initramfs in (("x86_64", archiso_initramfs), ("i686", archiso_initramfs_i686)):
        kernel = fetch_kernel(arch)
        log(f"{arch}: Debian's kernel {kernel.version}; building its initramfs")
        initramfs = make_initramfs(kernel, work / f"initramfs-{arch}.img")
        boot[arch] = (kernel.bzimage, initramfs)
    (work / "aitab").write_text(DUAL_AITAB)
    with tempfile.TemporaryDirectory(prefix="sample-iso-") as tmp:
        log("building the live roots")
        src = make_dual_sources(
            Path(tmp) / "src",
            hook_tree=STAGE / "usr/lib/archiso-hook",
            hook_tree_i686=STAGE / "usr/lib/archiso-hook-i686",
            sysroot_i686=I386_ROOT,
        )
        out.parent.mkdir(parents=True, exist_ok=True)
        part = out.with_name(f".{out.name}.part")
        argv = build_command(
            work / "aitab", src, work / "tree", part, boot, timeout=timeout, checks=checks
        )
        log("$ " + shlex.join(argv))
        if subprocess.run(argv, stdin=subprocess.DEVNULL, check=False).returncode != 0:
            raise SampleIsoError(f"{BUILDER} build failed (its lines above say why)")
    part.replace(out)
    shutil.rmtree(work / "tree")
    return out


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    out = Path(args[0]) if args else SAMPLE_ISO

    def log(line: str) -> None:
        print(f"iso: {line}", file=sys.stderr, flush=True)

    try:
        iso = build_sample_iso(out, log)
    except (SampleIsoError, FileNotFoundError) as e:
        log(str(e))
        return 1
    log(f"wrote {iso}: boot it with qemu-system-x86_64 -m 1024 -nographic -cdrom {iso}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
