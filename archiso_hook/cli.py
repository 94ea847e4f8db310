"""archiso-hook's command line: plan, mount, status, build."""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, NoReturn

from archiso_hook import __version__
from archiso_hook.bootcmd import read_cmdline
from archiso_hook.errors import HookError, InputError, exit_code, printable
from archiso_hook.paths import STATE_FILE

if TYPE_CHECKING:
    import argparse
    from pathlib import Path

    from archiso_hook.build.imagesums import Signing
    from archiso_hook.log import Log

EPILOG_PLAN = """example:
  archiso-hook plan --aitab aitab --cmdline 'archisolabel=ARCH_2026 copytoram=y'
"""
EPILOG_MOUNT = """examples:
  archiso-hook mount /new_root            (what the mkinitcpio hook runs)
  archiso-hook mount /new_root archisolabel=ARCH_2026
                                          (from the emergency shell, with a
                                          corrected parameter; then: exit)
"""
EPILOG_STATUS = """example:
  archiso-hook status --json
"""
EPILOG_WATCH = """example (to watch in the foreground, from the live system):
  archiso-hook watch --interval 1
"""
EPILOG_HANDOFF = """example (the runtime hook's run_cleanuphook):
  archiso-hook handoff
"""
EPILOG_SHUTDOWN = """example (/shutdown in /run/initramfs, run by systemd at power-off):
  archiso-hook shutdown poweroff
"""
EPILOG_TRANSFER = """examples:
  archiso-hook transfer --verify /run/archiso/bootmnt/arch/x86_64/*.sfs
                                          (is my stick OK?)
  archiso-hook transfer --to /mnt/images --verify arch/x86_64/root.fs.sfs
  archiso-hook transfer --to /tmp/t --verify --timeout 600 \\
      http://10.0.2.2/arch/x86_64/root.fs.sfs
                                          (does this server boot us?)
"""
EPILOG_BUILD = """examples:
  archiso-hook build --aitab aitab --src work --out media --iso live.iso \\
      --label ARCH_2026 --boot x86_64=/boot/vmlinuz-linux,archiso.img
                  (boots by itself, BIOS and UEFI, as a CD or a USB stick:
                  qemu-system-x86_64 -m 1G -cdrom live.iso, or dd it to a stick)
  archiso-hook build --aitab aitab --src work --out media --iso live.iso \\
      --label ARCH_2026 --no-boot
                  (the images only, for a loader that starts the kernel itself)
"""
EPILOG = """At boot, mkinitcpio's 'archiso' hook runs 'archiso-hook mount /new_root', which
reads the kernel command line (mkinitcpio -H archiso lists the parameters). Each
command has its own --help.

examples:
  archiso-hook plan --cmdline 'archisolabel=ARCH_2026 copytoram=y' --aitab aitab
                                      (what a boot would do, on any machine)
  archiso-hook status                 (in the live system: what the boot set up)
  cat /run/archiso/report.json        (its parameters, medium, images, timings)

More: /usr/share/doc/archiso-hook/README.md
"""


def cmd_plan(args: argparse.Namespace) -> int:
    from archiso_hook.aitab import parse_aitab  # noqa: PLC0415
    from archiso_hook.cmdline import Arch  # noqa: PLC0415
    from archiso_hook.options import parse_options  # noqa: PLC0415
    from archiso_hook.plan import plan_boot  # noqa: PLC0415

    cmdline = args.cmdline if args.cmdline is not None else read_cmdline()
    arch = Arch.of_machine(args.arch) if args.arch else None
    options = parse_options(cmdline, machine_arch=arch)
    try:
        with open(args.aitab, encoding="utf-8", errors="surrogateescape") as f:
            text = f.read()
    except OSError as e:
        raise InputError(f"cannot read {args.aitab}: {e.strerror}") from None
    plan = plan_boot(options, parse_aitab(text, args.aitab), newroot=args.newroot)
    if args.json:
        import json  # noqa: PLC0415

        print(json.dumps(plan.to_json(), indent=2))
    else:
        for warning in options.warnings:
            print(f"warning: {warning}")
        print(plan.describe())
    return 0


def cmd_mount(args: argparse.Namespace) -> int:
    from archiso_hook.bootcmd import mount  # noqa: PLC0415

    return mount(args.newroot, args.set)


