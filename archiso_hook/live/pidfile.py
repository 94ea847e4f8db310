"""The watchdog's pid file: its pid and its start time, which together name one process
for ever (a pid alone may be another process's by the time it is read)."""

from __future__ import annotations

import os


def start_time(pid: int) -> int | None:
    """When the process started, in clock ticks after boot (/proc/PID/stat field 22);
    None when there is no such process."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            # The command name (field 2) may hold spaces and parentheses: after the last ')'.
            fields = f.read().rsplit(b")", 1)[1].split()
        return int(fields[19])
    except (OSError, IndexError, ValueError):
        return None


def write(path: str, pid: int) -> None:
    with open(path, "w", encoding="ascii") as f:
        f.write(f"{pid} {start_time(pid) or 0}\n")


def read(path: str) -> tuple[int, int | None]:
    """(pid, start time or None); OSError, or ValueError when the file holds no pid
    (a positive one, and not ours)."""
    with open(path, "rb") as f:
        text = f.read(64).decode("ascii", errors="replace")
    words = text.split()
    if not words or not words[0].isdigit() or not words[0].isascii():
        raise ValueError(f"{path} holds {text.strip()[:20]!r}, not a pid")
    pid = int(words[0])
    if not 1 < pid < 2**22 or pid == os.getpid():
        raise ValueError(f"{path} holds {pid}, not the pid of another process")
    start = words[1] if len(words) > 1 else ""
    return pid, int(start) if start.isdigit() and start.isascii() and int(start) else None


def names_running(pid: int, start: int | None) -> bool:
    """The process the file named is still running (not another one given its pid)."""
    now = start_time(pid)
    return now is not None and (start is None or now == start)
