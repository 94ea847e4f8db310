"""Carry out a boot plan against the kernel, releasing everything if a step fails.

`Boot` is a small loop: each step of the plan (plan.py: the numbered story `archiso-hook
plan` prints) goes to its handler in `HANDLERS`, a function of the executor and the step
in the module that does that kind of work (mounting, images, prepare, netboot,
signatures); a module is imported when the first of its steps comes, so a boot from a
disk never loads the network's. A handler asks the kernel through `self.kernel`
(seam.Kernel) and registers what it made with `acquired(resource, release)` the moment
the kernel made it: the resource goes into the state file and the release onto the
stack that a failure runs in reverse. What is left at the end is the live root.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterable
from typing import Any

from archiso_hook.aitab import parse_aitab
from archiso_hook.boot import decisions, procfs, report, resources
from archiso_hook.boot.failure import BootFailedError, report_failure
from archiso_hook.boot.seam import Kernel, LiveKernel, LoopHandle, Network
from archiso_hook.boot.state import State, StateBusyError, locked, release_earlier
from archiso_hook.errors import HookError, InputError
from archiso_hook.lazy import function
from archiso_hook.log import Log
from archiso_hook.options import Options
from archiso_hook.paths import BOOTMNT, COWSPACE, STATE_FILE
from archiso_hook.plan import BootPlan, medium_steps, plan_boot
from archiso_hook.steps import Step

# Each kind of step, and the function that carries it out: "module:function".
HANDLERS: dict[str, str] = {
    "LoadModules": "archiso_hook.boot.mounting:load_modules",
    "FindMedium": "archiso_hook.boot.mounting:find_medium",
    "SearchMedium": "archiso_hook.boot.mounting:search_medium",
    "Mount": "archiso_hook.boot.mounting:mount",
    "Remount": "archiso_hook.boot.mounting:remount",
    "MakeDirectory": "archiso_hook.boot.mounting:make_directory",
    "PrepareImages": "archiso_hook.boot.images:prepare_images",
    "VerifySignatures": "archiso_hook.boot.signatures:verify_signatures",
    "AttachLoop": "archiso_hook.boot.images:attach_loop",
    "SizeCowFiles": "archiso_hook.boot.images:size_cow_files",
    "CreateCowFile": "archiso_hook.boot.images:create_cow_file",
    "CreateSnapshot": "archiso_hook.boot.images:create_snapshot",
    "BringUpNetwork": "archiso_hook.boot.netboot:bring_up_network",
    "FetchHttp": "archiso_hook.boot.netboot:fetch_http",
    "AttachNbd": "archiso_hook.boot.netboot:attach_nbd",
    "MountNfs": "archiso_hook.boot.netboot:mount_nfs",
}


class Boot:
    """Runs `archiso-hook mount NEWROOT`: medium, aitab, cowspace, images."""

    def __init__(
        self,
        options: Options,
        newroot: str,
        log: Log,
        *,
        state_file: str = STATE_FILE,
        kernel: Kernel | None = None,
        network: Network | None = None,
    ) -> None:
        self.options = options
        self.newroot = newroot
        self.log = log
        self.state_file = state_file
        self.kernel: Kernel = kernel or LiveKernel(log)
        self.network = network  # None: netboot's, on the first network step
        self.state = State(newroot=newroot)
        # What this run holds, oldest first, with how to release each (None: kept).
        self.held: list[tuple[resources.Resource, Callable[[], None] | None]] = []
        self.refs: dict[str, LoopHandle | str] = {}  # a step's ref -> loop device or path
        self.cow_bytes: dict[str, int] = {}  # origin ref -> COW file size
        self.image_paths: dict[str, str] = {}  # image on the medium -> its copy in RAM
        self.filesystems: set[str] = set()  # what /proc/filesystems listed
        self.lease: Any = None  # net.Lease once the network is up
        self.dm_announced = False
        self._saved = False  # whether this run wrote the state file yet
        self._since_exec = ""  # whether this run wrote the state file yet

    # --- what handlers use ---

    def acquired(self, resource: resources.Resource, release: Callable[[], None] | None) -> None:
        """The kernel just made `resource`: record it, with how to release it."""
        self.held.append((resource, release))
        self.state.add_saved(self.state_file, resource.KIND, **resources.record(resource))

    def release(self, keys: Iterable[str], *, why: str) -> list[str]:
        """Release these now (newest first), before the rest; what could not be."""
        chosen = set(keys)
        picked = [h for h in self.held if resources.key(h[0]) in chosen]
        self.held = [h for h in self.held if resources.key(h[0]) not in chosen]
        return self._release(picked, why)

    def _release(
        self, held: list[tuple[resources.Resource, Callable[[], None] | None]], why: str
    ) -> list[str]:
        failed = []
        for resource, release in reversed(held):
            if release is None:
                continue
            try:
                release()
            except (OSError, HookError) as e:
                failed.append(resource.release_text)
                self.log.warning(f"could not {resource.release_text}: {e}")
                continue
            # A rollback saves the whole state (or removes the file) when it is done.
            with contextlib.suppress(OSError):
                value = getattr(resource, resource.KEY)
                self.state.remove_saved(self.state_file, resource.KIND, resource.KEY, value)
            self.log.info(f"{why}: {resource.release_text}")
        return failed

    def device(self, source: str) -> str:
        """A step's source: a path, or `@ref` for what an earlier step found or made."""
        if source.startswith("@"):
            ref = self.refs[source[1:]]
            return ref if isinstance(ref, str) else ref.path
        return source

    def loop(self, ref: str) -> LoopHandle:
        found = self.refs[ref]
        assert not isinstance(found, str), f"{ref} is not a loop device"
        return found

    def call(self, target: str, *args: Any, **kwargs: Any) -> Any:
        """A function of a module imported only when a boot needs it."""
        return function(target)(*args, **kwargs)

    def do(self, step: Step) -> None:
        if self.log.show_debug:
            self.log.debug(step.describe())
        function(HANDLERS[type(step).__name__])(self, step)

    # --- the run ---

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
        startup = procfs.seconds_since_exec()
        try:
            plan = self._mount_live_root()
            work = self._complete(time.monotonic() - start, startup)
        except Exception as exc:
            code = report_failure(self.log, exc, debug=self.options.debug)
            self._rollback()
            raise BootFailedError(code) from exc
        except BaseException:
            self._rollback()
            raise
        finally:
            self.kernel.close()
        self._close_loops()
        self.held.clear()  # the live root's now: released by the shutdown
        self.save_report(plan)
        peak = self.state.timings.get("peak_rss_bytes")
        self.log.info(
            f"live root ready at {self.newroot} in {work:.2f} s{self._since_exec} "
            f"({len(plan.images)} image(s))"
            + (f", peak RSS {peak / 2**20:.1f} MiB" if peak is not None else "")
        )
        return plan

    def _mount_live_root(self) -> BootPlan:
        if not os.path.isdir(self.newroot):
            raise InputError(f"new root {self.newroot} is not a directory")
        self.state.leftovers = release_earlier(self.state_file, self.log)
        self.state.save(self.state_file)  # resources are appended to it as they appear
        self._saved = True
        if self.kernel.mounted(BOOTMNT):  # another hook (loop_mnt, pxe) mounted it
            self.log.info(f"using the medium already mounted at {BOOTMNT}")
        else:
            self.execute(medium_steps(self.options))
        aitab_path = f"{BOOTMNT}/{self.options.basedir}/aitab"
        try:
            text = self.kernel.read_text(aitab_path)
        except OSError as e:
            raise HookError(
                f"cannot read {aitab_path}: {e.strerror}",
                hint=f"is archisobasedir={self.options.basedir} right for this medium?",
            ) from None
        if self.options.checksum:
            data = text.encode("utf-8", errors="surrogateescape")
            self.call("archiso_hook.boot.prepare:check_aitab", self, aitab_path, data)
        plan = plan_boot(
            self.options, parse_aitab(text, aitab_path), newroot=self.newroot, aitab=aitab_path
        )
        self.state.images = [image.to_json() for image in plan.images]
        self.state.save(self.state_file)
        self.execute(plan.image_steps)
        return plan

    def execute(self, steps: Iterable[Step]) -> None:
        for step in steps:
            self.do(step)

    def _rollback(self) -> None:
        if any(release is not None for _, release in self.held):
            self.log.warning("undoing what was set up")
        held, self.held = self.held, []
        failed = self._release(held, "undone")
        self.state.complete = False
        self._close_loops()
        if not self._saved:
            return  # the file is an earlier boot's, or another command's: not ours to change
        if failed or self.state.leftovers:
            # What is left, for `archiso-hook status`, the next attempt and the shutdown.
            self.state.save(self.state_file)
        else:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.state_file)

    def _close_loops(self) -> None:
        """Our fds go; autoclear ties each loop device to the mount or dm table using it."""
        for ref in self.refs.values():
            if not isinstance(ref, str):
                ref.close()

    def _complete(self, work: float, startup: float | None) -> float:
        """The live root is mounted: what the watchdog may grow, the DNS servers, the
        timings; the state saved as complete. Its time of work."""
        if self.lease is not None and self.options.copy_resolvconf:
            self.call("archiso_hook.boot.netboot:copy_resolv_conf", self)
        self.state.cow = self._growth_policy()
        timings = self.state.timings
        timings["mount_seconds"] = round(work, 3)
        if startup is not None:
            timings["startup_seconds"] = round(startup, 3)
            timings["hook_seconds"] = round(startup + work, 3)
            self._since_exec = f", {startup + work:.2f} s since the hook started"
        peak = procfs.peak_rss()
        if peak is not None:
            timings["peak_rss_bytes"] = peak
        self.state.complete = True
        self.state.save(self.state_file)
        return work

    def _growth_policy(self) -> dict[str, Any]:
        files = [r["path"] for r in self.state.resources if r["kind"] == "file"]
        if not files:
            return {}
        fstype = (self.kernel.mounted(COWSPACE) or ("", ""))[1]
        return decisions.growth_policy(
            [self.kernel.file_usage(path) for path in files],
            space=COWSPACE,
            fstype=fstype,
            ram=os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"),
            grow_max=self.options.cow_grow_max,
            grow=self.options.grows,
            free=0 if fstype == "tmpfs" else self.kernel.free_bytes(COWSPACE),
        )

    def save_report(self, plan: BootPlan) -> None:
        """/run/archiso/report.json, beside the state file."""
        medium, isodev = self.refs.get("medium"), self.refs.get("isodev")
        report.save(
            os.path.join(os.path.dirname(self.state_file), report.REPORT_NAME),
            options=self.options,
            plan=plan,
            state=self.state,
            medium=report.medium_report(self.options, self.state.resources, medium, isodev),
            copies=self.image_paths,
            log=self.log,
        )
