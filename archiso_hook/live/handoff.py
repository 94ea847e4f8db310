"""`archiso-hook handoff`: the last step before switch_root (the hook's cleanup).

switch_root empties the initramfs. What must outlive it goes to /run, which moves
into the live system: a copy of the initramfs at /run/initramfs, which the live
system switches back into at power-off to run /shutdown (systemd does when that
file exists), and from which the watchdog runs. The runtime hook makes the copy with
cp and runs this command from it, which then forks the watchdog; run from elsewhere,
it copies the initramfs itself and starts the watchdog from the copy.
"""

from __future__ import annotations

import importlib
import os
import stat
import time

from archiso_hook.boot.state import State
from archiso_hook.live import pidfile
from archiso_hook.live.watch import ARGV0, nothing_to_watch, run_foreground
from archiso_hook.log import Log
from archiso_hook.paths import HANDED_OFF, PID_FILE, READY_FILE, SHUTDOWN_ROOT, STATE_FILE
from archiso_hook.sizes import human

# Not needed to shut down: the modules are loaded by then (as mkinitcpio's shutdown).
SKIP = ("/usr/lib/modules",)
# What the copy holds besides the frozen tree and /shutdown (the install hook writes it):
# the system libraries the tree links, the dynamic loader, /shutdown's interpreter.
SHUTDOWN_FILES = "/etc/archiso/shutdown-files"
TREE = "/usr/lib/archiso-hook"
WATCH_INTERVAL = 0.25  # seconds, as `archiso-hook watch`


def copy_initramfs(dest: str = SHUTDOWN_ROOT, source: str = "/") -> int:
    """Copy what the shutdown runs to dest, as the runtime hook does (hooks/archiso):
    /shutdown, the frozen tree, the files SHUTDOWN_FILES lists and the links at / and
    /usr; without that list (an older image), the whole root filesystem. Bytes copied."""
    shutil = importlib.import_module("shutil")  # the runtime hook's cp copies on a boot
    try:
        with open(os.path.join(source, SHUTDOWN_FILES.lstrip("/")), encoding="utf-8") as f:
            listed = [line.strip() for line in f if line.startswith("/")]
    except FileNotFoundError:
        return _copy_tree(dest, source, source)
    copied = 0
    for directory in ("/", "/usr"):
        os.makedirs(dest + directory, exist_ok=True)
        for name in sorted(os.listdir(source + directory.lstrip("/"))):
            path = os.path.join(source, directory.lstrip("/"), name)
            if os.path.islink(path) and not os.path.lexists(os.path.join(dest + directory, name)):
                os.symlink(os.readlink(path), os.path.join(dest + directory, name))
    copied += _copy_tree(dest, source, os.path.join(source, TREE.lstrip("/")))
    for path in listed:
        real = os.path.join(source, path.lstrip("/"))
        if os.path.exists(real):
            os.makedirs(os.path.dirname(dest + path), exist_ok=True)
            shutil.copy2(real, dest + path)  # the file a link names, under the link's name
            copied += os.stat(real).st_size
    shutil.copy2(os.path.join(source, "shutdown"), os.path.join(dest, "shutdown"))
    return copied


def _copy_tree(dest: str, source: str, top: str) -> int:
    """Copy `top` (a directory under source, source itself or not) to the same place
    under dest, on source's filesystem only and without SKIP; bytes."""
    shutil = importlib.import_module("shutil")
    device = os.lstat(source).st_dev
    copied = 0
    for directory, subdirs, files in os.walk(top):
        target = os.path.join(dest, os.path.relpath(directory, source))
        os.makedirs(target, exist_ok=True)
        shutil.copystat(directory, target)
        keep = []
        for name in subdirs:
            path = os.path.join(directory, name)
            st = os.lstat(path)
            if stat.S_ISLNK(st.st_mode):
                files.append(name)  # a link to a directory is copied as a link
            elif st.st_dev == device and path not in SKIP and path != dest:
                keep.append(name)
        subdirs[:] = keep
        for name in files:
            path = os.path.join(directory, name)
            st = os.lstat(path)
            copy = os.path.join(target, name)
            if stat.S_ISLNK(st.st_mode):
                if not os.path.lexists(copy):
                    os.symlink(os.readlink(path), copy)
            elif stat.S_ISREG(st.st_mode):
                shutil.copy2(path, copy)
                copied += st.st_size
    return copied


