"""The kernel parameters' reference, generated from `cmdline.PARAMETERS`: one source for
README's table, `mkinitcpio -H archiso` and `archiso-hook parameters`.

Not on the boot path (only `archiso-hook parameters` imports it). README.md holds the
markdown between the two marker lines below; tests/unit/test_paramdoc.py fails when it
differs from `markdown()`, and `python -m archiso_hook.paramdoc README.md` rewrites it.
"""

from __future__ import annotations

import sys
import textwrap
from collections.abc import Iterable, Sequence

from archiso_hook import cmdline
from archiso_hook.cmdline import Parameter

BEGIN = "<!-- BEGIN parameters: generated, python -m archiso_hook.paramdoc README.md -->"
END = "<!-- END parameters -->"

# mkinitcpio's own, which the hook reads too (options.parse_options), outside PARAMETERS.
MKINITCPIO_PARAMETERS = (
    Parameter(
        "rd.debug", "debug", str, "bare word",
        "show each planned step, and the traceback of an internal error",
        default="n", since="mkinitcpio's own",
    ),
)  # fmt: skip

# When archiso had each of cmdline's old names (ALIASES, RENAMED, OBSOLETE, ...).
OLD_HISTORY = {
    "archiso_curl_url": "2011, renamed archiso_http_srv (dceb5a0)",
    "curlspace_size": "2011, renamed archiso_http_spc (dceb5a0)",
    "cowspace_size": "2011-2015: the size of the tmpfs",
    "cowfile_size": "2011-2015: the size of a COW file, at first a percentage",
    "aitab": "2011-2014: a file name, relative to archisobasedir from f097724",
    "archisoflags": "2015-12 to 2016-02: the medium's mount options, replaced by img_flags",
}


def documented() -> tuple[Parameter, ...]:
    return (*cmdline.PARAMETERS, *MKINITCPIO_PARAMETERS)


def old_names() -> list[tuple[str, str, str]]:
    """(old name, what the hook does with it, when archiso had it), for each old name."""
    rows = []
    for name, new in cmdline.ALIASES.items():
        rows.append((name, f"taken as {new}, with a warning to write that"))
    for name, new in cmdline.RENAMED.items():
        rows.append((name, f"a warning naming {new}, whose meaning differs"))
    for name, advice in cmdline.OBSOLETE.items():
        rows.append((name, f"a warning: {advice}"))
    for name in sorted(cmdline.NOT_YET_SUPPORTED):
        rows.append((name, "a warning: not supported by this version"))
    missing = [name for name, _ in rows if name not in OLD_HISTORY]
    if missing:
        raise ValueError(f"OLD_HISTORY says nothing of {', '.join(missing)}")
    return [(name, does, OLD_HISTORY[name]) for name, does in rows]


def _cell(text: str) -> str:
    """Plain text as a markdown table cell: <...> would be read as HTML, | ends the cell."""
    for char, escaped in (("&", "&amp;"), ("<", "&lt;"), (">", "&gt;"), ("|", "\\|"),
                          ("*", "\\*")):  # fmt: skip
        text = text.replace(char, escaped)
    return text


def _row(cells: Iterable[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def markdown() -> str:
    """README's section: the parameters, then archiso's old ones."""
    lines = [
        _row(["parameter", "default", "accepted values", "meaning", "archiso since"]),
        _row(["---"] * 5),
    ]
    for p in documented():
        if p.default and " " not in p.default:  # a value: as code (where < is no tag)
            default = f"`{p.default}`".replace("|", "\\|")
        else:
            default = _cell(p.default or "(none)")
        lines.append(
            _row([f"`{p.name}`", default, _cell(p.accepted), _cell(p.meaning), _cell(p.since)])
        )
    lines += [
        "",
        "Old archiso parameters are honoured under their new name, or warned about in the "
        "boot log (and by `archiso-hook plan`); none is dropped silently:",
        "",
        _row(["old parameter", "what the hook does", "archiso had it"]),
        _row(["---"] * 3),
    ]
    lines += [_row([f"`{name}`", _cell(does), _cell(when)]) for name, does, when in old_names()]
    return "\n".join(lines) + "\n"


def text(width: int = 79) -> str:
    """The same for a terminal: what `mkinitcpio -H archiso` prints, within `width`."""
    lines = ["Kernel parameters ([default]; the README has them as a table):"]
    wrap = textwrap.TextWrapper(width=width, initial_indent="  ", subsequent_indent="      ",
                                break_on_hyphens=False, break_long_words=False)  # fmt: skip
    more = textwrap.TextWrapper(width=width, initial_indent="      ",
                                subsequent_indent="      ", break_on_hyphens=False,
                                break_long_words=False)  # fmt: skip
    for p in documented():
        head = f"{p.name}  {p.accepted}"
        if p.default:
            head += f"  [{p.default}]"
        lines += wrap.wrap(head)
        lines += more.wrap(p.meaning)
    lines += ["", "Old archiso parameters:"]
    for name, does, _ in old_names():
        lines += wrap.wrap(f"{name}: {does}")
    return "\n".join(lines) + "\n"


def replace_section(document: str, section: str) -> str:
    """`document` with the text between BEGIN and END replaced by `section`."""
    head, begin, rest = document.partition(BEGIN + "\n")
    _, end, tail = rest.partition(END)
    if not (begin and end):
        raise ValueError(f"no section between {BEGIN!r} and {END!r}")
    return head + begin + section + end + tail


def main(argv: Sequence[str]) -> int:
    """`python -m archiso_hook.paramdoc FILE...`: rewrite each file's generated section."""
    for path in argv:
        with open(path, encoding="utf-8") as f:
            old = f.read()
        new = replace_section(old, markdown())
        if new != old:
            with open(path, "w", encoding="utf-8") as f:
                f.write(new)
            print(f"{path}: parameters updated")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
