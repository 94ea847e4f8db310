"""The boot bench's pure parts: parsing a console log, medians, ratios, the report."""

from __future__ import annotations

import re

import attrs
import pytest

from bench.boot import (
    BASELINE_HOOKS,
    HOOKS,
    BenchError,
    BootSample,
    Row,
    Sizes,
    format_table,
    median,
    parse_boot,
    parse_stamps,
    ratio,
    report_rows,
    slope,
)

CONSOLE = """\
[    5.335233] Run /init as init process
:: running hook [udev]
[    7.402000] sr 0:0:0:0: [sr0] scsi3-mmc drive: 4x/4x cd/rw xa/form2 tray
[    7.579552] LAB-STAMP udev-add /dev/sr0
[    7.601000] LAB-STAMP udev-change /dev/sda
[    7.650000] LAB-STAMP udev-change /dev/sr0
:: running hook [archiso]
[    7.723943] LAB-STAMP handler-start
[   11.478383] archiso-hook: archiso-hook 0.1.0: mounting the x86_64 images of ...
[   11.733507] archiso-hook: mounted /dev/sr0 (iso9660) read-only at /run/archiso/bootmnt
[   12.808811] archiso-hook: mounted /dev/loop0 (squashfs) read-only at /run/archiso/sfs/root
[   12.900000] LAB-STAMP udev-change /dev/sr0
[   13.202658] archiso-hook: live root ready at /new_root in 1.68 s, 5.43 s since the hook \
started (2 image(s)), peak RSS 21.5 MiB
[   13.437355] LAB-STAMP handler-end peak=16883712
:: running cleanup hook [archiso]
[   22.818860] LAB-STAMP switch-root peak=67534848
LAB: live root up uptime=23.40
LAB: PASS
"""


def test_stamps_are_read_in_order_with_their_fields() -> None:
    stamps = parse_stamps(CONSOLE)
    assert [s.name for s in stamps] == [
        "udev-add",
        "udev-change",
        "udev-change",
        "handler-start",
        "udev-change",
        "handler-end",
        "switch-root",
    ]
    assert stamps[0].seconds == 7.579552 and stamps[0].words == ("/dev/sr0",)
    assert stamps[5].field("peak") == "16883712"
    assert stamps[5].field("nothing") is None


def test_a_boot_is_parsed_into_its_figures() -> None:
    sample = parse_boot(CONSOLE, "/dev/sr0")
    assert sample.handler_start == 7.723943
    assert sample.handler_end == 13.437355
    assert sample.switch_root == 22.818860
    assert sample.liveroot_uptime == 23.40
    assert sample.mounted == 11.733507
    # The medium's last event before the mount: not another disk's, nor a later one.
    assert sample.event == 7.650000
    assert sample.handler_peak == 16883712
    assert sample.hook_peak == 67534848
    assert sample.rss_mib == 21.5
    assert sample.hook_seconds == pytest.approx(22.818860 - 7.723943)
    assert sample.handler_seconds == pytest.approx(13.437355 - 7.723943)
    assert sample.event_to_mount == pytest.approx(11.733507 - 7.650000)
    # The kernel's own line for the drive: a reference with or without udev.
    assert sample.disk == 7.402
    assert sample.disk_to_mount == pytest.approx(11.733507 - 7.402)


# The floor (bench/baseline/hooks/archiso_floor): no udev, so no udev stamps; the
# kernel's line for the plugged disk, then the baseline's mount line.
FLOOR_HOTPLUG = """\
[    1.973425] Run /init as init process
:: running hook [archiso_floor]
[    2.540270] LAB-STAMP handler-start
Waiting 30 seconds for device LABEL=ARCHISO_SAMPLE ...
[    3.082391] virtio_blk virtio0: 1/0/0 default/read/poll queues
[    3.094191] virtio_blk virtio0: [vda] 27208 512-byte logical blocks (13.9 MB/13.3 MiB)
[    3.349110] archiso-baseline: mounted /dev/vda at /run/archiso/bootmnt
[    3.399739] archiso-baseline: mounted cowspace at /run/archiso/cowspace
[    3.921490] LAB-STAMP handler-end peak=2129920
[    3.940741] LAB-STAMP switch-root peak=2129920
LAB: live root up uptime=4.35
LAB: PASS
"""


