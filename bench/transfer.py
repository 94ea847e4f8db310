"""copytoram and checksum rates against a plain `dd` of the same images, and against
archiso's way (`cp` to the tmpfs, then `sha512sum -c`), in one boot.

The guest boots the bench medium (two 96 MiB incompressible images besides the
sample root) from a virtio disk with two CPUs, then in the live system reads the
images with dd (the baseline), copies and checks them as archiso's shell hook does
(busybox `cp` then `sha512sum -c` of the copy; and in archiso's own order, the check on
the medium first), and with `archiso-hook transfer` copying them to a tmpfs, verifying
their sha512, and both at once (also with a copy of the hook without TLS, whose hashlib
falls back to Python's built-in sha512; and so, one image a command, as on a medium
with a single image): three rounds from a cold cache.

The hook's rates are from its own timing (at boot its process is already running); the
ratio to archiso is also given with the whole command timed, program start included
(the TLS tree starts from the medium's cold cache, the other from a tmpfs).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from bench import publish
from vm import REPO
from vm.kernel import fetch_kernel
from vm.lab import archiso_initramfs, staged_hook
from vm.media import SAMPLE_LABEL, Media, build_media, make_sources
from vm.qemu import Drive, Guest

AITAB = """\
root     /         x86_64  zstd  ext4  64
bench1   /srv/b1   any     gzip  none  0
bench2   /srv/b2   any     gzip  none  0
"""
IMAGE_MIB = 96
MODES = (
    "raw",
    "copy",
    "verify",
    "copyverify",
    "copyverify-builtin",
    "copyverify-builtin-each",
    "cpsum",
    "sumcp",
)
LABELS = {
    "raw": "dd to /dev/null (baseline)",
    "copy": "copytoram (copy to tmpfs)",
    "verify": "checksum (sha512)",
    "copyverify": "copytoram + checksum, one read",
    "copyverify-builtin": "  the same, built-in sha512 (no TLS)",
    "copyverify-builtin-each": "  the same, built-in, an image a run",
    "cpsum": "archiso: cp, then sha512sum -c",
    "sumcp": "  sha512sum -c on the medium, then cp",
}
RESULTS = REPO / "bench" / "results"


def incompressible(path: Path, mib: int, seed: bytes) -> None:
    block = seed
    with path.open("wb") as f:
        for _ in range(mib * 16):  # 64 KiB per step
            block = hashlib.sha512(block).digest()
            f.write(hashlib.shake_256(block).digest(65536))


def bench_media(name: str, mib: int) -> Media:
    """The sample root and two `mib` MiB incompressible images (bench1, bench2: AITAB)."""
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        src = make_sources(Path(tmp) / "src", hook_tree=staged_hook())
        for image in ("bench1", "bench2"):
            (src / "any" / image).mkdir(parents=True)
            incompressible(src / "any" / image / "data.bin", mib, image.encode())
        return build_media(name, src, aitab=AITAB)


def run_guest() -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Per mode, the rates of the rounds: as timed by the command, and (the hook's
    modes) with the whole command timed from the shell."""
    kernel = fetch_kernel()
    initrd = archiso_initramfs(kernel)
    media = bench_media("bench-transfer", IMAGE_MIB)
    append = f"archisolabel={SAMPLE_LABEL} copytoram=n lab.check=bench-transfer"
    with Guest(
        "bench-transfer",
        kernel=kernel,
        initrd=initrd,
        append=append,
        drives=[Drive(media.iso, kind="virtio")],
        memory_mib=2048,
        extra_args=["-smp", "2"],
        timeout=1800,
    ) as guest:
        guest.expect(r"LAB: (PASS|FAIL)", timeout=1700)
        output = guest.output
    if "LAB: PASS" not in output:
        raise SystemExit(f"bench guest failed; see {guest.log_path}\n{output[-2000:]}")
    rates: dict[str, list[float]] = {mode: [] for mode in MODES}
    walls: dict[str, list[float]] = {mode: [] for mode in MODES}
    for line in output.splitlines():
        if line.startswith("LAB-RESULT bench-transfer "):
            fields = dict(word.split("=", 1) for word in line.split()[2:])
            if "mode" not in fields:
                print(line, file=sys.stderr)  # which hashlib each hook tree has
                continue
            size = int(fields["bytes"])
            rates[fields["mode"]].append(size / float(fields["seconds"]))
            walls[fields["mode"]].append(size / float(fields.get("wall", fields["seconds"])))
    return rates, walls


def main() -> int:
    started = time.strftime("%Y-%m-%d %H:%M:%S")
    load = os.getloadavg()[0]  # these machines are shared: how busy this one was
    rates, walls = run_guest()
    raw = statistics.median(rates["raw"])
    lines = [
        f"# bench transfer, {started}: Debian's kernel in QEMU (TCG, 2 CPUs, 2 GiB), medium "
        f"on virtio-blk, 2 x {IMAGE_MIB} MiB images; medians of {len(rates['raw'])} rounds "
        f"from a cold page cache; host load average {load:.1f} at the start",
        f"{'what':<36} {'MiB/s':>8} {'ratio to dd':>12}",
    ]
    for mode in MODES:
        median = statistics.median(rates[mode])
        lines.append(f"{LABELS[mode]:<36} {median / 2**20:8.1f} {median / raw:12.2f}")
    archiso = statistics.median(rates["cpsum"])
    lines += [
        "copytoram + checksum against archiso (cp, then sha512sum -c), same boot:",
        f"{'':<36} {'engine':>8} {'whole command':>14}",
    ]
    for mode, label in (
        ("copyverify", "OpenSSL's sha512 (_hashlib)"),
        ("copyverify-builtin", "built-in sha512 (no TLS)"),
        ("copyverify-builtin-each", "built-in, an image a run"),
    ):
        engine = statistics.median(rates[mode]) / archiso
        whole = statistics.median(walls[mode]) / archiso
        lines.append(f"  {label:<34} {engine:8.2f} {whole:14.2f}")
    publish("\n".join(lines) + "\n", RESULTS / "transfer.txt")
    return 0


if __name__ == "__main__":
    shutil.which("qemu-system-x86_64") or sys.exit("qemu-system-x86_64 is missing: make setup")
    raise SystemExit(main())
