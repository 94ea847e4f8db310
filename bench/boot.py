"""The boot bench: archiso-hook against two busybox shell hooks doing the same work.

The three initramfs images are built by the lab's mkinitcpio emulation around the same
Debian kernel: (a) `HOOKS=(base archiso)`, the staged archiso-hook with the HOOKS line
the README recommends (its own coldplug, no udev); (b) `HOOKS=(base udev
archiso_baseline bench_stamps)`, archiso's dm-snapshot flow in busybox sh with losetup,
dmsetup and mount (`bench/baseline/`), with the same modules as (a) and udev; (c)
`HOOKS=(base archiso_floor)`, the floor: the same flow and tools with no udev at all. It
loads only the modules the lab's disks and the flow need, in dependency order (kmod's
modprobe, from the same module tree), and polls the block devices' labels with blkid for
the medium. The emulation builds it as it builds the others (nothing in it needs udev),
so the three share the lab's /init, its stamps and the busybox, kmod and util-linux
tools of `base`. (b) is what archiso's hooks did; (c) is what the same work costs
without udev's coldplug, the number to beat. Every boot runs the same QEMU command (TCG,
one CPU, 1 GiB, the uncompressed kernel through its PVH entry) with `lab.stamps=y`, so
the lab's /init writes `LAB-STAMP` lines to the kernel log where the bench times the
boot:

- `handler-start`: just before /init calls the mount handler: the hook's first line;
- `handler-end`: the handler returned (the live root is mounted);
- `switch-root`: the cleanup hooks are done, just before switch_root: the handoff; with
  the peak memory of everything the hook ran since its first line (cgroup v2
  `memory.peak`: the processes' memory and what they put in tmpfs, such as the copy of
  the initramfs both hooks keep at /run/initramfs for the shutdown);
- `udev-add DEVICE`, `udev-change DEVICE`: from a udev rule (`bench_stamps`), when udev
  has processed the add (or change: a disc seen in a drive) event of a disk holding a
  filesystem, just before it announces the event to listeners (so a waiting hook cannot
  have seen it earlier); the medium's last one before its mount is its event (the
  hook and the floor have no udev, so no events: their rows of events show '-');

and each hook logs `mounted DEVICE ... at /run/archiso/bootmnt` to the kernel log
right after mount(2) returned. The kernel's own first line naming the medium's disk
(`[sr0]` when sr_mod attaches the drive, `[vda]` when virtio_blk probes the plugged
disk) is the reference all three hooks have: disk-to-mount is how long after it the
medium was mounted, udev's coldplug or a hook's polling included. All of these carry
the kernel's own timestamp of the record (the printk clock, which counts from boot
like CLOCK_BOOTTIME, in microseconds; /proc/uptime has only 10 ms), so they come from
one clock. The live root's first line reports its /proc/uptime.

Scenarios: `cold` (the sample medium on an IDE CD-ROM from power-on, as the boot
tests), `icount` (the same boot with QEMU's `-icount shift=0,sleep=off`: the guest's
clock then advances one nanosecond per instruction it executes, the kernel's included,
so its stamps count instructions, not the host's time; two boots agree to within 1%
where wall-clock ones differ by a second, which is how a change of a few percent
shows; with `entries`, also one boot of 1 and of 50 entries each), `hotplug`
(no medium at power-on: once the hook says it waits, a virtio disk with the ISO is
plugged in through QEMU's monitor; event-to-mount then measures how a hook waits) and
`entries` (1, 10 and 50 aitab lines: the root plus plain squashfs
images). All three hooks boot in every scenario, interleaved, so that a slow spell of
the shared host weighs on each alike; every figure is reported against both shell
hooks. `python -m bench.boot [--boots N]`; results in bench/results/boot.txt.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

import attrs

from bench import publish
from vm import REPO, lab_dir
from vm.initramfs import build_initramfs
from vm.kernel import Kernel, fetch_kernel
from vm.lab import staged_hook
from vm.media import SAMPLE_LABEL, STAGE, Media, build_media, make_sources
from vm.qemu import Drive, Guest

RESULTS = REPO / "bench" / "results"
BASELINE_HOOKS = REPO / "bench" / "baseline"
HOOKS = {
    "archiso-hook": ("base", "archiso"),  # as the README recommends
    "baseline": ("base", "udev", "archiso_baseline", "bench_stamps"),
    "floor": ("base", "archiso_floor"),
}
#: Each image's own tools (its hook's files, or the binaries a shell hook adds; their
#: libraries are shared with the rest), for the size of "the hook's own files".
OWN_FILES = {
    "archiso-hook": ("usr/lib/archiso-hook",),
    "baseline": ("usr/bin/losetup", "usr/bin/blockdev", "usr/bin/dmsetup"),
    "floor": ("usr/bin/losetup", "usr/bin/blockdev", "usr/bin/dmsetup"),
}
BOOTMNT = "/run/archiso/bootmnt"
ENTRY_COUNTS = (1, 10, 50)
# cow_spacesize=32M: a COW smaller than its origin (64 MiB), so that the watchdog runs and
# "RAM left behind" counts it (with the default 256M the COW holds all the origin can
# change, nothing can fill, and archiso-hook starts none: live/watch.nothing_to_watch).
APPEND = (
    f"archisobasedir=arch archisolabel={SAMPLE_LABEL} cow_spacesize=32M lab.stamps=y "
    "lab.check=ramleft"
)
_KTIME = r"^\[\s*(\d+\.\d+)\] "
_STAMP = re.compile(_KTIME + r"LAB-STAMP (\S+)(.*)$", re.MULTILINE)
_MOUNTED = re.compile(
    _KTIME + r"archiso-(?:hook|baseline): mounted (\S+) .*at " + BOOTMNT + "$", re.MULTILINE
)
_LIVEROOT = re.compile(r"^LAB: live root up uptime=(\d+(?:\.\d+)?)", re.MULTILINE)
_RSS = re.compile(r"archiso-hook: live root ready at .*peak RSS (\d+(?:\.\d+)?) MiB")
# The live root's report (vm/liveroot/init, check_ramleft): the copy at /run/initramfs and
# the watchdog's own memory, in KiB (its file pages are the copy's).
_RAMLEFT = re.compile(r"LAB-RESULT ramleft copy_kib=(\d+) .*watch_anon_kib=(\d+)")
_WAITING = r"(waiting up to \d+ s for the boot medium|Waiting \d+ seconds for device)"


class BenchError(RuntimeError):
    """A boot did not produce what the bench needs (the message says what)."""


@attrs.frozen
class Stamp:
    seconds: float
    name: str
    words: tuple[str, ...] = ()

    def field(self, key: str) -> str | None:
        for word in self.words:
            name, sep, value = word.partition("=")
            if sep and name == key:
                return value
        return None


@attrs.frozen
class BootSample:
    """What one boot measured; times in seconds since boot, from the kernel log."""

    handler_start: float
    handler_end: float
    switch_root: float
    liveroot_uptime: float
    event: float | None  # the medium's last udev add event before its mount
    mounted: float | None  # the medium mounted at BOOTMNT
    disk: float | None  # the kernel's first line naming the medium's disk ([sr0], [vda])
    handler_peak: int | None  # bytes (cgroup memory.peak) at the handler's end
    hook_peak: int | None  # the same at switch_root: the cleanup hooks' too
    rss_mib: float | None  # archiso-hook's own peak RSS report, if any
    ram_left: int | None = None  # bytes: /run/initramfs and the watchdog, in the live root

    @property
    def hook_seconds(self) -> float:
        return self.switch_root - self.handler_start

    @property
    def handler_seconds(self) -> float:
        return self.handler_end - self.handler_start

    @property
    def after_medium_seconds(self) -> float | None:
        """From the medium's mount to the live root: the aitab's work without the
        start-up before it, whose noise (tenths of a second) would drown a cost per entry."""
        return None if self.mounted is None else self.handler_end - self.mounted

    @property
    def disk_to_mount(self) -> float | None:
        if self.disk is None or self.mounted is None:
            return None
        return self.mounted - self.disk

    @property
    def event_to_mount(self) -> float | None:
        if self.event is None or self.mounted is None:
            return None
        return self.mounted - self.event


def parse_stamps(output: str) -> list[Stamp]:
    """The LAB-STAMP lines of a console log, in order."""
    return [
        Stamp(float(m.group(1)), m.group(2), tuple(m.group(3).split()))
        for m in _STAMP.finditer(output)
    ]


def _peak(stamp: Stamp) -> int | None:
    value = stamp.field("peak")
    return int(value) if value and value.isdigit() else None


def parse_boot(output: str, device: str) -> BootSample:
    """One boot's figures from its console log; `device` is the medium's node."""
    stamps = parse_stamps(output)
    first = {s.name: s for s in reversed(stamps)}  # the first of each name
    for name in ("handler-start", "handler-end", "switch-root"):
        if name not in first:
            raise BenchError(f"no LAB-STAMP {name} in the console log")
    live = _LIVEROOT.search(output)
    if live is None:
        raise BenchError("the live root did not start (no 'LAB: live root up' line)")
    mounted_match = _MOUNTED.search(output)
    mounted = float(mounted_match.group(1)) if mounted_match else None
    events = [
        s.seconds
        for s in stamps
        if s.name in ("udev-add", "udev-change") and s.words[:1] == (device,)
        if mounted is None or s.seconds <= mounted
    ]
    rss = _RSS.search(output)
    left = _RAMLEFT.search(output)
    name = re.escape(device.rpartition("/")[2])
    disk = re.search(_KTIME + r".*\[" + name + r"\]", output, re.MULTILINE)
    return BootSample(
        handler_start=first["handler-start"].seconds,
        handler_end=first["handler-end"].seconds,
        switch_root=first["switch-root"].seconds,
        liveroot_uptime=float(live.group(1)),
        event=events[-1] if events else None,
        mounted=mounted,
        disk=float(disk.group(1)) if disk else None,
        handler_peak=_peak(first["handler-end"]),
        hook_peak=_peak(first["switch-root"]),
        rss_mib=float(rss.group(1)) if rss else None,
        ram_left=(int(left.group(1)) + int(left.group(2))) * 1024 if left else None,
    )


def median(values: Iterable[float | None]) -> float | None:
    """The median of the values that are there; None if none is."""
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def ratio(a: float | None, b: float | None) -> float | None:
    """a / b, or None when either is missing or b is zero."""
    if a is None or b is None or b == 0:
        return None
    return a / b


def slope(points: Sequence[tuple[float, float]]) -> float | None:
    """The least-squares slope of y over x (cost per unit of x); None under two points."""
    if len({x for x, _ in points}) < 2:
        return None
    mx = statistics.fmean(x for x, _ in points)
    my = statistics.fmean(y for _, y in points)
    return sum((x - mx) * (y - my) for x, y in points) / sum((x - mx) ** 2 for x, _ in points)


@attrs.frozen
class Row:
    """One line of the report: a median (or size) for each hook (a: archiso-hook, b: the
    udev shell hook, c: the floor), and a's ratios to b and c."""

    label: str
    a: float | None
    b: float | None
    c: float | None = None
    unit: str = ""
    scale: float = 1.0
    digits: int = 2


