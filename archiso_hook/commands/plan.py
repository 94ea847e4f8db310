"""`archiso-hook plan` and `archiso-hook parameters`: what a boot would do, and what it reads."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from archiso_hook import paramdoc
from archiso_hook.aitab import parse_aitab
from archiso_hook.bootcmd import read_cmdline
from archiso_hook.cmdline import Arch
from archiso_hook.errors import InputError
from archiso_hook.options import parse_options
from archiso_hook.plan import plan_boot

if TYPE_CHECKING:
    import argparse


def run(args: argparse.Namespace) -> int:
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
        print(json.dumps(plan.to_json(), indent=2))
    else:
        for warning in options.warnings:
            print(f"warning: {warning}")
        print(plan.describe())
    return 0


def parameters(args: argparse.Namespace) -> int:
    print(paramdoc.markdown() if args.markdown else paramdoc.text(), end="")
    return 0
