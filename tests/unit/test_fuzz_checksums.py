"""Property tests of checksum files (checksum=): a digest of the algorithm's length
for the image, or one clear error naming the file."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from archiso_hook import checksums
from archiso_hook.errors import InputError
from tests.unit.strategies import (
    ANY_CHAR,
    ANY_TEXT,
    assert_no_internal_repr,
    counted,
)

pytestmark = pytest.mark.usefixtures("fuzz_tally")


CHECKSUM_LINE = st.tuples(
    st.sampled_from([32, 128, 31, 129, 0]).flatmap(
        lambda n: st.text("0123456789abcdefABCDEF", min_size=n, max_size=n)
    ),
    st.sampled_from(["  ", " *", " ", "\t"]),
    st.sampled_from(["root.fs.sfs", "./root.fs.sfs", "../root.fs.sfs", "x/root.fs.sfs", ".", ""])
    | st.text(ANY_CHAR, max_size=12),
).map("".join)


@given(
    st.lists(CHECKSUM_LINE | ANY_TEXT, max_size=5).map("\n".join) | ANY_TEXT,
    st.sampled_from(["sha512", "md5"]),
)
@counted
def test_checksum_files_give_a_digest_or_one_clear_error(text: str, algorithm: str) -> None:
    path = f"/run/archiso/bootmnt/arch/x86_64/root.fs.sfs.{algorithm}"
    try:
        expected = checksums.parse(text, path, "root.fs.sfs")
    except InputError as e:
        assert str(e).startswith(path + ":") or str(e).startswith(path + " "), e
        assert_no_internal_repr(str(e), text)
        return
    assert expected.algorithm == algorithm
    assert len(expected.digest) == dict(checksums.ALGORITHMS)[algorithm]
    assert expected.digest == expected.digest.lower()
    assert any(
        line.lower().startswith(expected.digest) and line.rstrip("\r").endswith("root.fs.sfs")
        for line in text.splitlines()
    )