def _cell(value: float | None, scale: float, digits: int) -> str:
    return "-" if value is None else f"{value * scale:.{digits}f}"


def _ratio_cell(a: float | None, b: float | None) -> str:
    q = ratio(a, b)
    return "-" if q is None else f"{q:.2f}"


COLUMNS = ("archiso-hook", "udev hook", "floor", "a/udev", "a/floor")


def format_table(rows: Sequence[Row]) -> str:
    """The report's table: the three hooks' figures, then a's ratios to the udev shell
    hook and to the floor; a missing figure or ratio is '-'."""
    width = max(len(f"{r.label} ({r.unit})" if r.unit else r.label) for r in rows)

    def line(first: str, cells: Sequence[str]) -> str:
        return " ".join(
            [
                first.ljust(width),
                *(c.rjust(max(len(h), 8)) for c, h in zip(cells, COLUMNS, strict=True)),
            ]
        )

    lines = [line("", COLUMNS)]
    for r in rows:
        cells = [_cell(v, r.scale, r.digits) for v in (r.a, r.b, r.c)]
        cells += [_ratio_cell(r.a, r.b), _ratio_cell(r.a, r.c)]
        lines.append(line(f"{r.label} ({r.unit})" if r.unit else r.label, cells))
    return "\n".join(lines)


