"""Property tests of mount options (cow_flags=, img_flags=): flag words become flags,
the rest stays data, options that would change a mount's kind are refused."""

from __future__ import annotations

import functools

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from archiso_hook.errors import InputError
from archiso_hook.mountopts import MountOptions, parse_mount_options
from tests.unit.strategies import (
    ANY_TEXT,
    assert_no_internal_repr,
    chars_except,
    counted,
)

pytestmark = pytest.mark.usefixtures("fuzz_tally")


FLAGS = {"ro": 1, "rw": 1, "nosuid": 2, "suid": 2, "nodev": 4, "dev": 4, "noexec": 8, "exec": 8,
         "sync": 16, "async": 16, "dirsync": 128, "noatime": 1024, "atime": 1024,
         "nodiratime": 2048, "diratime": 2048, "relatime": 1 << 21, "norelatime": 1 << 21,
         "strictatime": 1 << 24, "nostrictatime": 1 << 24, "lazytime": 1 << 25,
         "nolazytime": 1 << 25}  # fmt: skip
IGNORED = {"defaults", "auto", "noauto", "user", "nouser", "users", "nofail", "_netdev", "owner",
           "group"}  # fmt: skip
REFUSED = {"remount", "bind", "rbind", "move", "make-private", "make-shared"}
OPTION_WORD = st.sampled_from(sorted(FLAGS.keys() | IGNORED | REFUSED)) | st.sampled_from(
    ["x-gvfs-show", "subvol=@cow", "uid=0", "", "a b", "a\tb", "é=ü", "x\x00", "data=ordered"]
) | st.text(chars_except(","), max_size=8)  # fmt: skip


@given(st.none() | ANY_TEXT | st.lists(OPTION_WORD, max_size=6).map(",".join),
       st.sampled_from(["cow_flags", "img_flags"]))  # fmt: skip
@example(",".join(sorted(FLAGS)), "cow_flags")  # every flag word once
@example(",".join(sorted(IGNORED)) + ",x-systemd.automount", "img_flags")
@counted
def test_parse_mount_options(text: str | None, what: str) -> None:
    try:
        options = parse_mount_options(text, what=what)
    except InputError as e:
        assert text and str(e).startswith(f"{what}={text} is not valid: "), str(e)
        assert_no_internal_repr(str(e), text)
        return
    if not text:
        assert options == MountOptions()
        return
    words = text.split(",")
    assert all(words) and not REFUSED & set(words)
    last_ro_rw = [w for w in words if w in {"ro", "rw"}][-1:]
    assert options.read_only == (last_ro_rw == ["ro"])
    kept = [w for w in words if w not in FLAGS and w not in IGNORED and not w.startswith("x-")]
    assert (options.data or None) == (",".join(kept) or None)
    assert all(c.isprintable() and not c.isspace() for c in options.data or "")
    assert options.flags & ~functools.reduce(int.__or__, FLAGS.values()) == 0