def cmd_status(args: argparse.Namespace) -> int:
    from archiso_hook.live import status  # noqa: PLC0415

    report = status.collect(args.state)
    import json  # noqa: PLC0415

    print(json.dumps(report, indent=2) if args.json else status.format_text(report))
    return 0


def cmd_build(args: argparse.Namespace) -> int:
    from pathlib import Path  # noqa: PLC0415

    from archiso_hook.build.builder import BootOptions, build  # noqa: PLC0415

    def log(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    boot = None
    if not args.no_boot:
        boot = BootOptions(
            files=dict(_boot_spec(spec) for spec in args.boot or ()),
            required=args.iso is not None,
            title=args.title,
            append=args.append,
            serial=args.serial,
            timeout=args.timeout,
        )
    try:
        result = build(
            Path(args.aitab),
            Path(args.src),
            Path(args.out),
            basedir=args.basedir,
            # Images marked `any` belong to every architecture's boot.
            arches={*args.arch, "any"} if args.arch else None,
            iso=Path(args.iso) if args.iso else None,
            label=args.label,
            boot=boot,
            checksum_layout=args.checksum_layout,
            signing=_signing(args),
            log=log,
        )
    except OSError as e:  # the output cannot be written: a full disk, a read-only place
        where = f" {e.filename}" if e.filename else ""
        raise HookError(f"cannot write{where}: {e.strerror or e}") from None
    for image in result.images:
        print(image.path)
    if result.iso:
        print(result.iso)
    return 0


def _signing(args: argparse.Namespace) -> Signing | None:
    """--sign-gpg KEY and --sign-cms CERT,KEY."""
    import os  # noqa: PLC0415
    from pathlib import Path  # noqa: PLC0415

    from archiso_hook.build.imagesums import Signing  # noqa: PLC0415

    if args.sign_gpg is None and args.sign_cms is None:
        return None
    cms = None
    if args.sign_cms is not None:
        cert, comma, key = args.sign_cms.partition(",")
        if not comma or not cert or not key:
            raise InputError(f"--sign-cms {args.sign_cms}: expected CERT,KEY")
        for path in (cert, key):
            if not os.path.isfile(path):
                raise InputError(f"--sign-cms: {path} is not a file")
        cms = (Path(cert), Path(key))
    return Signing(gpg_key=args.sign_gpg, cms=cms)


def _boot_spec(spec: str) -> tuple[str, tuple[Path, Path]]:
    """`ARCH=KERNEL,INITRAMFS` of --boot."""
    from pathlib import Path  # noqa: PLC0415

    arch, sep, files = spec.partition("=")
    kernel, comma, initramfs = files.rpartition(",")
    if not sep or not comma or not kernel or not initramfs:
        raise InputError(f"--boot {spec}: expected ARCH=KERNEL,INITRAMFS")
    return arch, (Path(kernel), Path(initramfs))


def _transfer_urls(args: argparse.Namespace, log: Log) -> int:
    """Download URLs with the boot's HTTP engine: one line per failure, exit 1 if any."""
    import os  # noqa: PLC0415
    import time  # noqa: PLC0415

    from archiso_hook.boot import httpfetch  # noqa: PLC0415
    from archiso_hook.sizes import human  # noqa: PLC0415

    if not all("://" in image for image in args.images):
        raise InputError("give either files on this machine or URLs, not both")
    if args.to is None:
        raise InputError("URLs need --to DIR: the directory to download them into")
    if args.timeout is not None and args.timeout <= 0:
        raise InputError(f"--timeout {args.timeout:g} is not valid: expected seconds above 0")
    os.makedirs(args.to, exist_ok=True)
    start = time.monotonic()
    total = failed = 0
    for url in args.images:
        name = os.path.basename(url.split("?", 1)[0].rstrip("/"))
        try:
            got = httpfetch.fetch_checked(
                url,
                os.path.join(args.to, name),
                log,
                checksum="required" if args.verify else "no",
                deadline=args.timeout,
                required_by="--verify",
            )
        except httpfetch.FetchError as e:
            log.error(printable(str(e)))
            failed += 1
            continue
        except httpfetch.NotFoundError:
            log.error(f"{url} is not on the server (HTTP 404)")
            failed += 1
            continue
        total += got.size
    seconds = time.monotonic() - start
    done = len(args.images) - failed
    print(
        f"fetched: {done} of {len(args.images)} file(s), {total} bytes in {seconds:.3f} s "
        f"({human(total / seconds if seconds else 0)}/s)"
        + ("; checksums match" if args.verify and not failed else "")
    )
    return 1 if failed else 0


def boot_log() -> Log:
    """The log of a command run at boot or shutdown: to the kernel log too, and honouring
    quiet and rd.debug (read leniently: a bad archiso parameter is mount's to report)."""
    from archiso_hook.cmdline import split_cmdline  # noqa: PLC0415
    from archiso_hook.log import Log  # noqa: PLC0415

    try:
        words = {key: value for key, value in split_cmdline(read_cmdline())}
    except HookError:
        words = {}
    quiet = "quiet" in words and words["quiet"] in (None, "y", "yes", "1")
    return Log(kmsg=True, quiet=quiet, debug="rd.debug" in words)


def cmd_watch(args: argparse.Namespace) -> int:
    from archiso_hook.live import watch  # noqa: PLC0415

    return watch.run_foreground(boot_log(), args.interval)


def cmd_handoff(args: argparse.Namespace) -> int:
    from archiso_hook.live import handoff  # noqa: PLC0415

    return handoff.run(boot_log())


def cmd_shutdown(args: argparse.Namespace) -> int:
    from archiso_hook.live import shutdown  # noqa: PLC0415

    return shutdown.run(args.verb, boot_log())


def cmd_transfer(args: argparse.Namespace) -> int:
    import os  # noqa: PLC0415
    import time  # noqa: PLC0415

    from archiso_hook import checksums  # noqa: PLC0415
    from archiso_hook.boot import transfer  # noqa: PLC0415
    from archiso_hook.log import Log  # noqa: PLC0415
    from archiso_hook.sizes import human  # noqa: PLC0415

    log = Log(quiet=args.quiet)
    if any("://" in image for image in args.images):
        return _transfer_urls(args, log)
    if args.timeout is not None:
        raise InputError("--timeout is for URLs: a file on this machine is read as it is")
    expected = []
    if args.verify:
        for image in args.images:
            arches = checksums.arches_of(image)
            source = checksums.find(image, arches)
            if source is None:
                raise HookError(
                    f"{image} has no checksum: {checksums.describe_sources(image, arches)}"
                )
            with open(source.path, encoding="utf-8", errors="replace") as f:
                expected.append(checksums.parse_source(f.read(), source))
    jobs = [
        transfer.Job(
            image,
            os.path.join(args.to, os.path.basename(image)) if args.to else None,
            expected[i].algorithm if expected else None,
        )
        for i, image in enumerate(args.images)
    ]
    total = sum(os.stat(image).st_size for image in args.images)
    what = " and ".join(w for w, on in (("copying", args.to), ("verifying", args.verify)) if on)
    start = time.monotonic()
    results = transfer.run(jobs, progress=transfer.Progress(what or "reading", total, log.progress))
    seconds = time.monotonic() - start
    bad = [(r, e) for r, e in zip(results, expected, strict=False) if r.digest != e.digest]
    for result, want in bad:
        log.error(
            f"{result.job.source} is corrupt: its {want.algorithm} is {result.digest}, "
            f"but {want.source} says {want.digest}"
        )
    print(
        f"{what or 'read'}: {len(jobs)} image(s), {total} bytes in {seconds:.3f} s "
        f"({human(total / seconds if seconds else 0)}/s){'; checksums match' * (not bad)}"
    )
    return 1 if bad else 0


def build_parser() -> argparse.ArgumentParser:
    import argparse  # noqa: PLC0415  (never on a boot's path: see boot_command)

    class _Formatter(argparse.HelpFormatter):
        """Text laid out by hand (examples) is kept as it is; the rest is wrapped."""

        def _fill_text(self, text: str, width: int, indent: str) -> str:
            if "\n" in text:
                return "".join(indent + line for line in text.splitlines(keepends=True))
            return super()._fill_text(text, width, indent)

    class _Parser(argparse.ArgumentParser):
        def error(self, message: str) -> NoReturn:
            """Bad usage is bad input: one line and exit 2, like every other input error."""
            self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")

    parser = _Parser(
        prog="archiso-hook",
        description="Early-userspace boot hook for archiso-style live media: finds the medium,\n"
        "mounts the images listed in its aitab (squashfs, or filesystem images under a\n"
        "device-mapper snapshot whose writes go to RAM) as the new root.",
        epilog=EPILOG,
        formatter_class=_Formatter,
    )
    parser.add_argument("--version", action="version", version=f"archiso-hook {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    def add(
        name: str, func: Callable[[argparse.Namespace], int], help_: str, epilog: str
    ) -> argparse.ArgumentParser:
        p = sub.add_parser(
            name,
            help=help_,
            description=help_.replace("%%", "%"),  # help= is %-formatted, description= not
            epilog=epilog,
            formatter_class=_Formatter,
        )
        p.set_defaults(func=func)
        return p

    p = add(
        "plan",
        cmd_plan,
        "print the steps a boot would take (a dry run; no root needed)",
        EPILOG_PLAN,
    )
    p.add_argument("--cmdline", help="kernel command line (default: /proc/cmdline)")
    p.add_argument("--aitab", required=True, help="the aitab file to plan from")
    p.add_argument(
        "--arch",
        help="the machine to plan for (default: this one); the command "
        "line's arch= still wins, as at boot",
    )
    p.add_argument("--newroot", default="/new_root", help="where the new root is mounted")
    p.add_argument("--json", action="store_true", help="print the plan as JSON")

    p = add(
        "mount",
        cmd_mount,
        "mount the live root at NEWROOT (run by the initramfs hook)",
        EPILOG_MOUNT,
    )
    p.add_argument("newroot", metavar="NEWROOT")
    p.add_argument(
        "set",
        nargs="*",
        metavar="KEY=VALUE",
        help="kernel parameters that replace those of /proc/cmdline for this attempt "
        "(to correct one from the emergency shell)",
    )

    p = add(
        "status",
        cmd_status,
        "show the loop devices, snapshots, mounts and COW files the "
        "hook set up, checked against the kernel",
        EPILOG_STATUS,
    )
    p.add_argument("--json", action="store_true", help="print as JSON")
    p.add_argument("--state", default=STATE_FILE, help=argparse.SUPPRESS)

    p = add(
        "watch",
        cmd_watch,
        "watch the snapshots' COW use: warn at 80/90/95 %% of what it can reach, and grow "
        "a COW in RAM before it fills (started by 'handoff')",
        EPILOG_WATCH,
    )
    p.add_argument("--foreground", action="store_true", help=argparse.SUPPRESS)
    p.add_argument(
        "--interval",
        type=float,
        default=WATCH_INTERVAL,
        metavar="SECONDS",
        help="how often to look, besides device-mapper events (default 0.25)",
    )

    p = add(
        "handoff",
        cmd_handoff,
        "just before switch_root: copy the initramfs to /run/initramfs for the shutdown, and "
        "start the watchdog from that copy (the hook's cleanup runs it)",
        EPILOG_HANDOFF,
    )

    p = add(
        "shutdown",
        cmd_shutdown,
        "at power-off, from the initramfs copy in /run/initramfs: unmount /oldroot, remove "
        "the snapshots and detach the loop devices, then power off, reboot or halt",
        EPILOG_SHUTDOWN,
    )
    p.add_argument("verb", nargs="?", default="poweroff", choices=list(SHUTDOWN_VERBS))

    p = add(
        "transfer",
        cmd_transfer,
        "read images once, copying them and/or checking them against their .sha512 (or "
        ".md5) files, with the engine copytoram= and checksum= use at boot; or download "
        "URLs with the engine of archiso_http_srv=, checksum files beside them",
        EPILOG_TRANSFER,
    )
    p.add_argument("images", nargs="+", metavar="IMAGE|URL")
    p.add_argument("--to", metavar="DIR", help="copy the images (download the URLs) here")
    p.add_argument(
        "--verify",
        action="store_true",
        help="check them against their checksums (beside each file, or each URL)",
    )
    p.add_argument(
        "--timeout",
        type=float,
        metavar="SECONDS",
        help="URLs: give up on a file not complete after this long",
    )
    p.add_argument("--quiet", action="store_true", help="no progress lines")

    p = add(
        "build",
        cmd_build,
        "build the images of an aitab from directories, and an ISO",
        EPILOG_BUILD,
    )
    p.add_argument("--aitab", required=True, help="the aitab describing the images")
    p.add_argument(
        "--src",
        required=True,
        help="directory with one source directory per image: SRC/<arch>/<img> or SRC/<img>",
    )
    p.add_argument("--out", required=True, help="where to lay out <basedir>/<arch>/ images")
    p.add_argument("--basedir", default="arch", help="directory on the medium (default: arch)")
    p.add_argument(
        "--sign-gpg",
        metavar="KEY",
        help="sign each image with this GnuPG key (GNUPGHOME): <image>.sig, for verify=y",
    )
    p.add_argument(
        "--sign-cms",
        metavar="CERT,KEY",
        help="sign each image with this code-signing certificate and key (PEM): "
        "<image>.cms.sig, for cms_verify=y",
    )
    p.add_argument(
        "--checksum-layout",
        choices=("image", "archiso-2011"),
        default="image",
        help="image: a <image>.sha512 beside each image (default); archiso-2011: one "
        "<basedir>/checksum.<arch>.md5 listing the aitab and the images, as archiso's "
        "media of 2011-2014 (checksum=y reads both)",
    )
    p.add_argument(
        "--arch", action="append", help="build only this architecture's images (repeatable)"
    )
    p.add_argument("--iso", help="also write an ISO 9660 image of OUT here")
    p.add_argument("--label", help="the ISO's volume label (archisolabel=)")
    g = p.add_argument_group(
        "booting the medium",
        "An ISO boots by itself: BIOS (isolinux) and UEFI (GRUB), as a CD and from a USB "
        "stick, with a menu per architecture and a copy-to-RAM entry. Each architecture "
        "of the aitab needs its kernel and an initramfs built with HOOKS=(base udev "
        "archiso): given with --boot, or found in its root image's source "
        "(boot/vmlinuz-linux with boot/initramfs-linux.img). They go to "
        "<basedir>/boot/<arch>/vmlinuz and archiso.img.",
    )
    g.add_argument(
        "--boot",
        action="append",
        metavar="ARCH=KERNEL,INITRAMFS",
        help="the kernel and initramfs of this architecture (repeatable)",
    )
    g.add_argument(
        "--no-boot",
        action="store_true",
        help="no kernel and no boot loader: the images only, for PXE or QEMU's -kernel",
    )
    g.add_argument("--title", default="Live system", help="the menu's name of the system")
    g.add_argument(
        "--append",
        default="",
        metavar="PARAMETERS",
        help="kernel parameters added to every entry (cow_spacesize=1G quiet, ...)",
    )
    g.add_argument(
        "--serial",
        action="store_true",
        help="menus and console on the serial port ttyS0 (115200 baud) too",
    )
    g.add_argument(
        "--timeout",
        type=int,
        default=5,
        metavar="SECONDS",
        help="the menu boots its default entry after this long; 0: at once (default: 5)",
    )
    return parser


SHUTDOWN_VERBS = ("poweroff", "reboot", "halt", "kexec")


def boot_command(argv: Sequence[str]) -> Callable[[], int] | None:
    """The commands a boot runs, as the hooks run them, read without argparse (whose
    import every boot would pay for arguments always given the same way); None for
    anything else, which the full parser reads (with --help and its errors)."""
    match list(argv):
        case ["mount", newroot, *overrides] if not newroot.startswith("-") and all(
            "=" in word and not word.startswith("-") for word in overrides
        ):
            from archiso_hook.bootcmd import mount  # noqa: PLC0415

            return lambda: mount(newroot, overrides)
        case ["handoff"]:
            from archiso_hook.live import handoff  # noqa: PLC0415

            return lambda: handoff.run(boot_log())
        case ["shutdown", *verbs] if len(verbs) <= 1 and set(verbs) <= set(SHUTDOWN_VERBS):
            from archiso_hook.live import shutdown  # noqa: PLC0415

            verb = verbs[0] if verbs else "poweroff"
            return lambda: shutdown.run(verb, boot_log())
        case ["watch", "--foreground"]:
            from archiso_hook.live import watch  # noqa: PLC0415

            return lambda: watch.run_foreground(boot_log(), WATCH_INTERVAL)
    return None


WATCH_INTERVAL = 0.25  # seconds, `watch --interval`'s default


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    command = boot_command(argv)
    if command is None:
        args = build_parser().parse_args(argv)
        command = lambda: args.func(args)  # noqa: E731
    try:
        return int(command())
    except HookError as e:
        print(f"archiso-hook: error: {printable(str(e))}", file=sys.stderr)
        return exit_code(e)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # the reader went away (`plan | head`): nothing to report
        import os  # noqa: PLC0415

        # What is still buffered for stdout must not fail again when Python exits.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # as a shell reports a command ended by SIGPIPE
    except Exception as e:  # noqa: BLE001
        print(
            f"archiso-hook: internal error: {type(e).__name__}: {e} (please report it)",
            file=sys.stderr,
        )
        return 1