Samples = dict[str, list[BootSample]]  # hook -> boots


def _med(samples: Samples, hook: str, get: Callable[[BootSample], float | None]) -> float | None:
    return median(get(s) for s in samples.get(hook, []))


def _by_hook(
    label: str,
    values: Mapping[str, float | None],
    *,
    unit: str = "",
    scale: float = 1.0,
    digits: int = 2,
) -> Row:
    """A row of one figure for each hook, by its name in HOOKS."""
    a, b, c = (values.get(hook) for hook in HOOKS)
    return Row(label, a, b, c, unit=unit, scale=scale, digits=digits)


def _all(
    samples: Samples,
    label: str,
    get: Callable[[BootSample], float | None],
    *,
    unit: str = "",
    scale: float = 1.0,
    digits: int = 2,
) -> Row:
    """A row of each hook's median of `get` over its boots in `samples`."""
    medians = {hook: _med(samples, hook, get) for hook in HOOKS}
    return _by_hook(label, medians, unit=unit, scale=scale, digits=digits)


@attrs.frozen
class Sizes:
    initramfs: int  # bytes, as built (zstd)
    tree: int | None  # the hook's own files in it, compressed the same way


def report_rows(
    cold: Samples,
    hotplug: Samples,
    entries: dict[int, Samples],
    sizes: dict[str, Sizes],
    *,
    counted: Samples | None = None,
    counted_entries: dict[int, Samples] | None = None,
) -> list[Row]:
    """Every figure of the report, as rows of medians for a and b. `counted`: the cold
    boots under icount, whose seconds are billions of guest instructions;
    `counted_entries`: boots of aitab sizes under icount."""
    mib = 1 / 2**20
    counted = counted or {}
    rows = [
        _all(cold, "hook: first line to switch_root", lambda s: s.hook_seconds, unit="s"),
        _all(cold, "  of which the mount handler", lambda s: s.handler_seconds, unit="s"),
        _all(
            counted,
            "hook: first line to switch_root, guest instructions",
            lambda s: s.hook_seconds,
            unit="10^9",
        ),
        _all(
            counted,
            "  of which the mount handler, guest instructions",
            lambda s: s.handler_seconds,
            unit="10^9",
        ),
        _all(
            hotplug,
            "event to mount, medium plugged in while waiting",
            lambda s: s.event_to_mount,
            unit="ms",
            scale=1000,
            digits=1,
        ),
        _all(
            cold,
            "event to mount, medium there at power-on",
            lambda s: s.event_to_mount,
            unit="ms",
            scale=1000,
            digits=1,
        ),
        _all(
            hotplug,
            "disk to mount: the kernel's line for the plugged disk to its mount",
            lambda s: s.disk_to_mount,
            unit="ms",
            scale=1000,
            digits=1,
        ),
        _all(
            cold,
            "disk to mount: the kernel's line for the CD drive to the mount",
            lambda s: s.disk_to_mount,
            unit="ms",
            scale=1000,
            digits=1,
        ),
        _all(cold, "power-on to the hook's first line", lambda s: s.handler_start, unit="s"),
        _all(cold, "power-on to the live root's first line", lambda s: s.liveroot_uptime, unit="s"),
        _all(
            cold,
            "peak memory of the hook (cgroup, with its /run/initramfs copy)",
            lambda s: s.hook_peak,
            unit="MiB",
            scale=mib,
            digits=1,
        ),
        _all(
            cold,
            "RAM left behind after switch_root (/run/initramfs and the watchdog)",
            lambda s: s.ram_left,
            unit="MiB",
            scale=mib,
            digits=1,
        ),
        Row(
            "peak RSS of `archiso-hook mount`",
            _med(cold, "archiso-hook", lambda s: s.rss_mib),
            None,
            unit="MiB",
            digits=1,
        ),
    ]
    if sizes:
        images = {hook: float(size.initramfs) for hook, size in sizes.items()}
        trees = {hook: size.tree for hook, size in sizes.items()}
        rows.append(_by_hook("initramfs, zstd", images, unit="MiB", scale=mib))
        rows.append(_by_hook("  the hook's own files in it, zstd", trees, unit="MiB", scale=mib))
    for n in sorted(entries):
        rows.append(
            _all(
                entries[n],
                f"mount handler, {n} aitab entr{'y' if n == 1 else 'ies'}",
                lambda s: s.handler_seconds,
                unit="s",
            )
        )
    slopes = (
        (entries, "cost per aitab entry (least squares, medium mounted to live root)", "ms"),
        (counted_entries or {}, "cost per aitab entry, guest instructions", "10^6"),
    )
    for samples, label, unit in slopes:
        if len(samples) >= 2:
            per = _per_entry(samples)
            rows.append(_by_hook(label, per, unit=unit, scale=1000, digits=1))
    return rows