def library_dirs(root: str) -> list[str]:
    """The directories of the shared libraries this process uses, inside `root`: the
    watchdog must load its libraries from the copy, which outlives the initramfs."""
    dirs: list[str] = []
    with open("/proc/self/maps", encoding="utf-8", errors="replace") as f:
        for line in f:
            path = line.split(maxsplit=5)[-1].strip()
            if ".so" in path and path.startswith("/"):
                directory = root + os.path.dirname(path)
                if directory not in dirs and os.path.isdir(directory):
                    dirs.append(directory)
    return dirs


def start_watchdog(binary: str, root: str = SHUTDOWN_ROOT) -> int:
    """Start `watch` from the copy, detached, with `@` in argv[0]; its pid."""
    env = dict(os.environ, LD_LIBRARY_PATH=":".join(library_dirs(root)))
    pid = os.fork()
    if pid == 0:
        try:
            os.setsid()
            devnull = os.open(os.devnull, os.O_RDONLY)
            os.dup2(devnull, 0)
            os.execve(binary, [ARGV0, "watch", "--foreground"], env)
        finally:
            os._exit(127)
    pidfile.write(PID_FILE, pid)
    return pid


def running_from(root: str) -> bool:
    """Whether this very program runs from `root` (the copy the runtime hook made)."""
    try:
        return os.path.realpath("/proc/self/exe").startswith(root.rstrip("/") + "/")
    except OSError:
        return False


def fork_watchdog(log: Log) -> int:
    """Start `watch` in a child of this process, detached; its pid.

    This process already runs from the copy (the runtime hook started it there, with `@`
    in argv[0]), and has imported everything the watchdog needs: a fork saves a second
    interpreter start-up, seconds under emulation, on the boot's path.
    """
    pid = os.fork()
    if pid == 0:
        code = 127
        try:
            os.setsid()
            devnull = os.open(os.devnull, os.O_RDONLY)
            os.dup2(devnull, 0)
            code = run_foreground(log, WATCH_INTERVAL)
        finally:
            os._exit(code)
    pidfile.write(PID_FILE, pid)
    return pid


def wait_ready(pid: int, timeout: float = 60.0) -> bool:
    """Until the watchdog has started (its start-up must not overlap switch_root, which
    moves away the files a starting program still reads); False if it died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if os.path.exists(READY_FILE):
            return True
        if os.waitpid(pid, os.WNOHANG) != (0, 0):
            return False
        time.sleep(0.02)
    return False


def start_watch(log: Log, *, from_copy: bool) -> None:
    """Start the watchdog from the copy (a fork when this process runs from it)."""
    if not os.path.exists(STATE_FILE):
        return
    try:
        reason = nothing_to_watch(State.load(STATE_FILE))
    except (OSError, ValueError, TypeError):
        reason = None  # the watchdog says what it cannot read
    if reason:
        log.info(f"no watchdog: {reason}")
        return
    start = time.monotonic()
    binary = f"{SHUTDOWN_ROOT}/usr/lib/archiso-hook/archiso-hook"
    pid = fork_watchdog(log) if from_copy else start_watchdog(binary)
    if wait_ready(pid):
        log.info(f"started the watchdog (pid {pid}) in {time.monotonic() - start:.2f} s")
    else:
        log.warning(
            "the watchdog did not start: COW files will not grow, nor warn when they fill, "
            "and an NBD root will not reconnect if its server restarts"
        )


def after_mount(log: Log) -> None:
    """`mount` succeeded: when it runs from the copy (the runtime hook copies the
    initramfs first and runs it from there), hand off now, with no second interpreter
    start-up: fork the watchdog and mark the handoff done for the cleanup hook. Run
    from anywhere else, leave it to `handoff`."""
    if not running_from(SHUTDOWN_ROOT):
        return
    log.info(
        f"the initramfs is copied to {SHUTDOWN_ROOT}: the live system switches back into it "
        "to shut down"
    )
    start_watch(log, from_copy=True)
    with open(HANDED_OFF, "w", encoding="ascii"):
        pass


def run(log: Log) -> int:
    # The runtime hook copies the initramfs itself (cp: no interpreter on the boot's path)
    # and runs this from the copy; run from anywhere else, this copies it.
    from_copy = running_from(SHUTDOWN_ROOT)
    if from_copy:
        log.info(
            f"the initramfs is copied to {SHUTDOWN_ROOT}: the live system switches back "
            "into it to shut down"
        )
    else:
        copied = copy_initramfs()
        log.info(
            f"copied the initramfs to {SHUTDOWN_ROOT} ({human(copied)}): the live system "
            "switches back into it to shut down"
        )
    start_watch(log, from_copy=from_copy)
    return 0