def test_a_boot_without_udev_has_a_disk_line_but_no_event() -> None:
    sample = parse_boot(FLOOR_HOTPLUG, "/dev/vda")
    assert sample.event is None and sample.event_to_mount is None
    assert sample.mounted == 3.349110
    assert sample.disk_to_mount == pytest.approx(3.349110 - 3.094191)
    # Another disk's line is not the medium's.
    assert parse_boot(FLOOR_HOTPLUG, "/dev/vdb").disk is None


def test_the_baseline_mount_line_counts_too() -> None:
    console = CONSOLE.replace(
        "archiso-hook: mounted /dev/sr0 (iso9660) read-only at",
        "archiso-baseline: mounted /dev/disk/by-label/ARCHISO_SAMPLE at",
    )
    assert parse_boot(console, "/dev/sr0").mounted == 11.733507


def test_missing_pieces_are_none_or_a_clear_error() -> None:
    bare = "\n".join(line for line in CONSOLE.splitlines() if "udev-" not in line)
    sample = parse_boot(bare.replace("peak=16883712", "peak=none"), "/dev/sr0")
    assert sample.event is None and sample.event_to_mount is None
    assert sample.handler_peak is None
    with pytest.raises(BenchError, match="switch-root"):
        parse_boot(CONSOLE.replace("switch-root", "elsewhere"), "/dev/sr0")
    with pytest.raises(BenchError, match="live root"):
        parse_boot(CONSOLE.replace("LAB: live root up", "LAB: nope"), "/dev/sr0")


def test_median_ratio_and_slope() -> None:
    assert median([3.0, None, 1.0, 2.0]) == 2.0
    assert median([None]) is None
    assert ratio(3.0, 2.0) == 1.5
    assert ratio(None, 2.0) is None and ratio(1.0, 0.0) is None
    assert slope([(1, 2.0), (10, 2.9), (50, 6.9)]) == pytest.approx(0.1)
    assert slope([(1, 2.0)]) is None


def _sample(start: float, end: float, switch: float, *, event: float | None = None) -> BootSample:
    return BootSample(
        handler_start=start,
        handler_end=end,
        switch_root=switch,
        liveroot_uptime=switch + 0.5,
        event=event,
        mounted=None if event is None else event + 0.004,
        disk=None if event is None else event - 0.1,
        handler_peak=2**20,
        hook_peak=2**21,
        rss_mib=None,
    )


