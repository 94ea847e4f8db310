"""`archiso-hook status`: what the hook set up and how it is doing now."""

from __future__ import annotations

import os
from typing import Any

import psutil

from archiso_hook.boot.state import State
from archiso_hook.errors import HookError
from archiso_hook.kernel import dm, syscalls
from archiso_hook.live import pidfile
from archiso_hook.live.watch import nothing_to_watch
from archiso_hook.paths import COWSPACE, PID_FILE, STATE_FILE
from archiso_hook.sizes import human


def collect(state_file: str = STATE_FILE) -> dict[str, Any]:
    """The state file's resources, each checked against the kernel as it is now."""
    try:
        state = State.load(state_file)
    except FileNotFoundError:
        raise HookError(
            f"{state_file} does not exist: the hook has not set anything up "
            "(or everything was undone)"
        ) from None
    except (OSError, ValueError, TypeError) as e:
        raise HookError(f"cannot read {state_file}: {e}") from None
    mounts = syscalls.mountpoints()
    out: dict[str, Any] = {
        "complete": state.complete,
        "newroot": state.newroot,
        "timings": state.timings,
        "mounts": [],
        "loops": [],
        "snapshots": [],
        "cow_files": [],
        "cow_policy": state.cow,
        "leftovers": len(state.leftovers),
        "watch": _watchdog() | {"not_needed": nothing_to_watch(state)},
        **_system(state.cow.get("space") or COWSPACE),
    }
    mapper: dm.DeviceMapper | None = None
    try:
        for res in state.every_record():  # an earlier attempt's leftovers too
            kind = res["kind"]
            if kind == "mount":
                # After switch_root the new root's mounts are seen at their live paths.
                where = next(
                    (p for p in (res["target"], res.get("live_path")) if p in mounts), None
                )
                out["mounts"].append(
                    {**_public(res), "mounted_at": where, "present": where is not None}
                )
            elif kind == "loop":
                name = os.path.basename(res["device"])
                backing = _read(f"/sys/block/{name}/loop/backing_file")
                out["loops"].append(
                    {**_public(res), "present": backing is not None, "kernel_backing_file": backing}
                )
            elif kind == "dm":
                if mapper is None:
                    mapper = dm.DeviceMapper()
                out["snapshots"].append({**_public(res), **_snapshot(mapper, res["name"])})
            elif kind == "file":
                out["cow_files"].append({**_public(res), **_file_usage(res["path"])})
        if mapper is not None:
            # Every mapping the kernel has, ours or not: what `dmsetup ls` would show.
            ours = {s["name"] for s in out["snapshots"]}
            out["device_mapper"] = {
                "version": ".".join(map(str, mapper.version())),
                "devices": [
                    {"name": name, "devno": f"{major}:{minor}", "ours": name in ours}
                    for name, major, minor in mapper.list_devices()
                ],
            }
    finally:
        if mapper is not None:
            mapper.close()
    return out


def _watchdog(pid_file: str = PID_FILE) -> dict[str, Any]:
    """The watchdog's pid, whether it runs, and what it costs: its memory (RSS), CPU
    time and scheduler state, from psutil."""
    try:
        pid, start = pidfile.read(pid_file)
    except (OSError, ValueError):
        return {"running": False}
    if not pidfile.names_running(pid, start):
        return {"pid": pid, "running": False}
    try:
        process = psutil.Process(pid)
        with process.oneshot():
            rss = process.memory_info().rss
            cpu = process.cpu_times()
            state = process.status()
    except psutil.Error:
        return {"pid": pid, "running": False}
    return {
        "pid": pid,
        "running": True,
        "rss_bytes": rss,
        "cpu_seconds": round(cpu.user + cpu.system, 2),
        "state": state,
    }


def _system(space: str) -> dict[str, Any]:
    """The machine's memory, and the COW space's filesystem when it is mounted."""
    memory = psutil.virtual_memory()
    out: dict[str, Any] = {
        "memory": {"total_bytes": memory.total, "available_bytes": memory.available}
    }
    if syscalls.is_mountpoint(space):
        usage = psutil.disk_usage(space)
        out["cowspace"] = {
            "path": space,
            "total_bytes": usage.total,
            "used_bytes": usage.used,
            "free_bytes": usage.free,
        }
    return out


