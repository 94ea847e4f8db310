"""archiso-hook's command line: every command, its options and help (argparse). Each
command's work is a function of archiso_hook.commands, imported only when it runs; the
commands a boot runs are read without argparse first (bootcmd)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from functools import partial
from typing import NoReturn

from archiso_hook import __version__
from archiso_hook.bootcmd import SHUTDOWN_VERBS, WATCH_INTERVAL, boot_command, run_guarded
from archiso_hook.lazy import function
from archiso_hook.paths import STATE_FILE

EPILOG_PLAN = """example:
  archiso-hook plan --aitab aitab --cmdline 'archisolabel=ARCH_2026 copytoram=y'
"""
EPILOG_PARAMETERS = """examples:
  archiso-hook parameters            (what mkinitcpio -H archiso prints too)
  archiso-hook parameters --markdown (README's table)
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


def build_parser() -> argparse.ArgumentParser:
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
    sub = parser.add_subparsers(
        dest="command", required=True, parser_class=_Parser, metavar="COMMAND"
    )

    def add(name: str, run: str, help_: str, epilog: str) -> argparse.ArgumentParser:
        """A command; `run`: its function, "module:function", imported when it runs."""
        p = sub.add_parser(
            name,
            help=help_,
            description=help_.replace("%%", "%"),  # help= is %-formatted, description= not
            epilog=epilog,
            formatter_class=_Formatter,
        )
        p.set_defaults(run=run)
        return p

    p = add(
        "plan",
        "archiso_hook.commands.plan:run",
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
        "parameters",
        "archiso_hook.commands.plan:parameters",
        "list the kernel parameters the hook reads: accepted values, defaults, meaning",
        EPILOG_PARAMETERS,
    )
    fmt = p.add_mutually_exclusive_group()
    fmt.add_argument("--text", action="store_true", help="for a terminal, 80 columns (default)")
    fmt.add_argument("--markdown", action="store_true", help="as a markdown table")

    p = add(
        "mount",
        "archiso_hook.commands.mount:run",
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
        "archiso_hook.commands.status:run",
        "show the loop devices, snapshots, mounts and COW files the "
        "hook set up, checked against the kernel",
        EPILOG_STATUS,
    )
    p.add_argument("--json", action="store_true", help="print as JSON")
    p.add_argument("--state", default=STATE_FILE, help=argparse.SUPPRESS)

    p = add(
        "watch",
        "archiso_hook.commands.live:run_watch",
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
        "archiso_hook.commands.live:run_handoff",
        "just before switch_root: copy the initramfs to /run/initramfs for the shutdown, and "
        "start the watchdog from that copy (the hook's cleanup runs it)",
        EPILOG_HANDOFF,
    )

    p = add(
        "shutdown",
        "archiso_hook.commands.live:run_shutdown",
        "at power-off, from the initramfs copy in /run/initramfs: unmount /oldroot, remove "
        "the snapshots and detach the loop devices, then power off, reboot or halt",
        EPILOG_SHUTDOWN,
    )
    p.add_argument("verb", nargs="?", default="poweroff", choices=list(SHUTDOWN_VERBS))

    p = add(
        "transfer",
        "archiso_hook.commands.transfer:run",
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
        "archiso_hook.commands.build:run",
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


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    command = boot_command(argv)
    if command is None:
        args = build_parser().parse_args(argv)
        command = partial(function(args.run), args)
    return run_guarded(command)
