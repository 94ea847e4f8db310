"""Property tests of ip= alone (netconf.parse_ip): the kernel's, dracut's and systemd's
forms, and anything else. In a command line (test_fuzz_cmdline.py) every ip= is kept
and a bad one is a warning unless a network boot needs it."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from archiso_hook import netconf
from archiso_hook.errors import InputError
from tests.unit.strategies import (
    ANY_TEXT,
    IP,
    check_ip,
    counted,
    mutated,
)

pytestmark = pytest.mark.usefixtures("fuzz_tally")


@given(st.one_of(ANY_TEXT, IP.map(lambda v: str(v[0])).flatmap(mutated).map(lambda m: m or "")))
@counted
def test_parse_ip_on_any_text(text: str) -> None:
    """ip= alone: anything gives a configuration or an error naming ip= (and the field)."""
    try:
        config = netconf.parse_ip(text)
    except InputError as error:
        assert str(error).startswith("ip=")
        return
    check_ip(text, config)
