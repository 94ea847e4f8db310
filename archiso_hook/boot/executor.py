"""Carry out a boot plan against the kernel, undoing everything if a step fails.

Every resource is registered for undo the moment it exists, and recorded in the
state file, so a failure half-way leaves no loop device, dm device or mount.
"""

from __future__ import annotations

import contextlib
import errno
import os
import sys
import time
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Any

import attrs

from archiso_hook.aitab import parse_aitab
from archiso_hook.boot import cowfile, fsprobe, lookonly, medium
from archiso_hook.boot.rootpath import resolve_in_root
from archiso_hook.boot.state import State, StateBusyError, locked
from archiso_hook.cmdline import CopyMode, CowMode, Options
from archiso_hook.errors import HookError, InputError, KernelError, exit_code, printable
from archiso_hook.kernel import dm, loop, syscalls
from archiso_hook.kernel.klog import KernelLogWindow
from archiso_hook.log import Log
from archiso_hook.mountopts import parse_mount_options
from archiso_hook.netconf import with_server
from archiso_hook.paths import BOOTMNT, COWSPACE, DM_UUID_PREFIX, IMG_DEV_MNT, STATE_FILE
from archiso_hook.plan import (
    AUTO_MAX_IMAGES,
    AUTO_RESERVE,
    COPY_RESERVE,
    AttachLoop,
    AttachNbd,
    BootPlan,
    BringUpNetwork,
    CreateCowFile,
    CreateSnapshot,
    FetchHttp,
    FindMedium,
    LoadModules,
    MakeDirectory,
    Mount,
    MountNfs,
    PrepareImages,
    Remount,
    SearchMedium,
    SizeCowFiles,
    Step,
    VerifySignatures,
    cow_need,
    cow_sizes,
    medium_steps,
    plan_boot,
)
from archiso_hook.sizes import human

if TYPE_CHECKING:
    from archiso_hook import checksums


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


def already_mounted(newroot: str, state_file: str = STATE_FILE) -> bool:
    """A complete earlier run (from the emergency shell, say) left the live root mounted."""
    try:
        state = State.load(state_file)
    except (OSError, ValueError, TypeError):
        return False
    return state.complete and state.newroot == newroot and syscalls.is_mountpoint(newroot)


class BootFailedError(Exception):
    """The boot failed; it was reported and everything was undone. Carries the exit code."""

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


def report_failure(log: Log, exc: Exception, *, debug: bool) -> int:
    """Log what went wrong in plain words (a traceback only under rd.debug); the exit code."""
    if isinstance(exc, HookError):
        log.error(printable(exc.message))
        if isinstance(exc, KernelError) and exc.kernel_log:
            log.error(printable("the kernel said: " + " | ".join(exc.kernel_log[-3:])))
        if exc.hint:
            log.error(printable(f"hint: {exc.hint}"))
        return exit_code(exc)
    log.error(
        printable(
            f"internal error: {type(exc).__name__}: {exc} (please report it; with rd.debug on "
            "the kernel command line the traceback is printed)"
        )
    )
    if debug:
        import traceback  # noqa: PLC0415  (only for a bug: not at start-up)

        log.error("".join(traceback.format_exception(exc)))
    return 1


class UndoStack:
    """Undo actions in reverse order of registration; each failure is logged, not raised."""

    def __init__(self, log: Log) -> None:
        self._actions: list[tuple[str, Callable[[], None], str | None]] = []
        self._log = log

    def push(self, description: str, action: Callable[[], None], key: str | None = None) -> None:
        self._actions.append((description, action, key))

    def undo_now(self, keys: set[str], *, why: str) -> list[str]:
        """Undo just these resources (newest first), before the rest; the failures."""
        chosen = [a for a in self._actions if a[2] in keys]
        self._actions = [a for a in self._actions if a[2] not in keys]
        return self._run(chosen, why)

    def rollback(self) -> list[str]:
        """Run every action; return the descriptions of those that failed."""
        actions, self._actions = self._actions, []
        return self._run(actions, "undone")

    def _run(
        self, actions: list[tuple[str, Callable[[], None], str | None]], why: str
    ) -> list[str]:
        failed = []
        while actions:
            description, action, _ = actions.pop()
            try:
                action()
            except (OSError, HookError) as e:
                failed.append(description)
                self._log.warning(f"could not {description}: {e}")
            else:
                self._log.info(f"{why}: {description}")
        return failed

    def forget(self) -> None:
        self._actions.clear()

    def __bool__(self) -> bool:
        return bool(self._actions)


def _load_modules(names: tuple[str, ...], log: Log) -> None:
    from archiso_hook.kernel.kmod import ensure_modules  # noqa: PLC0415  (reads indexes: boot only)

    loaded = ensure_modules(*names)
    if loaded:
        log.info(f"loaded kernel modules: {', '.join(loaded)}")


@attrs.frozen
class Memory:
    total: int
    available: int  # MemAvailable, what psutil calls `available` too


