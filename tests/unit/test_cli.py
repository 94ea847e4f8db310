"""The command line as a user meets it: exit codes, one-line errors, no tracebacks."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from archiso_hook.cli import build_parser

AITAB = "root / x86_64 xz ext4 50%\nshare /usr/share any xz none 0\n"


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "archiso_hook", *args], capture_output=True, text=True, check=False
    )


def test_plan_prints_the_steps(tmp_path: Path) -> None:
    (tmp_path / "aitab").write_text(AITAB)
    result = run(
        "plan",
        "--cmdline",
        "archisolabel=LIVE",
        "--aitab",
        str(tmp_path / "aitab"),
        "--arch",
        "x86_64",
    )
    assert result.returncode == 0, result.stderr
    assert "wait up to 30 s for the boot medium /dev/disk/by-label/LIVE" in result.stdout
    assert "create /dev/mapper/arch_root" in result.stdout


def test_plan_json(tmp_path: Path) -> None:
    (tmp_path / "aitab").write_text(AITAB)
    (tmp_path / "aitab").write_text("root32 / i686 gzip ext4 50%\n" + AITAB)
    result = run(
        "plan",
        "--cmdline",
        "archisolabel=LIVE arch=i686",
        "--aitab",
        str(tmp_path / "aitab"),
        "--json",
    )
    data = json.loads(result.stdout)
    assert data["options"]["arch"] == "i686"  # the command line's arch= wins over the machine
    assert [i["name"] for i in data["images"]] == ["root32", "share"]


def test_bad_input_is_one_line_and_exit_2(tmp_path: Path) -> None:
    (tmp_path / "aitab").write_text("root / x86_64 xz ext9 50%\n")
    cases = [
        ("plan", "--cmdline", "archisolabel=L", "--aitab", str(tmp_path / "aitab")),
        (
            "plan",
            "--cmdline",
            "archisolabel=L cow_persistent=Q",
            "--aitab",
            str(tmp_path / "aitab"),
        ),
        ("plan", "--aitab", str(tmp_path / "missing")),
        ("plan",),
        ("frobnicate",),
    ]
    for args in cases:
        result = run(*args)
        assert result.returncode == 2, args
        assert result.stderr.count("\n") == 1, result.stderr
        assert "Traceback" not in result.stderr
        assert result.stderr.startswith("archiso-hook"), result.stderr
    assert f"{tmp_path}/aitab:1: field fs_type: unknown filesystem 'ext9'" in run(*cases[0]).stderr


def test_help_of_every_command_says_what_it_does_with_an_example_in_80_columns() -> None:
    parser = build_parser()
    (subcommands,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    assert set(subcommands.choices) >= {"plan", "mount", "status", "build", "transfer", "watch"}
    for command in ["", *subcommands.choices]:
        result = subprocess.run(
            [sys.executable, "-m", "archiso_hook", *([command] if command else []), "--help"],
            capture_output=True,
            text=True,
            check=False,
            env={**os.environ, "COLUMNS": "80"},
        )
        assert result.returncode == 0, command
        text = result.stdout
        description = text.split("\n\n")[1]
        assert len(description) > 40 and "%%" not in text, command  # says what it does
        assert "example" in text, command
        example = text[text.index("example") :]
        assert f"  archiso-hook {command}" in example, command  # ... showing that command
        assert [line for line in text.splitlines() if len(line) > 80] == [], command


def test_an_error_stays_one_line_whatever_the_value_holds(tmp_path: Path) -> None:
    (tmp_path / "aitab").write_text(AITAB)
    result = run(
        "plan",
        "--cmdline",
        'archisolabel=L cow_chunksize="7\n\x1b[2J"',
        "--aitab",
        str(tmp_path / "aitab"),
    )
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "\x1b" not in result.stderr
    assert "cow_chunksize=7\\n\\x1b[2J is not valid" in result.stderr


def test_a_reader_that_goes_away_is_not_an_error(tmp_path: Path) -> None:
    """`archiso-hook plan | head`: stdout is a pipe whose reader has gone."""
    aitab = tmp_path / "aitab"
    aitab.write_text("root / x86_64 xz ext4 50%\n")
    read_end, write_end = os.pipe()
    os.close(read_end)  # gone before the first byte: every write fails with EPIPE
    try:
        result = subprocess.run(
            [sys.executable, "-m", "archiso_hook", "plan", "--aitab", str(aitab),
             "--cmdline", "archisolabel=A"],
            stdout=write_end, stderr=subprocess.PIPE, text=True, check=False,
        )  # fmt: skip
    finally:
        os.close(write_end)
    assert result.stderr == ""  # no `internal error: BrokenPipeError`
    assert result.returncode == 141