def _per_entry(entries: dict[int, Samples]) -> dict[str, float | None]:
    """Each hook's slope of the time from the medium's mount to the live root."""
    per = {}
    for hook in HOOKS:
        points = [
            (float(n), t)
            for n, samples in entries.items()
            if (t := _med(samples, hook, lambda s: s.after_medium_seconds)) is not None
        ]
        per[hook] = slope(points)
    return per


# --- running the boots (needs QEMU, the staged hook and the kernel) ----------------


def bench_dir() -> Path:
    return lab_dir() / "bench"


def build_images(kernel: Kernel, stage: Path = STAGE) -> tuple[dict[str, Path], dict[str, Sizes]]:
    """The three initramfs images, and their sizes with the share of each hook's own files.

    `stage`: where archiso-hook is installed (`make stage`'s tree, or another build's).
    """
    if not (stage / "usr/lib/archiso-hook/archiso-hook").exists():
        raise BenchError(f"{stage}/usr/lib/archiso-hook/archiso-hook is missing: make stage")
    images: dict[str, Path] = {}
    sizes: dict[str, Sizes] = {}
    for hook, hooks in HOOKS.items():
        out = bench_dir() / f"initramfs-{hook}.img"
        root = bench_dir() / f"root-{hook}"
        if root.exists():
            shutil.rmtree(root)
        images[hook] = build_initramfs(
            kernel,
            list(hooks),
            out,
            hook_dirs=[BASELINE_HOOKS, stage / "usr/lib/initcpio"],
            env={"ARCHISO_HOOK_SYSROOT": str(stage)},
            builddir=root,
        )
        sizes[hook] = Sizes(out.stat().st_size, _compressed_size(root, OWN_FILES[hook]))
        shutil.rmtree(root)
    return images, sizes