def test_the_report_has_medians_and_ratios() -> None:
    cold = {
        "archiso-hook": [_sample(1, 2, 3), _sample(1, 3, 5), _sample(1, 2.5, 4)],
        "baseline": [_sample(1, 3, 4), _sample(1, 3, 4)],
        "floor": [_sample(1, 1.5, 2)],
    }
    hot = {
        "archiso-hook": [_sample(1, 2, 3, event=1.5)],
        "baseline": [],
        # No udev: a disk line, no event.
        "floor": [attrs.evolve(_sample(1, 2, 3, event=1.5), event=None)],
    }
    entries = {
        # Start-up differs from boot to boot: the cost per entry counts from the medium's mount.
        1: {
            "archiso-hook": [_sample(0, 1, 2, event=0.1)],
            "baseline": [_sample(0, 2, 3, event=1)],
            "floor": [_sample(0, 1, 2, event=0.5)],
        },
        50: {
            "archiso-hook": [_sample(0, 1.99, 2, event=0.6)],
            "baseline": [_sample(0, 4.45, 5, event=1)],
            "floor": [_sample(0, 1.98, 2, event=0.5)],
        },
    }
    sizes = {
        "archiso-hook": Sizes(3 << 20, 1 << 20),
        "baseline": Sizes(2 << 20, None),
        "floor": Sizes(1 << 20, None),
    }
    # Under icount a boot's seconds are billions of instructions, the same in every boot.
    counted = {
        "archiso-hook": [_sample(1, 2.2, 2.5)] * 2,
        "baseline": [_sample(1, 1.5, 2)] * 2,
        "floor": [_sample(1, 1.2, 1.6)] * 2,
    }
    report = report_rows(
        cold, hot, entries, sizes, counted=counted, counted_entries={1: entries[1], 50: entries[50]}
    )
    rows = {r.label: r for r in report}
    assert len(rows) == len(report)
    hook = rows["hook: first line to switch_root"]
    assert (hook.a, hook.b) == (3.0, 3.0)
    instructions = rows["hook: first line to switch_root, guest instructions"]
    assert (instructions.a, instructions.b) == (1.5, 1.0)
    assert instructions.c == pytest.approx(0.6)
    assert rows["  of which the mount handler, guest instructions"].a == pytest.approx(1.2)
    assert rows["event to mount, medium plugged in while waiting"].a == pytest.approx(0.004)
    assert rows["event to mount, medium plugged in while waiting"].b is None
    assert rows["event to mount, medium plugged in while waiting"].c is None
    plugged = rows["disk to mount: the kernel's line for the plugged disk to its mount"]
    assert plugged.b is None
    assert plugged.a == pytest.approx(0.104) and plugged.c == pytest.approx(0.104)
    assert rows["power-on to the hook's first line"].c == 1
    assert rows["initramfs, zstd"].a == 3 << 20
    assert rows["peak memory of the hook (cgroup, with its /run/initramfs copy)"].a == 2**21
    per_entry = rows["cost per aitab entry (least squares, medium mounted to live root)"]
    assert per_entry.a == pytest.approx(0.01) and per_entry.b == pytest.approx(0.05)
    assert per_entry.c == pytest.approx(0.02)
    counted_per_entry = rows["cost per aitab entry, guest instructions"]
    assert (counted_per_entry.a, counted_per_entry.b, counted_per_entry.c) == (
        per_entry.a,
        per_entry.b,
        per_entry.c,
    )
    text = format_table(list(rows.values()))
    assert text.splitlines()[0].split() == [
        "archiso-hook",
        "udev",
        "hook",
        "floor",
        "a/udev",
        "a/floor",
    ]
    assert "hook: first line to switch_root (s)" in text
    line = next(t for t in text.splitlines() if "guest instructions (10^9)" in t)
    assert line.split()[-5:] == ["1.50", "1.00", "0.60", "1.50", "2.50"]
    assert "cost per aitab entry (least squares, medium mounted to live root) (ms)" in text
    line = next(t for t in text.splitlines() if t.startswith("initramfs, zstd"))
    assert line.split()[-5:] == ["3.00", "2.00", "1.00", "1.50", "3.00"]
    line = next(t for t in text.splitlines() if t.startswith("event to mount, medium plugged"))
    assert line.split()[-5:] == ["4.0", "-", "-", "-", "-"]


def test_a_missing_figure_prints_a_dash() -> None:
    text = format_table([Row("x", None, 2.0, 1.0, unit="s")])
    assert text.splitlines()[1].split() == ["x", "(s)", "-", "2.00", "1.00", "-", "-"]
    text = format_table([Row("y", 3.0, None, 1.5)])
    assert text.splitlines()[1].split() == ["y", "3.00", "-", "1.50", "-", "2.00"]


def test_the_columns_line_up() -> None:
    text = format_table([Row("a short one", 1.0, 2.0, 4.0), Row("a much longer label", 10.0, 2.0)])
    lengths = {len(line) for line in text.splitlines()}
    assert len(lengths) == 1


def _words(text: str, variable: str) -> list[str]:
    match = re.search(rf"^\s*{variable}='([^']*)'", text, re.MULTILINE)
    assert match, variable
    return match.group(1).split()


def test_the_floor_image_holds_the_modules_its_hook_loads_and_no_udev() -> None:
    """install/archiso_floor adds what hooks/archiso_floor loads, no more, and neither
    udev nor its rules: the floor is the flow without udev."""
    runtime = (BASELINE_HOOKS / "hooks" / "archiso_floor").read_text()
    install = (BASELINE_HOOKS / "install" / "archiso_floor").read_text()
    loaded = _words(runtime, "_fl_drivers") + _words(runtime, "_fl_modules")
    added = re.search(r"^\s*map add_module (.*)$", install, re.MULTILINE)
    assert added
    assert sorted(added.group(1).split()) == sorted(loaded)
    assert "udev" not in HOOKS["floor"] and "add_udev_rule" not in install
    assert "udev" in HOOKS["baseline"]
