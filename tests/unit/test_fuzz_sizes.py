"""Property tests of sizes (cow_spacesize=, copytoram_size=, ...): what parse_size
accepts is what README documents and round-trips through str; what the kernel's
64 bits cannot hold is refused."""

from __future__ import annotations

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from archiso_hook.errors import InputError
from archiso_hook.sizes import Size, parse_size
from tests.unit.strategies import (
    ANY_TEXT,
    HUGE,
    SUFFIXES,
    assert_no_internal_repr,
    check_size,
    counted,
    mutated,
)

pytestmark = pytest.mark.usefixtures("fuzz_tally")


SIZE_TEXT = (
    ANY_TEXT
    | st.builds(lambda n, s: f"{n}{s}", st.integers(0, 10**20), st.sampled_from([*SUFFIXES, "%"]))
    | st.builds(lambda n, s: f"{n}{s}", HUGE, st.sampled_from([*SUFFIXES, "%", "M"]))
    | st.sampled_from(["256M", "1G", "50%", "4096", "0", "0%", "101%"]).flatmap(mutated).map(
        lambda v: v or ""
    )
)  # fmt: skip


@given(SIZE_TEXT, st.sampled_from(["cow_spacesize", "copytoram_size"]), st.booleans(),
       st.integers(1, 100))  # fmt: skip
@example("1\u212a", "cow_spacesize", True, 100)  # Kelvin sign: a k only to re.IGNORECASE
@example("256M\n", "cow_spacesize", True, 100)
@example("50%\n", "cow_spacesize", True, 100)
@example("9" * 5000, "cow_spacesize", True, 100)
@counted
def test_parse_size(text: str, what: str, allow_percent: bool, max_percent: int) -> None:
    try:
        size = parse_size(text, what=what, allow_percent=allow_percent, max_percent=max_percent)
    except InputError as e:
        assert str(e).startswith(f"{what}={text} is not valid: expected a size such as 256M")
        assert_no_internal_repr(str(e), text)
        return
    assert allow_percent or not size.percent
    check_size(text, size, max_percent=max_percent)
    again = parse_size(str(size), what=what, allow_percent=allow_percent, max_percent=max_percent)
    assert again == size, str(size)


@given(st.integers(1, (1 << 63) - 1) | st.integers(1, 100).map(lambda n: -n))
@counted
def test_sizes_round_trip_through_str(value: int) -> None:
    size = Size(-value, percent=True) if value < 0 else Size(value)
    assert parse_size(str(size), what="cow_spacesize") == size


@given(st.integers(1 << 63, 1 << 70))
@counted
def test_sizes_the_kernel_cannot_hold_are_refused(value: int) -> None:
    with pytest.raises(InputError, match=r"^cow_spacesize=\d+ is not valid"):
        parse_size(str(value), what="cow_spacesize")