def _compressed_size(root: Path, paths: Sequence[str]) -> int | None:
    """zstd -3 of a newc cpio of these paths under root (as vm/mkinitramfs packs them);
    for the baseline its binaries (their libraries are shared with udev and the rest)."""
    names: list[str] = []
    for rel in paths:
        path = root / rel
        if path.is_dir():
            names += sorted(str(p.relative_to(root)) for p in [path, *path.rglob("*")])
        elif path.exists():
            names.append(rel)
    if not names:
        return None
    cpio = subprocess.run(
        ["cpio", "-o", "-H", "newc", "--quiet"],
        cwd=root,
        input="\n".join(names).encode() + b"\n",
        capture_output=True,
        check=True,
    ).stdout
    return len(
        subprocess.run(
            ["zstd", "-q", "-3", "-c"], input=cpio, capture_output=True, check=True
        ).stdout
    )


def build_bench_media(src: Path, counts: Sequence[int] = ENTRY_COUNTS) -> dict[str, Media]:
    """The sample medium, and media with 1, 10 and 50 aitab entries."""
    media = {"sample": build_media("bench-sample", src)}
    for n in counts:
        lines = ["root / x86_64 zstd ext4 64"]
        lines += [f"extra{i} /srv/extra{i} any zstd none 0" for i in range(1, n)]
        media[f"entries-{n}"] = build_media(
            f"bench-entries-{n}", src, aitab="\n".join(lines) + "\n"
        )
    return media


