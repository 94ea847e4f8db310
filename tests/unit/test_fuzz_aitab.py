"""Property tests of aitab files: valid tables parse to their entries; any text, any
bytes, aitab's own words in any order and valid tables changed in one line give
entries consistent with the file or one InputError at a real line (`FILE:LINE:`)
naming a field."""

from __future__ import annotations

import re

import pytest
from hypothesis import example, given, note
from hypothesis import strategies as st

from archiso_hook.aitab import ARCHES, COMPRESSIONS, FILESYSTEMS, AitabEntry, ImageType, parse_aitab
from archiso_hook.errors import InputError
from archiso_hook.sizes import Size
from tests.unit.strategies import (
    ANY_CHAR,
    ANY_TEXT,
    HUGE,
    SOURCE,
    Table,
    aitab_tables,
    assert_no_internal_repr,
    counted,
    surrogateescaped,
    trim_mount,
)

pytestmark = pytest.mark.usefixtures("fuzz_tally")


def _words(line: str) -> list[str]:
    words = line.split()
    for i, word in enumerate(words):
        if word.startswith("#"):
            return words[:i]
    return words


AITAB_ERROR = re.compile(
    r"(?:field (?:img|mnt|arch|sfs_comp|fs_type|fs_size): |missing field|\d+ fields, expected 6"
    r"|sfs_comp and fs_type are both none)"
)


def check_aitab(text: str, lines: range | None = None) -> list[AitabEntry] | None:
    """parse_aitab: entries consistent with their files, or an InputError at a real line
    (within `lines`, 1-based, when only those were changed), naming a field."""
    try:
        entries = parse_aitab(text, SOURCE)
    except InputError as e:
        message = str(e)
        match = re.match(rf"{SOURCE}:([0-9]+): (.*)", message, re.DOTALL)
        assert match, message
        number = int(match[1])
        text_lines = text.split("\n")
        assert 1 <= number <= len(text_lines), message
        assert _words(text_lines[number - 1]), (message, text_lines[number - 1])
        assert AITAB_ERROR.match(match[2]), message
        assert_no_internal_repr(message, *text.split())
        if lines is not None:
            cited = [number] + [int(n) for n in re.findall(r"of line ([0-9]+)", message)]
            assert any(n in lines for n in cited), (message, lines)
        return None
    text_lines = text.split("\n")
    for entry in entries:
        assert 1 <= entry.line <= len(text_lines), entry
        words = _words(text_lines[entry.line - 1])
        assert words[0] == entry.name and trim_mount(words[1]) == entry.mount, (entry, words)
        suffix = {ImageType.SFS: "sfs", ImageType.FS: "fs", ImageType.FS_SFS: "fs.sfs"}
        assert entry.filename == f"{entry.name}.{suffix[entry.type]}"
        assert (entry.type is ImageType.SFS) == (entry.fs_type is None)
        assert (entry.type is ImageType.FS) == (entry.sfs_comp is None)
        assert entry.type.snapshot == (entry.fs_type is not None)
        assert (entry.fs_size is None) == (entry.fs_type is None)
    for i, entry in enumerate(entries):  # one boot: one arch and `any`
        for other in entries[i + 1 :]:
            if "any" in (entry.arch, other.arch) or entry.arch == other.arch:
                assert entry.name != other.name and entry.mount != other.mount, (entry, other)
    return entries


ROOT_AT_2 = AitabEntry("root", "/", "x86_64", "xz", "ext4", Size(50, percent=True), line=2)


@given(aitab_tables())
@example(Table([], [], [ROOT_AT_2], "\n", "# a comment\x0c\nroot / x86_64 xz ext4 50%\n"))
@counted
def test_valid_aitab_tables_parse_to_their_entries(table: Table) -> None:
    assert check_aitab(table.text) == table.entries


@given(ANY_TEXT | st.binary(max_size=120).map(surrogateescaped))
@example("root / x86_64 xz ext4 ²%")  # str.isdigit() says yes, int() says no
@example("root / x86_64 xz ext4 " + "9" * 5000)
@example("# comment\u2028\nroot / x86_64 xz ext4 0")  # the error is on line 2, not 3
@example("\x0b\x00")  # found by fuzzing: an error on line 2 of a one-line file
@counted
def test_parse_aitab_on_any_text(text: str) -> None:
    check_aitab(text)


