"""Hypothesis profiles for every property test of the suite.

`ci` (the default, what `make test` runs): the same examples on every run, no example
database, no deadline (a loaded 2-core machine must not make a test flaky), and few
enough examples that tests/unit/test_fuzz_*.py take seconds.

`fuzz` (`make fuzz`, or HYPOTHESIS_PROFILE=fuzz, or pytest --hypothesis-profile=fuzz):
random examples, with failures kept in .hypothesis/ to be replayed first next time;
7,000 examples a property, over 100,000 in all.

Tests decorated with tests.unit.strategies.counted, in modules that use the fuzz_tally
fixture, report how many examples ran: the summary prints the total (and, outside `ci`,
the count of each property).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Generator, Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

from tests.lend import Lent, lend

settings.register_profile(
    "ci", max_examples=100, derandomize=True, database=None, deadline=None, print_blob=False
)
settings.register_profile(
    "fuzz",
    max_examples=7_000,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

_EXAMPLES = pytest.StashKey[Counter[str]]()
_SECONDS = pytest.StashKey[float]()


@pytest.fixture(scope="module")
def fuzz_tally(pytestconfig: pytest.Config) -> Iterator[None]:
    """For modules of property tests (`pytestmark = pytest.mark.usefixtures("fuzz_tally")`):
    the examples their `counted` tests ran join the session's count when they finish."""
    from tests.unit.strategies import EXAMPLES_RUN  # noqa: PLC0415

    yield
    pytestconfig.stash.setdefault(_EXAMPLES, Counter()).update(EXAMPLES_RUN)
    EXAMPLES_RUN.clear()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, object, object]:
    """Time the tests that count their examples."""
    start = time.monotonic()
    try:
        return (yield)
    finally:
        if "fuzz_tally" in getattr(item, "fixturenames", ()):
            seconds = item.config.stash.get(_SECONDS, 0.0) + time.monotonic() - start
            item.config.stash[_SECONDS] = seconds


def pytest_terminal_summary(
    terminalreporter: pytest.TerminalReporter, config: pytest.Config
) -> None:
    counts = config.stash.get(_EXAMPLES, None)
    if not counts:
        return
    profile = settings.get_current_profile_name()
    seconds = config.stash.get(_SECONDS, 0.0)
    if profile != "ci":
        terminalreporter.section("examples run, by property")
        for name, count in sorted(counts.items()):
            terminalreporter.write_line(f"{count:9,d}  {name}")
    terminalreporter.write_line(
        f"fuzz: {sum(counts.values()):,d} examples of {len(counts)} properties in "
        f"{seconds:.1f} s (hypothesis profile {profile})"
    )


@pytest.fixture(scope="session")
def lent_checkout() -> Iterator[Lent]:
    """This checkout's sources and venv where an unprivileged user can run them
    (tests/lend.py): root's own clone may be in /root, which no other user may enter."""
    root = Path(tempfile.mkdtemp(prefix="archiso-lent-", dir="/tmp"))
    try:
        yield lend(root)
    finally:
        shutil.rmtree(root)
