"""What the boot reads of itself and of the machine in /proc: its start-up time, its peak
memory, the RAM there is (psutil would cost the boot its import: subprocess and all)."""

from __future__ import annotations

import os

from archiso_hook.boot.decisions import Memory


def seconds_since_exec() -> float | None:
    """How long ago this process started (its start time in /proc/self/stat vs. uptime):
    the interpreter's start-up, which no timer inside the program can see."""
    try:
        with open("/proc/self/stat", encoding="ascii") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        with open("/proc/uptime", encoding="ascii") as f:
            uptime = float(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return max(0.0, uptime - int(fields[19]) / os.sysconf("SC_CLK_TCK"))


def peak_rss() -> int | None:
    """This process's peak resident set (VmHWM), in bytes."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def meminfo(path: str = "/proc/meminfo") -> Memory:
    """MemTotal and MemAvailable."""
    fields: dict[str, int] = {}
    with open(path, encoding="ascii") as f:
        for line in f:
            name, _, rest = line.partition(":")
            if name in ("MemTotal", "MemAvailable"):
                fields[name] = int(rest.split()[0]) * 1024
    return Memory(fields.get("MemTotal", 0), fields.get("MemAvailable", 0))


def uptime() -> float | None:
    """Seconds since the kernel started."""
    try:
        with open("/proc/uptime", encoding="ascii") as f:
            return float(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None