def _meminfo(path: str = "/proc/meminfo") -> Memory:
    """RAM from /proc/meminfo (psutil would cost the boot its import: subprocess and all)."""
    fields: dict[str, int] = {}
    with open(path, encoding="ascii") as f:
        for line in f:
            name, _, rest = line.partition(":")
            if name in ("MemTotal", "MemAvailable"):
                fields[name] = int(rest.split()[0]) * 1024
    return Memory(fields.get("MemTotal", 0), fields.get("MemAvailable", 0))


# Loaded while the medium is awaited: what an ISO 9660 medium needs, so that no module
# is loaded between the medium's event and its mount. (Not more: a medium arriving
# during a load waits for it.)
PRELOAD = ("fs-iso9660",)
# An NBD root: seconds a request may take, and that reads wait for a lost connection to
# be replaced (NBD_ATTR_TIMEOUT, NBD_ATTR_DEAD_CONN_TIMEOUT; `watch` reconnects).
NBD_TIMEOUT = 60


def _filesystems() -> set[str]:
    with open("/proc/filesystems", encoding="ascii") as f:
        return {line.split()[-1] for line in f if line.strip()}


class Boot:
    """Runs `archiso-hook mount NEWROOT`: medium, aitab, cowspace, images."""

    def __init__(
        self, options: Options, newroot: str, log: Log, *, state_file: str = STATE_FILE
    ) -> None:
        self.options = options
        self.newroot = newroot
        self.log = log
        self.state_file = state_file
        self.state = State(newroot=newroot)
        self._saved = False  # whether this run wrote the state file yet
        self.undo = UndoStack(log)
        self.refs: dict[str, Any] = {}  # ref -> LoopDevice or device path
        self.cow_bytes: dict[str, int] = {}  # origin ref -> COW file size
        self.image_paths: dict[str, str] = {}  # image on the medium -> its copy in RAM
        self._dm: dm.DeviceMapper | None = None
        self._filesystems: set[str] = set()  # what /proc/filesystems listed
        self._handlers: dict[type, Callable[[Any], None]] = {
            LoadModules: self._load_modules,
            FindMedium: self._find_medium,
            Mount: self._mount,
            MakeDirectory: self._make_directory,
            PrepareImages: self._prepare_images,
            VerifySignatures: self._verify_signatures,
            Remount: self._remount,
            SearchMedium: self._search_medium,
            AttachLoop: self._attach_loop,
            SizeCowFiles: self._size_cow_files,
            CreateCowFile: self._create_cow_file,
            CreateSnapshot: self._create_snapshot,
            BringUpNetwork: self._bring_up_network,
            FetchHttp: self._fetch_http,
            AttachNbd: self._attach_nbd,
            MountNfs: self._mount_nfs,
        }
        self.lease: Any = None  # net.Lease once the network is up

    def run(self) -> BootPlan:
        """Mount the live root, or report why not, undo everything and raise BootFailedError.

        As the state file's one writer: another `mount` running is refused, not joined."""
        try:
            with locked(self.state_file, command="mount", wait=5.0):
                return self._run_as_writer()
        except StateBusyError as exc:
            raise BootFailedError(report_failure(self.log, exc, debug=self.options.debug)) from exc

    def _run_as_writer(self) -> BootPlan:
        start = time.monotonic()
        startup = seconds_since_exec()
        try:
            plan = self._run()
        except Exception as exc:
            code = report_failure(self.log, exc, debug=self.options.debug)
            self._rollback()
            raise BootFailedError(code) from exc
        except BaseException:
            self._rollback()
            raise
        finally:
            if self._dm is not None:
                self._dm.close()
            if "archiso_hook.boot.coldplug" in sys.modules:  # the hook was its own coldplug
                sys.modules["archiso_hook.boot.coldplug"].stop()
        # Our fds go; autoclear now ties each loop device to the mount or dm table using it.
        for ref in list(self.refs.values()):
            if isinstance(ref, loop.LoopDevice):
                ref.close()
        self.undo.forget()
        if self.lease is not None and self.options.copy_resolvconf:
            self._copy_resolv_conf()
        work = time.monotonic() - start
        self.state.cow = self._growth_policy()
        self.state.complete = True
        self.state.timings["mount_seconds"] = round(work, 3)
        since_exec = ""
        if startup is not None:
            self.state.timings["startup_seconds"] = round(startup, 3)
            self.state.timings["hook_seconds"] = round(startup + work, 3)
            since_exec = f", {startup + work:.2f} s since the hook started"
        peak = peak_rss()
        if peak is not None:
            self.state.timings["peak_rss_bytes"] = peak
        self.state.save(self.state_file)
        from archiso_hook.boot import report  # noqa: PLC0415  (only once the root is ready)

        report.save_for(self, plan)  # /run/archiso/report.json; a failure only warns
        self.log.info(
            f"live root ready at {self.newroot} in {work:.2f} s{since_exec} "
            f"({len(plan.images)} image(s))"
            + (f", peak RSS {peak / 2**20:.1f} MiB" if peak is not None else "")
        )
        return plan

    def _growth_policy(self) -> dict[str, Any]:
        """What `watch` may do: grow COW files up to cow_grow_max of RAM, or on a device
        up to what the filesystem can still give (never more, counting kept files)."""
        cow_files = [r for r in self.state.resources if r["kind"] == "file"]
        if not cow_files:
            return {}
        fstype = syscalls.mountpoints().get(COWSPACE, ("", ""))[1]
        sizes = sum(os.stat(r["path"]).st_size for r in cow_files)
        if fstype == "tmpfs":
            ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
            grow_max = self.options.cow_grow_max.resolve(ram)
        else:
            fs = os.statvfs(COWSPACE)
            kept = [cowfile.Usage.of(r["path"]) for r in cow_files]
            grow_max = sizes + max(0, cowfile.room_for_new_files(fs.f_bavail * fs.f_frsize, kept))
        return {
            "space": COWSPACE,
            "tmpfs": fstype == "tmpfs",
            "grow": self.options.grows,
            "grow_max": grow_max,
        }

    def _run(self) -> BootPlan:
        if not os.path.isdir(self.newroot):
            raise InputError(f"new root {self.newroot} is not a directory")
        self._release_earlier()
        self.state.save(self.state_file)  # resources are appended to it as they appear
        self._saved = True
        if syscalls.is_mountpoint(BOOTMNT):  # another hook (loop_mnt, pxe) mounted it
            self.log.info(f"using the medium already mounted at {BOOTMNT}")
        else:
            for step in medium_steps(self.options):
                self._do(step)
        aitab_path = f"{BOOTMNT}/{self.options.basedir}/aitab"
        try:
            with open(aitab_path, encoding="utf-8", errors="surrogateescape") as f:
                text = f.read()
        except OSError as e:
            raise HookError(
                f"cannot read {aitab_path}: {e.strerror}",
                hint=f"is archisobasedir={self.options.basedir} right for this medium?",
            ) from None
        if self.options.checksum:
            self._check_aitab(aitab_path, text.encode("utf-8", errors="surrogateescape"))
        plan = plan_boot(
            self.options, parse_aitab(text, aitab_path), newroot=self.newroot, aitab=aitab_path
        )
        self.state.images = [image.to_json() for image in plan.images]
        self.state.save(self.state_file)
        for step in plan.image_steps:
            self._do(step)
        return plan

    def _do(self, step: Step) -> None:
        if self.log.show_debug:
            self.log.debug(step.describe())
        self._handlers[type(step)](step)

    def _release_earlier(self) -> None:
        """An earlier attempt's records (killed half-way, or a rollback that failed): what
        is still set up is released first; what cannot be stays recorded as leftovers."""
        try:
            earlier, problems = State.read(self.state_file)
        except FileNotFoundError:
            return
        except (OSError, ValueError) as e:
            self.log.warning(f"{e}: set aside as {self.state_file}.bad")
            with contextlib.suppress(OSError):
                os.replace(self.state_file, f"{self.state_file}.bad")
            return
        for problem in problems:
            self.log.warning(problem)
        if earlier.complete:
            raise HookError(
                f"{self.state_file} records a live root already set up at {earlier.newroot}",
                hint="`archiso-hook status` shows what it holds; unmount it first, or boot "
                "with what is there",
            )
        records = earlier.every_record()
        if not records:
            return
        from archiso_hook.boot import release  # noqa: PLC0415  (only after a failed attempt)

        self.log.warning(
            f"an earlier attempt left {len(records)} thing(s) set up: releasing them first"
        )
        self.state.leftovers = release.release(records, self.log)

    def _rollback(self) -> None:
        if self.undo:
            self.log.warning("undoing what was set up")
        failed = self.undo.rollback()
        for ref in self.refs.values():
            if isinstance(ref, loop.LoopDevice):
                ref.close()
        if not self._saved:
            return  # the file is an earlier boot's, or another command's: not ours to change
        if failed or self.state.leftovers:
            # What is left, for `archiso-hook status`, the next attempt and the shutdown.
            self.state.save(self.state_file)
        else:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.state_file)

    def _record(
        self, kind: str, undo: str, action: Callable[[], None], key: str, **fields: Any
    ) -> None:
        """Register a resource: in the state file, and for undo."""
        value = fields[key]

        def undo_and_forget() -> None:
            action()
            # A rollback saves the whole state (or removes the file) when it is done.
            with contextlib.suppress(OSError):
                self.state.remove_saved(self.state_file, kind, key, value)

        self.undo.push(undo, undo_and_forget, key=f"{kind}:{value}")
        self.state.add_saved(self.state_file, kind, **fields)

    def _device(self, source: str) -> str:
        if source.startswith("@"):
            ref = self.refs[source[1:]]
            return ref.path if isinstance(ref, loop.LoopDevice) else str(ref)
        return source

    # --- step handlers ---

    def _load_modules(self, step: LoadModules) -> None:
        _load_modules(step.names, self.log)

    def _find_medium(self, step: FindMedium) -> None:
        self.refs[step.ref] = medium.wait_for_device(
            step.device,
            step.timeout,
            self.log,
            what=f"{step.what} {step.device}",
            hint=step.hint,
            meanwhile=[partial(self._preload, name) for name in PRELOAD] + [self._read_filesystems],
        )

    def _preload(self, name: str) -> None:
        """Load a module while the medium is awaited (idle time); one the initramfs lacks
        is left for the step that needs it to report."""
        with contextlib.suppress(HookError):
            _load_modules((name,), self.log)

    def _read_filesystems(self) -> None:
        """While the medium is awaited: so that its mount need not read them."""
        self._filesystems = _filesystems()

    def _mount(self, step: Mount) -> None:
        source = self._device(step.source)
        fstype = step.fstype or medium.filesystem_type(source)
        if fstype is None:
            raise HookError(
                f"{source} holds no filesystem this hook can recognise",
                hint="is it the right device?",
            )
        if fstype not in self._filesystems:  # known ones stay known: read once per new one
            self._filesystems = _filesystems()
            if fstype not in self._filesystems:
                _load_modules((f"fs-{fstype}",), self.log)
        target = step.target
        if step.live_path is not None:  # under the new root: its symlinks stay inside it
            target = resolve_in_root(self.newroot, step.live_path)
            if target != step.target:
                self.log.info(f"{step.live_path} resolves to {target} in the new root")
        os.makedirs(target, mode=0o755, exist_ok=True)
        options = parse_mount_options(step.options, what=f"options of {step.target}")
        flags = options.flags | (syscalls.MS_RDONLY if step.read_only else 0)
        how = "read-only" if step.read_only else "read-write"
        if step.look_only:
            self._mount_look_only(source, target, fstype, flags, options.data)
            how += ", without journal replay"
        else:
            syscalls.mount(source, target, fstype, flags, options.data)
        self.log.info(f"mounted {source} ({fstype}) {how} at {target}")
        live_path = None
        if step.live_path is not None:
            live_path = "/" + os.path.relpath(target, self.newroot).removeprefix(".")
        self._record_mount(target, source, fstype, step.read_only, live_path)

    def _mount_look_only(
        self, source: str, target: str, fstype: str, flags: int, data: str | None
    ) -> None:
        """Mount another system's filesystem writing nothing to it (see lookonly): it may
        belong to a hibernated system, whose resume would find its disk changed."""
        try:
            unclean = fsprobe.journal_needs_recovery(fsprobe.read_head(source), fstype)
        except OSError:
            unclean = False
        if unclean:
            self.log.warning(
                f"{source} ({fstype}) was not cleanly unmounted (a hibernated or crashed "
                "system): it is mounted without replaying its journal, so changes still "
                "in the journal are not seen, and nothing is written to it"
            )
        with lookonly.read_only_device(source):
            syscalls.mount(source, target, fstype, flags, lookonly.look_only_data(fstype, data))

    def _record_mount(
        self, target: str, source: str, fstype: str, read_only: bool, live_path: str | None
    ) -> None:
        self._record(
            "mount",
            f"unmount {target}",
            lambda: _unmount(target),
            "target",
            target=target,
            source=source,
            fstype=fstype,
            read_only=read_only,
            live_path=live_path,
        )

    def _remount(self, step: Remount) -> None:
        options = parse_mount_options(step.options, what=f"options of {step.target}")
        syscalls.mount("", step.target, None, syscalls.MS_REMOUNT | options.flags, options.data)
        self.log.info(f"remounted {step.target} read-write")

    def _search_medium(self, step: SearchMedium) -> None:
        self.refs[step.ref] = medium.search(step.uuid, step.filename, step.timeout, self.log)

    def _make_directory(self, step: MakeDirectory) -> None:
        os.makedirs(step.path, mode=step.mode, exist_ok=True)
        os.chmod(step.path, step.mode)

    def _attach_loop(self, step: AttachLoop) -> None:
        backing = self.image_paths.get(step.backing, step.backing)  # a copy in RAM?
        if step.expect_fstype is not None:
            self._check_image(backing, step.expect_fstype, step.aitab_line)
        device = loop.attach(backing, read_only=step.read_only)
        self.refs[step.ref] = device
        self.log.info(
            f"attached {backing} to {device.path}{' read-only' if step.read_only else ''}"
        )
        self._record(
            "loop",
            f"detach {device.path}",
            device.detach,
            "device",
            device=device.path,
            backing=backing,
            read_only=step.read_only,
        )

    def _prepare_images(self, step: PrepareImages) -> None:
        for path, line in zip(step.images, step.lines, strict=True):
            if not os.path.exists(path):
                raise HookError(f"image {path} (aitab line {line}) does not exist on the medium")
        sizes = [os.stat(path).st_size for path in step.images]
        expected = [self._expected_checksum(path) for path in step.images] if step.verify else []
        copy = step.copy is not CopyMode.N and self._copy_is_possible(step, sum(sizes))
        if not copy and not step.verify:
            return
        from archiso_hook.boot import transfer  # noqa: PLC0415  (hashlib, threads: only to copy or verify)

        jobs = []
        if copy:
            self._mount(
                Mount(
                    "copytoram",
                    step.copy_to,
                    "tmpfs",
                    read_only=False,
                    options=f"size={step.copy_size},mode=0755",
                )
            )
        for i, path in enumerate(step.images):
            destination = f"{step.copy_to}/{os.path.basename(path)}" if copy else None
            jobs.append(
                transfer.Job(path, destination, expected[i].algorithm if expected else None)
            )
        what = " and ".join(
            w for w, on in (("copying to RAM", copy), ("verifying", step.verify)) if on
        )
        start = time.monotonic()
        results = transfer.run(
            jobs, progress=transfer.Progress(what, sum(sizes), self.log.progress)
        )
        seconds = time.monotonic() - start
        for result, want in zip(results, expected, strict=False):
            if result.digest != want.digest:
                raise HookError(
                    f"{result.job.source} is corrupt: its {want.algorithm} is {result.digest}, "
                    f"but {want.source} says {want.digest}",
                    hint="the download or the copy of the medium is damaged: fetch or write "
                    "it again; nothing was mounted from it",
                )
        rate = sum(sizes) / seconds if seconds else 0.0
        self.log.info(
            f"{what}: {len(jobs)} image(s), {human(sum(sizes))} in {seconds:.1f} s "
            f"({human(rate)}/s){'; checksums match' if step.verify else ''}"
        )
        self.state.timings["prepare_images_seconds"] = round(seconds, 3)
        if copy:
            self.image_paths.update((job.source, str(job.destination)) for job in jobs)
            for job in jobs:  # what vouches for each image goes along (verify=)
                for suffix in step.companions:
                    _copy_small(job.source + suffix, f"{job.destination}{suffix}")
            self._release_medium()

    def _verify_signatures(self, step: VerifySignatures) -> None:
        """verify=/cms_verify=: every image, as it will be used (its copy in RAM if one
        was made), before anything is mounted from it."""
        from archiso_hook.boot import signatures  # noqa: PLC0415  (only with verify= or cms_verify=)

        start = time.monotonic()
        for image in step.images:
            used = self.image_paths.get(image, image)  # its signatures went along
            if step.gpg:
                signer = signatures.check_gpg(used)
                self.log.info(f"{used}: good GPG signature by {signer}")
            if step.cms:
                signatures.check_cms(used)
                self.log.info(f"{used}: good CMS signature by {signatures.CODESIGN_CERT}")
        self.log.info(
            f"signatures checked: {len(step.images)} image(s) in {time.monotonic() - start:.1f} s"
        )

    def _check_aitab(self, path: str, data: bytes) -> None:
        """checksum=y: the aitab too, when the medium's checksum.<arch>.md5 (or
        checksum.md5) lists it, as archiso's `md5sum -c` checked it."""
        from archiso_hook import checksums  # noqa: PLC0415  (only with checksum=y)

        for source in checksums.aitab_sources(path, (str(self.options.arch),)):
            try:
                with open(source.path, encoding="utf-8", errors="replace") as f:
                    text = f.read()
            except FileNotFoundError:
                continue
            except OSError as e:
                raise HookError(f"cannot read {source.path}: {e.strerror}") from None
            if checksums.check_aitab(text, source, path, data):
                self.log.info(f"{path}: md5 checksum verified against {source.path}")
            return

    def _expected_checksum(self, image: str) -> checksums.Expected:
        from archiso_hook import checksums  # noqa: PLC0415  (only with checksum=y)

        arches = (str(self.options.arch),)
        source = checksums.find(image, arches)
        if source is None:
            raise HookError(
                f"checksum=y, but {image} has no checksum: "
                + checksums.describe_sources(image, arches),
                hint="make the medium with archiso-hook build, which writes them, or boot "
                "without checksum=y",
            )
        with open(source.path, encoding="utf-8", errors="replace") as f:
            return checksums.parse_source(f.read(), source)

    def _copy_is_possible(self, step: PrepareImages, needed: int) -> bool:
        """Whether to copy, said out loud with the numbers when the answer is no."""
        memory = _meminfo()
        room = step.copy_size.resolve(memory.total)
        mode = f"copytoram={step.copy}"
        reason = None
        if needed > room:
            reason = (
                f"the images need {human(needed)}, more than copytoram_size= allows ({human(room)})"
            )
        elif step.copy is CopyMode.AUTO:
            optical = self._medium_is_optical()
            if optical:
                reason = f"the medium is on an optical drive ({optical})"
            elif needed > AUTO_MAX_IMAGES:
                reason = f"the images are {human(needed)}, more than {human(AUTO_MAX_IMAGES)}"
            elif memory.available < needed + AUTO_RESERVE:
                reason = (
                    f"the images need {human(needed)} and {human(memory.available)} of "
                    f"RAM is available; auto copies with {human(AUTO_RESERVE)} to spare"
                )
        elif memory.available < needed + COPY_RESERVE:
            reason = (
                f"the images need {human(needed)} of RAM but only "
                f"{human(memory.available)} is available ({human(COPY_RESERVE)} must "
                "stay free for the system)"
            )
        if reason is None:
            self.log.info(
                f"{mode}: copying {human(needed)} of images to RAM "
                f"({human(memory.available)} available)"
            )
            return True
        message = f"{mode}: not copying to RAM: {reason}; booting from the medium"
        if step.copy is CopyMode.Y:
            self.log.warning(message)
        else:
            self.log.info(message)
        return False

    def _medium_is_optical(self) -> str | None:
        """The medium's device if it is an optical drive (SCSI type 5, sr*)."""
        device = self.refs.get("isodev") or self.refs.get("medium")
        if device is None:
            device = syscalls.mountpoints().get(BOOTMNT, ("", ""))[0]
        if isinstance(device, loop.LoopDevice):
            return None
        name = os.path.basename(str(device))
        try:
            with open(f"/sys/class/block/{name}/device/type", encoding="ascii") as f:
                optical = f.read().strip() == "5"
        except OSError:
            optical = name.startswith("sr")
        return str(device) if optical else None

    def _release_medium(self) -> None:
        """Everything on the medium is in RAM: unmount it so it can be removed."""
        keys = {f"mount:{BOOTMNT}", f"mount:{IMG_DEV_MNT}"}
        if isinstance(self.refs.get("medium"), loop.LoopDevice):
            keys.add(f"loop:{self.refs['medium'].path}")
        if self.options.nbd_srv is not None:
            keys.add(f"nbd:{self.refs.get('medium')}")
        failed = self.undo.undo_now(keys, why="releasing the medium")
        if failed:
            self.log.warning("the medium could not be released; it must stay attached")
            return
        if self.options.network_source:
            self.log.info("released the server's medium: the images are in RAM")
            self._network_done()
        else:
            self.log.info("released the medium: it can be removed now")

    # --- network boot ---

    def _bring_up_network(self, step: BringUpNetwork) -> None:
        from archiso_hook.boot import net  # noqa: PLC0415  (pyroute2: only on a network boot)

        self.lease = lease = net.bring_up(step.config, step.bootif, step.timeout, self.log)
        if net.write_resolv_conf(lease):
            self.log.info(f"DNS servers {' '.join(map(str, lease.dns))} in {net.RESOLV_CONF}")
        self._record(
            "net",
            f"take {lease.interface} down",
            lambda: net.take_down(lease.interface),
            "interface",
            interface=lease.interface,
            address=f"{lease.address}/{lease.prefixlen}",
            how=lease.how,
        )

    def _network_done(self) -> None:
        """The root no longer needs the network: leave the interface as the live system
        expects to find it, unconfigured (archiso FS#36749)."""
        if self.lease is None:
            return
        name = self.lease.interface
        if not self.undo.undo_now({f"net:{name}"}, why="the images are in RAM"):
            self.log.info(f"took {name} down: the live root does not need the network")

    def _server(self, text: str, name: str) -> str:
        server = self.lease.server if self.lease is not None else None
        return with_server(text, server, name)

    def _fetch_http(self, step: FetchHttp) -> None:
        from archiso_hook.boot import httpfetch  # noqa: PLC0415

        url = self._server(step.url, "archiso_http_srv")
        start = time.monotonic()
        fetched = httpfetch.fetch_medium(
            url,
            step.basedir,
            step.arch,
            step.root,
            self.log,
            require_checksums=step.require_checksums,
            signatures=step.signatures,
        )
        seconds = time.monotonic() - start
        total = sum(f.size for f in fetched)
        self.log.info(
            f"downloaded {len(fetched)} image(s), {human(total)} in {seconds:.1f} s "
            f"({human(total / seconds if seconds else 0.0)}/s) into RAM"
        )
        self.state.timings["download_seconds"] = round(seconds, 3)
        self._network_done()

    def _attach_nbd(self, step: AttachNbd) -> None:
        from archiso_hook.kernel import nbd  # noqa: PLC0415

        host = self._server(step.host, "archiso_nbd_srv")
        attached = nbd.attach(host, step.port, step.name, timeout=NBD_TIMEOUT)
        path = attached.device
        self.refs[step.ref] = path
        self.log.info(f"attached NBD export {step.name!r} of {host}:{step.port} as {path}")
        self._record(
            "nbd",
            f"detach {path}",
            lambda: nbd.detach(int(path.removeprefix("/dev/nbd"))),
            "device",
            device=path,
            server=f"{host}:{step.port}",
            export=step.name,
            # What `watch` needs to reconnect it when the server restarts (nbd.Link).
            address=attached.address,
            port=step.port,
            size=attached.export.size,
            timeout=NBD_TIMEOUT,
        )
        # The kernel makes the device; udev's event says it has its size.
        medium.wait_for_device(path, 10, self.log, what=f"NBD device {path}")

    def _mount_nfs(self, step: MountNfs) -> None:
        import socket  # noqa: PLC0415

        host = self._server(step.export.host, "archiso_nfs_srv")
        try:
            address = socket.getaddrinfo(host, None, socket.AF_INET)[0][4][0]
        except OSError as e:
            raise HookError(
                f"cannot resolve the NFS server {host}: {e.strerror or e}",
                hint="give archiso_nfs_srv= an IP address, or check DNS",
            ) from None
        options = parse_mount_options(step.options, what="archiso_nfs_opt")
        given = [o for o in (options.data or "").split(",") if o]
        versions = [None] if any(o.split("=")[0] in {"vers", "nfsvers"} for o in given) else [
            "4.2", "4.1", "4.0", "3"]  # fmt: skip
        source = f"{host}:{step.export.path}"
        os.makedirs(step.target, mode=0o755, exist_ok=True)
        last: KernelError | None = None
        for version in versions:
            data = ",".join([*given, f"addr={address}", *([f"vers={version}"] if version else [])])
            if version == "3" and "nolock" not in given:
                data += ",nolock"  # no lockd/statd in an initramfs; read-only anyway
            try:
                syscalls.mount(source, step.target, "nfs", options.flags | syscalls.MS_RDONLY, data)
            except KernelError as e:
                last = e
                self.log.info(f"NFS {version or ''} mount of {source} failed: {e.message}")
                continue
            self.log.info(f"mounted NFS {source} read-only at {step.target} ({data})")
            self._record_mount(step.target, source, "nfs", True, None)
            return
        assert last is not None
        raise HookError(
            f"cannot mount the NFS export {source}: {last.message}",
            hint="check archiso_nfs_srv= (server and path) and that the server exports it",
        )

    def _copy_resolv_conf(self) -> None:
        from archiso_hook.boot import net  # noqa: PLC0415

        path = resolve_in_root(self.newroot, "/etc/resolv.conf")
        if os.path.islink(f"{self.newroot}/etc/resolv.conf"):
            self.log.info("the live root's /etc/resolv.conf is a link (systemd-resolved?); kept")
            return
        if net.write_resolv_conf(self.lease, path):
            self.log.info(f"copied the DNS servers into {path} (copy_resolvconf=n to skip)")

    def _check_image(self, path: str, fstype: str, aitab_line: int | None) -> None:
        """Is it there, readable, of the right type and whole? Said plainly, before use."""
        where = f" (aitab line {aitab_line})" if aitab_line else ""
        if not os.path.exists(path):
            raise HookError(f"image {path}{where} does not exist on the medium")
        with KernelLogWindow() as klog:
            try:
                head = fsprobe.read_head(path)
            except OSError as e:
                raise KernelError(
                    f"cannot read {path}{where}: {e.strerror}: the image or the medium is damaged",
                    e.errno or 0,
                    kernel_log=klog.lines(),
                    hint="rewrite the medium; a scratched disc or failing stick reads like this",
                ) from None
        found = fsprobe.probe_bytes(head)
        if found != fstype:
            raise HookError(
                f"{path}{where} is not a {fstype} image (found {found or 'no known filesystem'}): "
                "the file is corrupt or truncated, or the aitab line is wrong"
            )
        declared = fsprobe.declared_size(head, fstype)
        actual = os.stat(path).st_size
        if declared is not None and declared > actual:
            raise HookError(
                f"{path}{where} is truncated: the {fstype} in it is {human(declared)} but the "
                f"file has {human(actual)}",
                hint="the image was cut short (an interrupted copy or download): rebuild or "
                "rewrite the medium",
            )

    def _size_cow_files(self, step: SizeCowFiles) -> None:
        fs = os.statvfs(step.space)
        fstype = syscalls.mountpoints().get(step.space, ("", ""))[1]
        kept = {
            ref: self._kept_cow_file(path, step.space)
            for ref, path in zip(step.origins, step.files, strict=True)
            if step.reuse and os.path.lexists(path)
        }
        room = cowfile.room_for_new_files(fs.f_bavail * fs.f_frsize, list(kept.values()))
        if kept and room < 0:
            self.log.warning(
                f"the kept COW files can grow {human(-room)} beyond the free space of "
                f"{step.space}; if it fills, their snapshots become invalid"
            )
        new = [ref for ref in step.origins if ref not in kept]
        origins = {ref: self.refs[ref].size() for ref in step.origins}
        sizes = cow_sizes([origins[r] for r in new], max(room, 0), step.mode, step.chunk_sectors)
        if fstype in cowfile.NO_SPARSE_FILES:
            chunk = step.chunk_sectors * 512
            sizes = [min(size, cowfile.FAT_MAX_FILE // chunk * chunk) for size in sizes]
            if new:
                self.log.warning(
                    f"{fstype} has no sparse files: the new COW files take "
                    f"{human(sum(sizes))} of {step.space} from now on"
                )
        self.cow_bytes.update(zip(new, sizes, strict=True))
        for ref in step.origins:
            name, origin = ref.rsplit(".", 1)[0], origins[ref]
            size = kept[ref].apparent if ref in kept else self.cow_bytes[ref]
            covered = min(100.0, 100.0 * size / origin) if origin else 100.0
            self.log.info(
                f"{name}: {human(size)} of writable space in {step.space} "
                f"(origin {human(origin)}, {covered:.0f}% of it can change)"
            )

    @staticmethod
    def _kept_cow_file(path: str, space: str) -> cowfile.Usage:
        cowfile.check_kept(path, space)
        return cowfile.Usage.of(path)

    def _create_cow_file(self, step: CreateCowFile) -> None:
        exists = os.path.lexists(step.path)  # a symlink is there too, whatever it names
        if exists and step.reuse:
            usage = self._kept_cow_file(step.path, COWSPACE)
            cowfile.check_reusable(step.path, cowfile.read_header(step.path))
            self.log.info(
                f"reusing the persistent COW file {step.path} "
                f"({human(usage.allocated)} used of {human(usage.apparent)})"
            )
            self.state.add_saved(
                self.state_file, "file", path=step.path, apparent_bytes=usage.apparent, kept=True
            )
            return
        if exists:
            why = "cow_reset=y" if self.options.cow_reset else "a transient store (N) was asked for"
            self.log.info(f"starting {step.path} over: {why}")
            os.unlink(step.path)
        fd = os.open(step.path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            os.ftruncate(fd, self.cow_bytes[step.origin])  # sparse: costs space only when written
        finally:
            os.close(fd)
        self._record(
            "file",
            f"remove {step.path}",
            lambda: os.unlink(step.path),
            "path",
            path=step.path,
            apparent_bytes=self.cow_bytes[step.origin],
            kept=False,
        )

    def _mapper(self) -> dm.DeviceMapper:
        if self._dm is None:
            self._dm = dm.DeviceMapper()
            self.log.info("device-mapper driver " + ".".join(map(str, self._dm.version())))
        return self._dm

    def _create_snapshot(self, step: CreateSnapshot) -> None:
        origin: loop.LoopDevice = self.refs[step.origin]
        cow: loop.LoopDevice = self.refs[step.cow]
        mapper = self._mapper()
        sectors = origin.size() // 512
        table = dm.Target(
            0, sectors, "snapshot", f"{origin.devno} {cow.devno} {step.mode} {step.chunk_sectors}"
        )
        info = mapper.create(step.name, uuid=DM_UUID_PREFIX + step.name)

        def remove() -> None:
            _remove_mapping(self._mapper(), step.name)
            dm.remove_node(step.name)

        self._record(
            "dm",
            f"remove /dev/mapper/{step.name}",
            remove,
            "name",
            name=step.name,
            device=f"/dev/mapper/{step.name}",
            devno=info.devno,
            origin=origin.path,
            cow=cow.path,
            mode=str(step.mode),
            chunk_sectors=step.chunk_sectors,
            table=str(table),
            cow_file=cow.backing,
            # What covering every chunk of the origin takes: the most the COW can use.
            cow_need=cow_need(sectors * 512, step.mode, step.chunk_sectors),
        )
        try:
            mapper.load(step.name, [table])
        except KernelError as e:
            # PO is the default in RAM "where the kernel supports it" (Linux 4.3+).
            if not (
                step.mode is CowMode.PO
                and self.options.cow_persistent is None
                and e.errno == errno.EINVAL
            ):
                raise
            self.log.warning("this kernel's dm-snapshot has no overflow mode (PO); using N")
            table = dm.Target(
                0, sectors, "snapshot", f"{origin.devno} {cow.devno} N {step.chunk_sectors}"
            )
            mapper.load(step.name, [table])
        info = mapper.resume(step.name)
        dm.make_node(step.name, info.major, info.minor)
        self.log.info(f"created /dev/mapper/{step.name} ({info.devno}): {table}")
        # A persistent store the kernel found damaged loads fine and then fails every I/O.
        status = dm.SnapshotStatus.parse(mapper.status(step.name)[0].params)
        if status.state != "Active":
            raise HookError(
                f"/dev/mapper/{step.name} is {status.state}: its COW file {cow.backing} "
                "cannot be used",
                hint=cowfile.RESET_HINT if step.mode is not CowMode.N else None,
            )


def _copy_small(source: str, destination: str, limit: int = 1 << 20) -> None:
    """A signature file beside an image, copied along to RAM if the medium has it."""
    try:
        with open(source, "rb") as f:
            data = f.read(limit + 1)
    except FileNotFoundError:
        return  # its absence is for the signature check to report
    if len(data) > limit:
        raise HookError(f"{source} has more than {human(limit)}: not a signature")
    with open(destination, "wb") as f:
        f.write(data)


def _unmount(target: str) -> None:
    """Unmount; a briefly busy mount (udev probing) gets a few retries, then a lazy detach."""
    _busy_retried(
        lambda: syscalls.umount(target), lambda: syscalls.umount(target, syscalls.MNT_DETACH)
    )


def _remove_mapping(mapper: dm.DeviceMapper, name: str) -> None:
    """Remove; a briefly open device gets a few retries, then a deferred remove."""
    _busy_retried(lambda: mapper.remove(name), lambda: mapper.remove(name, deferred=True))


def _busy_retried(action: Callable[[], None], last_resort: Callable[[], None]) -> None:
    """`action`, tried 5 times 0.1 s apart while the kernel says EBUSY; then `last_resort`."""
    for _ in range(5):
        try:
            action()
            return
        except KernelError as e:
            if e.errno != errno.EBUSY:
                raise
            time.sleep(0.1)
    last_resort()
