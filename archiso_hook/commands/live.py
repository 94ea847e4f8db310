"""The live system's commands as the full command line reads them (`watch`, `handoff`,
`shutdown`); at boot and shutdown the same run from bootcmd, without argparse."""

from __future__ import annotations

from typing import TYPE_CHECKING

from archiso_hook.bootcmd import boot_log
from archiso_hook.live import handoff, shutdown, watch

if TYPE_CHECKING:
    import argparse


def run_watch(args: argparse.Namespace) -> int:
    return watch.run_foreground(boot_log(), args.interval)


def run_handoff(args: argparse.Namespace) -> int:
    return handoff.run(boot_log())


def run_shutdown(args: argparse.Namespace) -> int:
    return shutdown.run(args.verb, boot_log())
