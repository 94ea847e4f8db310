"""The watchdog's growth decisions (archiso_hook/live/growth.py): how much room to keep,
when a COW grows and to what size, when to warn, and the write rate. Growing a real
snapshot is proven in tests/vm/test_60_watch.py."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from archiso_hook.boot.state import State
from archiso_hook.live.growth import (
    MIN_HEADROOM,
    RAM_RESERVE,
    RATE_SECONDS,
    RateMeter,
    Usage,
    grow_to,
    headroom,
    warning_level,
)
from archiso_hook.live.watch import nothing_to_watch

MiB = 1 << 20
GiB = 1 << 30
PAGE = 4096
PLENTY = 64 * GiB  # RAM available that limits nothing


def test_headroom_is_the_largest_of_a_floor_a_quarter_of_use_and_seconds_of_writes() -> None:
    assert headroom(0, 0.0) == MIN_HEADROOM == 64 * MiB
    assert headroom(100 * MiB, 0.0) == 64 * MiB  # a quarter (25 MiB) is under the floor
    assert headroom(1 * GiB, 0.0) == 256 * MiB
    assert headroom(1 * GiB, 100.0 * MiB) == int(RATE_SECONDS * 100 * MiB) == 300 * MiB
    assert headroom(4 * GiB, 100.0 * MiB) == 1 * GiB


def test_a_cow_with_its_headroom_free_is_left_alone() -> None:
    # 10 MiB used: 64 MiB must stay free, so 74 MiB is enough and 1 page less is not.
    assert grow_to(Usage(10 * MiB, 74 * MiB, 1 * GiB), 0.0, PLENTY, PAGE) is None
    assert grow_to(Usage(10 * MiB, 200 * MiB, 1 * GiB), 0.0, PLENTY, PAGE) is None
    size = 74 * MiB - PAGE
    assert grow_to(Usage(10 * MiB, size, 1 * GiB), 0.0, PLENTY, PAGE) == 2 * size


def test_a_small_cow_at_least_doubles_a_large_need_is_met_at_once() -> None:
    assert grow_to(Usage(60 * MiB, 100 * MiB, 1 * GiB), 0.0, PLENTY, PAGE) == 200 * MiB
    # Written fast: 50 MiB/s needs 150 MiB free, more than twice the size.
    assert grow_to(Usage(90 * MiB, 100 * MiB, 1 * GiB), 50.0 * MiB, PLENTY, PAGE) == 240 * MiB


def test_the_ceiling_is_never_passed_and_a_cow_at_it_stays() -> None:
    assert grow_to(Usage(900 * MiB, 950 * MiB, 1000 * MiB), 0.0, PLENTY, PAGE) == 1000 * MiB
    assert grow_to(Usage(999 * MiB, 1000 * MiB, 1000 * MiB), 0.0, PLENTY, PAGE) is None


def test_growth_never_takes_the_ram_the_system_keeps() -> None:
    usage = Usage(100 * MiB, 110 * MiB, 10 * GiB)  # wants 220 MiB
    assert grow_to(usage, 0.0, RAM_RESERVE + 20 * MiB, PAGE) == 130 * MiB
    assert grow_to(usage, 0.0, RAM_RESERVE, PAGE) is None
    assert grow_to(usage, 0.0, RAM_RESERVE // 2, PAGE) is None  # less than the reserve


def test_the_new_size_is_a_whole_number_of_chunks() -> None:
    usage = Usage(100 * MiB, 110 * MiB, 10 * GiB)
    assert grow_to(usage, 0.0, RAM_RESERVE + 20 * MiB + MiB // 2, MiB) == 130 * MiB
    assert grow_to(usage, 0.0, RAM_RESERVE + 20 * MiB, 64 * MiB) == 128 * MiB
    # Rounded down to a chunk, the room the RAM allows is no growth at all.
    assert grow_to(usage, 0.0, RAM_RESERVE + 10 * MiB, 64 * MiB) is None


def _down(n: int, chunk: int) -> int:
    return n // chunk * chunk


@given(
    chunk_shift=st.integers(9, 30),
    chunks=st.integers(1, 1 << 20),
    odd=st.integers(0, (1 << 30) - 1),
    used=st.floats(0, 1),
    extra=st.integers(0, 1 << 40),
    rate=st.floats(0, 1e10),
    ram=st.integers(0, 1 << 41),
)
def test_grow_to_keeps_its_promises(
    *, chunk_shift: int, chunks: int, odd: int, used: float, extra: int, rate: float, ram: int
) -> None:
    chunk = 1 << chunk_shift
    size = chunks * chunk + odd % chunk  # a COW holds at least one chunk
    usage = Usage(int(size * used), size, size + extra)
    new = grow_to(usage, rate, ram, chunk)
    want = usage.allocated + headroom(usage.allocated, rate)
    # The most it could have: up to the ceiling, with the RAM the system can spare.
    allowed = _down(min(usage.ceiling, size + max(0, ram - RAM_RESERVE)), chunk)
    if new is None:  # room enough already, or none to be had
        assert size >= min(want, usage.ceiling) or allowed <= size
        return
    assert size < new <= allowed
    assert new % chunk == 0
    assert new >= min(_down(want, chunk), allowed)  # what it wants, unless held back
    assert new >= min(_down(2 * size, chunk), allowed)  # at least double, likewise


@pytest.mark.parametrize(
    ("allocated", "level"),
    [(0, None), (799, None), (800, 80), (899, 80), (900, 90), (949, 90), (950, 95),
     (1000, 95), (1200, 95)],
)  # fmt: skip
def test_warnings_at_80_90_95_percent_of_the_ceiling(allocated: int, level: int | None) -> None:
    # Of the ceiling, not of the size: a COW that can still grow is not running out.
    assert warning_level(Usage(allocated, 1000, 1000)) == level
    assert warning_level(Usage(allocated, 100, 1000)) == level


def test_no_warning_without_a_ceiling() -> None:
    assert warning_level(Usage(10, 0, 0)) is None


def test_the_rate_is_over_the_last_samples_of_the_window() -> None:
    meter = RateMeter(window=2.0)
    assert meter.add(0.0, 0) == 0.0  # one sample: no rate yet
    assert meter.add(1.0, 100 * MiB) == 100 * MiB
    assert meter.add(2.0, 200 * MiB) == 100 * MiB
    # The burst of the first second falls out of the window: 100 MiB over 2 s.
    assert meter.add(3.0, 200 * MiB) == 50 * MiB
    assert [when for when, _ in meter.samples] == [1.0, 2.0, 3.0]


def test_the_rate_keeps_two_samples_and_never_goes_below_zero() -> None:
    meter = RateMeter(window=2.0)
    meter.add(0.0, 0)
    assert meter.add(10.0, 100 * MiB) == 10 * MiB  # older than the window, but the only one
    assert meter.add(11.0, 50 * MiB) == 0.0  # less in use (a merge): no negative rate
    assert meter.samples == [(10.0, 100 * MiB), (11.0, 50 * MiB)]
    same = RateMeter()
    same.add(5.0, 0)
    assert same.add(5.0, 100 * MiB) == 0.0  # two samples at one instant: no rate, no error


# ------------------------------------------------- whether the live system needs a watchdog


def _state_with_cows(tmp_path: Path, *sizes_and_needs: tuple[int, int]) -> State:
    state = State(newroot="/new_root", complete=True)
    state.cow = {"space": str(tmp_path), "tmpfs": True, "grow": True, "grow_max": 1 << 30}
    for i, (size, need) in enumerate(sizes_and_needs):
        cow = tmp_path / f"{i}.cow"
        with cow.open("wb") as f:
            f.truncate(size)
        state.add("dm", name=f"arch_{i}", cow=f"/dev/loop{i}", cow_file=str(cow),
                  chunk_sectors=8, cow_need=need)  # fmt: skip
    return state


def test_a_cow_that_holds_all_its_origin_can_change_needs_no_watchdog(tmp_path: Path) -> None:
    state = _state_with_cows(tmp_path, (64 << 20, 64 << 20), (80 << 20, 70 << 20))
    reason = nothing_to_watch(state)
    assert reason == (
        "the COW of each snapshot (2) holds all that its origin can change: none can fill, "
        "and there is no NBD root to keep connected"
    )


def test_a_cow_that_could_fill_or_an_nbd_root_needs_the_watchdog(tmp_path: Path) -> None:
    assert (
        nothing_to_watch(_state_with_cows(tmp_path, (64 << 20, 64 << 20), (32 << 20, 65 << 20)))
        is None
    )
    state = _state_with_cows(tmp_path, (64 << 20, 64 << 20))
    state.add("nbd", device="/dev/nbd0", server="127.0.0.1", port=10809, export="root")
    assert nothing_to_watch(state) is None
    # A COW file that cannot be looked at: the watchdog starts, and says what is wrong.
    state = _state_with_cows(tmp_path, (64 << 20, 64 << 20))
    os.remove(tmp_path / "0.cow")
    assert nothing_to_watch(state) is None


def test_without_snapshots_in_ram_there_is_nothing_to_watch(tmp_path: Path) -> None:
    state = State(newroot="/new_root", complete=True)
    assert nothing_to_watch(state) == "no snapshot in RAM to watch, no NBD root to keep connected"
