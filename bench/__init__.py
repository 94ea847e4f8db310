"""`make bench`: figures measured in QEMU guests, always as ratios to a baseline measured
in the same boot, or as medians (these machines are noisy)."""

import sys
from pathlib import Path


def publish(text: str, out: Path) -> None:
    """A bench's results: on stdout, and into `out` (bench/results/<bench>.txt)."""
    print(text, end="")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(f"bench: written to {out}", file=sys.stderr, flush=True)