def make_bench_sources(src: Path) -> Path:
    make_sources(src, hook_tree=staged_hook())
    for i in range(1, max(ENTRY_COUNTS)):
        extra = src / "any" / f"extra{i}"
        extra.mkdir(parents=True)
        (extra / "hello.txt").write_text(f"extra image {i}\n")
    return src


# One virtual nanosecond per guest instruction; an idle guest skips to its next timer.
ICOUNT = ("-icount", "shift=0,sleep=off")


def boot_once(
    kernel: Kernel,
    initrd: Path,
    name: str,
    iso: Path,
    *,
    hotplug: bool = False,
    icount: bool = False,
) -> BootSample:
    drives = [] if hotplug else [Drive(iso, kind="ide-cdrom")]
    device = "/dev/vda" if hotplug else "/dev/sr0"
    with Guest(
        name,
        kernel=kernel,
        initrd=initrd,
        append=APPEND,
        drives=drives,
        timeout=300,
        extra_args=ICOUNT if icount else (),
    ) as guest:
        if hotplug:
            guest.expect(_WAITING, timeout=200)
            guest.monitor(f"drive_add 0 if=none,id=hot,file={iso},format=raw,readonly=on")
            guest.monitor("device_add virtio-blk-pci,drive=hot,id=hot-dev")
        guest.expect(r"LAB: (PASS|FAIL)", timeout=250)
        output = guest.output
    try:
        return parse_boot(output, device)
    except BenchError as e:
        raise BenchError(f"{name}: {e}; see {guest.log_path}") from None


SCENARIOS = ("cold", "icount", "hotplug", "entries")


def _ms(seconds: float | None, unit: str = " ms") -> str:
    """Seconds as milliseconds for the progress lines; '-' when missing."""
    return "-" if seconds is None else f"{seconds * 1000:.1f}{unit}"


