"""The kernel parameters' reference, generated from cmdline.PARAMETERS (paramdoc): README's
section is the generator's output, and what it says agrees with what the parser does."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from archiso_hook import cmdline, paramdoc
from archiso_hook.cmdline import Arch
from archiso_hook.options import Options, parse_options

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"
REGENERATE = ".venv/bin/python -m archiso_hook.paramdoc README.md"


def readme_section() -> str:
    text = README.read_text(encoding="utf-8")
    _, begin, rest = text.partition(paramdoc.BEGIN + "\n")
    section, end, _ = rest.partition(paramdoc.END)
    assert begin and end, f"README.md has no {paramdoc.BEGIN!r} ... {paramdoc.END!r} section"
    return section


def test_readme_holds_the_generated_reference() -> None:
    assert readme_section() == paramdoc.markdown(), (
        f"README.md's parameters differ from archiso_hook/cmdline.py's: run {REGENERATE}"
    )


def test_readme_has_a_row_for_every_parameter_and_every_old_one() -> None:
    rows = {m for line in readme_section().splitlines() if line.startswith("| `")
            for m in re.findall(r"`([A-Za-z_.]+)`", line.split(" | ")[0])}  # fmt: skip
    names = {p.name for p in cmdline.PARAMETERS} | {"rd.debug"}
    old = set(cmdline.ALIASES) | set(cmdline.RENAMED) | set(cmdline.OBSOLETE)
    assert names - rows == set()
    assert (old | cmdline.NOT_YET_SUPPORTED) - rows == set()


def unescaped_bars(line: str) -> int:
    return len(re.findall(r"(?<!\\)\|", line))


def test_every_row_has_its_cells_whatever_the_texts_hold() -> None:
    """A | in a text (N | P) is escaped; a <...> is no HTML tag outside code."""
    table = [line for line in paramdoc.markdown().splitlines() if line.startswith("|")]
    assert len(table) == 2 + len(paramdoc.documented()) + 2 + len(paramdoc.old_names())
    widths = {unescaped_bars(line) for line in table}
    assert widths == {6, 4}
    for line in table:
        outside_code = re.sub(r"`[^`]*`", "", line)
        assert "<" not in outside_code and ">" not in outside_code, line


def test_documented_defaults_are_the_parser_s() -> None:
    """Where the default is a value, the parser given that value gives the default."""
    defaults = Options(arch=Arch.X86_64)
    checked = []
    for p in cmdline.PARAMETERS:
        if not p.default or " " in p.default or "<" in p.default or p.default == "defaults":
            continue
        assert p.parse(p.default) == getattr(defaults, p.field), p.name
        checked.append(p.name)
    assert {"archisobasedir", "cow_spacesize", "rootdelay", "copy_resolvconf"} <= set(checked)
    assert parse_options("", machine_arch=Arch.X86_64) == defaults


def test_every_old_name_has_its_history() -> None:
    assert [name for name, _, when in paramdoc.old_names() if not when] == []
    assert set(paramdoc.OLD_HISTORY) == {name for name, _, _ in paramdoc.old_names()}


def test_the_text_fits_80_columns_and_names_each_parameter_first_on_its_line() -> None:
    lines = paramdoc.text().splitlines()
    assert [line for line in lines if len(line) > 80] == []
    for p in paramdoc.documented():
        assert any(line.startswith(f"  {p.name}  ") for line in lines), p.name


@pytest.mark.parametrize(("args", "expected"), [([], paramdoc.text), (["--text"], paramdoc.text),
                                                (["--markdown"], paramdoc.markdown)])  # fmt: skip
def test_the_command_prints_the_reference(args: list[str], expected: object) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "archiso_hook", "parameters", *args],
        capture_output=True,
        text=True,
        check=True,
    )
    assert callable(expected) and result.stdout == expected()


def test_regenerating_rewrites_only_the_section(tmp_path: Path) -> None:
    doc = tmp_path / "README.md"
    doc.write_text(f"# x\n\n{paramdoc.BEGIN}\nstale\n{paramdoc.END}\n\nafter\n")
    assert paramdoc.main([str(doc)]) == 0
    assert (
        doc.read_text()
        == f"# x\n\n{paramdoc.BEGIN}\n{paramdoc.markdown()}{paramdoc.END}\n\nafter\n"
    )
    doc.write_text("no markers\n")
    with pytest.raises(ValueError, match="no section between"):
        paramdoc.main([str(doc)])