def _public(res: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in res.items() if k != "kind"}


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read().strip()
    except OSError:
        return None


def _snapshot(mapper: dm.DeviceMapper, name: str) -> dict[str, Any]:
    try:
        info = mapper.info(name)
        targets = mapper.status(name)
    except HookError as e:
        return {"present": False, "error": str(e)}
    line = targets[0].params if targets else ""
    status = dm.SnapshotStatus.parse(line)
    fraction = status.used_fraction
    return {
        "present": True,
        "open_count": info.open_count,
        "event_nr": info.event_nr,
        "state": status.state,
        "status_line": line,
        "allocated_sectors": status.allocated,
        "total_sectors": status.total,
        "metadata_sectors": status.metadata,
        "used_percent": None if fraction is None else round(100 * fraction, 2),
    }


def _file_usage(path: str) -> dict[str, Any]:
    try:
        st = os.stat(path)
    except OSError:
        return {"present": False}
    return {"present": True, "apparent_bytes": st.st_size, "allocated_bytes": st.st_blocks * 512}


def format_text(status: dict[str, Any]) -> str:
    lines = [
        f"archiso-hook: {'complete' if status['complete'] else 'INCOMPLETE'} setup for "
        f"{status['newroot']}"
    ]
    if status.get("leftovers"):
        lines.append(
            f"  {status['leftovers']} thing(s) an earlier attempt could not release are listed "
            "too: the shutdown tries again"
        )
    for m in status["mounts"]:
        where = m["mounted_at"] or "NOT MOUNTED"
        lines.append(f"  mount    {where:<28} {m['fstype']:<9} {m['source']}")
    for lo in status["loops"]:
        state = "" if lo["present"] else "  (gone)"
        lines.append(f"  loop     {lo['device']:<28} {lo['backing']}{state}")
    for s in status["snapshots"]:
        if not s["present"]:
            lines.append(f"  snapshot {s['device']:<28} MISSING: {s.get('error', '')}")
        elif s["allocated_sectors"] is None:
            lines.append(f"  snapshot {s['device']:<28} {s['state']}")
        else:
            used = human(s["allocated_sectors"] * 512)
            total = human(s["total_sectors"] * 512)
            lines.append(
                f"  snapshot {s['device']:<28} {s['state']}: {used} of {total} COW "
                f"used ({s['used_percent']}%), mode {s['mode']}"
            )
    watch = status.get("watch", {})
    if watch.get("running"):
        policy = status.get("cow_policy", {})
        growth = (
            f"grows COW files up to {human(policy['grow_max'])}"
            if policy.get("grow")
            else "growth off"
        )
        lines.append(
            f"  watch    pid {watch['pid']} ({watch['state']}), {human(watch['rss_bytes'])} "
            f"RSS, {watch['cpu_seconds']:g} s CPU, {growth}"
        )
    elif watch.get("not_needed"):
        lines.append(f"  watch    not needed: {watch['not_needed']}")
    elif status.get("cow_policy"):
        lines.append("  watch    NOT RUNNING: COW files will not grow, nor warn when full")
    memory = status.get("memory")
    if memory:
        lines.append(
            f"  memory   {human(memory['available_bytes'])} available of "
            f"{human(memory['total_bytes'])}"
        )
    space = status.get("cowspace")
    if space:
        lines.append(
            f"  cowspace {space['path']:<28} {human(space['used_bytes'])} used of "
            f"{human(space['total_bytes'])}, {human(space['free_bytes'])} free"
        )
    for device in status.get("device_mapper", {}).get("devices", []):
        if not device["ours"]:
            lines.append(f"  other dm /dev/mapper/{device['name']:<17} {device['devno']}")
    for c in status["cow_files"]:
        if c["present"]:
            lines.append(
                f"  cow file {c['path']:<28} {human(c['allocated_bytes'])} in RAM of "
                f"{human(c['apparent_bytes'])}"
            )
    return "\n".join(lines)
