"""The loaders bench's pure parts: the live root's line, the entry's parameters, the report."""

from __future__ import annotations

import pytest

from bench.loaders import BenchError, Sample, entry_cmdline, format_report, liveroot_uptime


def test_the_live_roots_uptime_and_the_time_before_the_kernel() -> None:
    assert liveroot_uptime("x\nLAB: live root up uptime=9.27\n") == 9.27
    with pytest.raises(BenchError, match="the live root did not start"):
        liveroot_uptime("Kernel panic")
    assert Sample(wall=20.5, uptime=9.5).before_kernel == 11.0


def test_the_entrys_parameters_come_from_syslinux_cfg() -> None:
    cfg = (
        "LABEL auto\n    COM32 ifcpu64.c32\n    APPEND x86_64 -- i686\n\nLABEL x86_64\n"
        "    LINUX /arch/boot/x86_64/vmlinuz\n    APPEND archisobasedir=arch archisolabel=X "
        "lab.check=\n"
    )
    assert entry_cmdline(cfg) == "archisobasedir=arch archisolabel=X lab.check="
    with pytest.raises(BenchError):
        entry_cmdline("DEFAULT x\n")


def test_the_report_gives_medians_and_ratios_to_the_direct_boot() -> None:
    samples = {
        "direct vmlinux": [Sample(10.0, 9.0), Sample(12.0, 9.5), Sample(11.0, 9.2)],
        "direct bzImage": [Sample(13.0, 9.0)],
        "SeaBIOS": [Sample(16.5, 9.0)],
        "OVMF": [],
    }
    lines = format_report(samples).splitlines()
    assert "power-on to live root (s)" in lines[0] and "ratio to direct vmlinux" in lines[0]
    assert lines[1].split() == ["direct", "vmlinux", "11.00", "1.80", "1.00"]
    assert lines[3].split() == ["SeaBIOS", "16.50", "7.50", "1.50"]
    assert len(lines) == 4  # no line for a method without boots