def run(
    boots: int,
    entry_boots: int,
    log: Callable[[str], None],
    *,
    icount_boots: int = 2,
    stage: Path = STAGE,
    scenarios: Sequence[str] = SCENARIOS,
) -> str:
    started = time.strftime("%Y-%m-%d %H:%M:%S")
    load_before = os.getloadavg()[0]
    kernel = fetch_kernel()
    log("building the three initramfs images")
    images, sizes = build_images(kernel, stage)
    with tempfile.TemporaryDirectory(prefix="bench-boot-") as tmp:
        log("building the media")
        counts = ENTRY_COUNTS if "entries" in scenarios else ()
        media = build_bench_media(make_bench_sources(Path(tmp) / "src"), counts)
    cold: Samples = {hook: [] for hook in HOOKS}
    counted: Samples = {hook: [] for hook in HOOKS}
    hot: Samples = {hook: [] for hook in HOOKS}
    entries: dict[int, Samples] = {n: {hook: [] for hook in HOOKS} for n in ENTRY_COUNTS}
    # Interleaved, so that a slow spell of the host weighs on the three hooks alike.
    for i in range(boots):
        for hook in HOOKS:
            if "cold" in scenarios:
                iso = media["sample"].iso
                sample = boot_once(kernel, images[hook], f"bench-cold-{hook}", iso)
                cold[hook].append(sample)
                log(
                    f"cold {hook} #{i + 1}: hook {sample.hook_seconds:.2f} s, "
                    f"live root at {sample.liveroot_uptime:.2f} s"
                )
            if "icount" in scenarios and i < icount_boots:
                iso = media["sample"].iso
                sample = boot_once(kernel, images[hook], f"bench-icount-{hook}", iso, icount=True)
                counted[hook].append(sample)
                log(f"icount {hook} #{i + 1}: hook {sample.hook_seconds:.3f} x 10^9 instructions")
            if "hotplug" in scenarios:
                iso = media["sample"].iso
                sample = boot_once(kernel, images[hook], f"bench-hotplug-{hook}", iso, hotplug=True)
                hot[hook].append(sample)
                log(
                    f"hotplug {hook} #{i + 1}: event to mount {_ms(sample.event_to_mount)}, "
                    f"disk to mount {_ms(sample.disk_to_mount)}"
                )
    if "entries" not in scenarios:
        entries = {}
        entry_boots = 0
    counted_entries: dict[int, Samples] = {}
    if "entries" in scenarios and "icount" in scenarios:
        for n in (ENTRY_COUNTS[0], ENTRY_COUNTS[-1]):  # two points: the count is exact
            counted_entries[n] = {}
            for hook in HOOKS:
                iso = media[f"entries-{n}"].iso
                name = f"bench-icount-entries-{n}-{hook}"
                sample = boot_once(kernel, images[hook], name, iso, icount=True)
                counted_entries[n][hook] = [sample]
                after = sample.after_medium_seconds
                log(f"icount {n} entries {hook}: {_ms(after, ' x 10^6 instructions')}")
    for i in range(entry_boots):
        for n in ENTRY_COUNTS:
            for hook in HOOKS:
                iso = media[f"entries-{n}"].iso
                sample = boot_once(kernel, images[hook], f"bench-entries-{n}-{hook}", iso)
                entries[n][hook].append(sample)
                log(f"{n} entries {hook} #{i + 1}: handler {sample.handler_seconds:.2f} s")
    rows = report_rows(cold, hot, entries, sizes, counted=counted, counted_entries=counted_entries)
    header = (
        f"# bench boot, {started}: Debian's kernel {kernel.version} in QEMU (TCG, 1 CPU, "
        "1 GiB); a = archiso-hook; udev hook = busybox sh with losetup/dmsetup/mount under "
        "udev (bench/baseline/hooks/archiso_baseline); floor = the same flow without udev "
        "(bench/baseline/hooks/archiso_floor); ratios are a's to each; "
        f"medians of {boots} boots ({entry_boots} for the aitab sizes, "
        f"{min(icount_boots, boots)} counting instructions); "
        "times from kernel-log stamps (see bench/boot.py); the host's load average "
        f"{load_before:.1f} at the start, {os.getloadavg()[0]:.1f} at the end (a guest "
        "under TCG slows down when others share the host's cores)"
    )
    return header + "\n" + format_table(rows) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.boot", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--boots", type=int, default=3, help="boots per hook and scenario")
    parser.add_argument(
        "--entry-boots",
        type=int,
        default=3,
        help="boots per aitab size (one boot varies by tenths of a second)",
    )
    parser.add_argument(
        "--icount-boots",
        type=int,
        default=2,
        help="boots per hook counting instructions (deterministic: two show it)",
    )
    parser.add_argument(
        "--stage", type=Path, default=STAGE, help="archiso-hook installed here (make stage)"
    )
    parser.add_argument(
        "--scenarios", default=",".join(SCENARIOS), help="a comma-separated subset of %(default)s"
    )
    parser.add_argument("--out", type=Path, default=RESULTS / "boot.txt", help="results file")
    args = parser.parse_args(argv)
    scenarios = [s for s in args.scenarios.split(",") if s]
    if unknown := set(scenarios) - set(SCENARIOS):
        parser.error(f"unknown scenario(s): {', '.join(sorted(unknown))}")

    def log(line: str) -> None:
        print(f"bench: {line}", file=sys.stderr, flush=True)

    text = run(
        args.boots,
        args.entry_boots,
        log,
        icount_boots=args.icount_boots,
        stage=args.stage,
        scenarios=scenarios,
    )
    publish(text, args.out)
    return 0


if __name__ == "__main__":
    shutil.which("qemu-system-x86_64") or sys.exit("qemu-system-x86_64 is missing: make setup")
    raise SystemExit(main())