AITAB_TOKENS = st.sampled_from(
    [*ARCHES, *COMPRESSIONS, *FILESYSTEMS, "none", "/", "/usr", "root", "50%", "0", "-", "64",
     "#", " ", "\t", "\n", "\r\n", "\x0c", "\u2028", "\x85", "..", "//", "%", "²"]
) | ANY_TEXT  # fmt: skip


@given(st.lists(AITAB_TOKENS, max_size=40).map("".join))
@counted
def test_parse_aitab_on_its_words_in_any_order(text: str) -> None:
    check_aitab(text)


def _field_garbage(index: int) -> st.SearchStrategy[str]:
    near = [
        # img
        [".hidden", "a/b", "x" * 65, "é", "a\udcff", "-", "#x", "root-image.fs"],
        # mnt
        ["/a/../b", "//a", "/a//b", "/.", "/a/.", "a", "/..", "/a\x00", "/é", "/a\x7f", "~"],
        ["amd64", "ANY", "i386", "x86-64"],
        ["xz2", "XZ", "bzip2", "none ", "lzma"],
        ["ext9", "EXT4", "vfat", "squashfs"],
        ["0%", "100%", "-1", "1e3", "16777217", "50%%", "%", "0", "-", "١٢", "²", "0x10"],
    ][min(index, 5)]
    return st.sampled_from(near) | HUGE | ANY_TEXT.filter(bool)


AITAB_MUTATIONS = ("field", "drop", "add", "char", "hash", "none none", "duplicate", "steal",
                   "join", "size")  # fmt: skip


@st.composite
def mutated_aitabs(draw: st.DrawFn) -> tuple[str, range]:
    """A valid table with one image line changed; the (1-based) lines that changed."""
    table = draw(aitab_tables().filter(lambda t: bool(t.rows)))
    i = draw(st.integers(0, len(table.rows) - 1))
    row = table.rows[i]
    line = table.lines[row]
    fields = _words(line)
    how = draw(st.sampled_from(AITAB_MUTATIONS))
    at = draw(st.integers(0, len(fields) - 1))
    note(f"mutation: {how} of field {at} of {line!r}")
    stop = row + 1
    if how == "field":
        fields[at] = draw(_field_garbage(at))
        new = [" ".join(fields)]
    elif how == "drop":
        new = [" ".join(fields[:at] + fields[at + 1 :])]
    elif how == "add":
        new = [" ".join([*fields[:at], draw(_field_garbage(at)), *fields[at:]])]
    elif how == "char":
        pos = draw(st.integers(0, len(line)))
        new = (line[:pos] + draw(ANY_CHAR) + line[pos + draw(st.integers(0, 1)) :]).split("\n")
    elif how == "hash":
        pos = draw(st.integers(0, len(fields[at])))
        fields[at] = fields[at][:pos] + "#" + fields[at][pos:]
        new = [" ".join(fields)]
    elif how == "none none":
        new = [" ".join([*fields[:3], "none", "none", *fields[5:]])]
    elif how == "duplicate":
        new = [line, line]
    elif how == "steal":  # the name or mount point of another line
        other = _words(table.lines[draw(st.sampled_from(table.rows))])
        fields[at % 2] = other[at % 2]
        new = [" ".join(fields)]
    elif how == "join":  # a line break the aitab format does not know
        sep = draw(st.sampled_from([" ", "\t", "\x0c", "\v", "\x1c", "\x1e", "\x85", "\u2028"]))
        stop = min(row + 2, len(table.lines))
        new = [sep.join(table.lines[row:stop])]
    else:  # size
        new = [" ".join([*fields[:5], draw(_field_garbage(5))])]
    new = [piece for text in new for piece in text.split("\n")]
    lines = table.lines[:row] + new + table.lines[stop:]
    text = table.newline.join(lines) + table.newline
    return text, range(row + 1, row + 1 + len(new))


@given(mutated_aitabs())
@counted
def test_parse_aitab_on_mutated_tables(case: tuple[str, range]) -> None:
    text, changed = case
    check_aitab(text, changed)
