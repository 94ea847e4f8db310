"""`archiso-hook status`: what the boot set up, checked against the kernel."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from archiso_hook.live import status

if TYPE_CHECKING:
    import argparse


def run(args: argparse.Namespace) -> int:
    report = status.collect(args.state)

    print(json.dumps(report, indent=2) if args.json else status.format_text(report))
    return 0
