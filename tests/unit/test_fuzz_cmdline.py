"""Property tests of the kernel command line: parse_options on any text, any bytes, our
keys in any order and valid command lines mutated in one place gives Options that
keep README's table, or one InputError naming the parameter; valid command lines
parse to what they say; split_cmdline splits as the kernel does."""

from __future__ import annotations

import enum
import re
from typing import Any, cast

import pytest
from hypothesis import example, given, note
from hypothesis import strategies as st

from archiso_hook import cmdline, netconf
from archiso_hook.cmdline import Arch, split_cmdline, udev_encode
from archiso_hook.errors import InputError
from archiso_hook.options import parse_options
from archiso_hook.sizes import Size
from tests.unit.strategies import (
    ANY_TEXT,
    BLANKS,
    BY_NAME,
    DEFAULTS,
    HUGE,
    NAMES,
    SERVERS,
    TAG_LINKS,
    VALID,
    X86,
    Word,
    chars_except,
    check_parse,
    command_lines,
    counted,
    joined,
    mutated,
    surrogateescaped,
)

pytestmark = pytest.mark.usefixtures("fuzz_tally")


def test_two_servers_are_refused() -> None:
    with pytest.raises(InputError, match="archiso_nbd_srv= and archiso_nfs_srv= are both given"):
        parse_options("archiso_nfs_srv=h:/x archiso_nbd_srv=h", machine_arch=Arch.X86_64)


@st.composite
def mutated_command_lines(draw: st.DrawFn) -> str:
    """A valid command line with one archiso parameter's value (or key) changed."""
    words, _ = draw(command_lines())
    ours = [i for i, w in enumerate(words) if w.key in BY_NAME]
    i = draw(st.sampled_from(ours))
    word = words[i]
    value = draw(mutated(word.raw or ""))
    if value is None:
        text = word.key
    else:
        quoting = draw(st.sampled_from(["{k}={v}", '{k}="{v}"', '"{k}={v}"', "{k}={v}{v}"]))
        text = quoting.format(k=word.key, v=value)
    note(f"mutated word: {word.text!r} -> {text!r}")
    return draw(joined([w.text if j != i else text for j, w in enumerate(words)]))


@st.composite
def token_soup(draw: st.DrawFn) -> str:
    """Our keys, `=`, quotes, blanks and odd values in any order."""
    tokens = st.sampled_from([*NAMES, *NAMES]).map(lambda n: n + "=") | st.sampled_from(
        ['"', "=", " ", "\t", "\n", "y", "0", "99999999999999999999999", "256M", "%", "/", ".."]
    ) | ANY_TEXT | HUGE  # fmt: skip
    return "".join(draw(st.lists(tokens, max_size=20)))


def test_every_parameter_has_a_generator() -> None:
    """A new parameter needs valid values here (and a contract in check_options)."""
    assert set(VALID) == set(NAMES)


@given(ANY_TEXT)
@example("rootdelay=²")  # str.isdigit() says yes, int() says no
@example("cow_chunksize=\U0001d7d6")  # int() reads it as 8, but it is not what README accepts
@example("cow_spacesize=1\u212a")  # the Kelvin sign is a k under re.IGNORECASE
@example('dm_snap_prefix="arch\n"')  # `$` matches before a trailing newline
@example("archisolabel=ARCH\xa02011")  # one word for the kernel (no-break space)
@example("img_label=")  # named archisolabel= in the error
@example('cow_spacesize="1%\n"')  # found by fuzzing: `$` matches before a newline
@example("archisolabel=..")  # the medium would be /dev/disk/by-label/.., a directory
@example("cow_device=LABEL=.")
@counted
def test_parse_options_on_any_text(text: str) -> None:
    check_parse(text)


@given(st.binary(max_size=80).map(surrogateescaped))
@example(b"rootdelay=\xff\xfe".decode("utf-8", errors="surrogateescape"))
@counted
def test_parse_options_on_any_bytes(text: str) -> None:
    check_parse(text)


@given(token_soup())
@example("cow_chunksize=" + "9" * 5000)  # int() refuses more than 4300 digits
@example("cow_spacesize=" + "9" * 5000 + "M")
@counted
def test_parse_options_on_our_keys_in_any_order(text: str) -> None:
    check_parse(text)


@given(mutated_command_lines())
@counted
def test_parse_options_on_mutated_command_lines(text: str) -> None:
    check_parse(text)


# What as_parameters() shows in effect rather than as given.
DERIVED = {"archisodevice", "img_dev", "cow_device", "cow_directory", "cow_persistent",
           "archisosearchfilename", "cow_grow", "copytoram", "ip", "archiso_nbd_srv",
           "archiso_nfs_srv"}  # fmt: skip


def _device_path(spec: str) -> str:
    tag, _, value = spec.partition("=")
    return f"/dev/disk/{TAG_LINKS[tag]}/{udev_encode(value)}" if tag in TAG_LINKS else spec


@given(command_lines())
@example(([Word("archisolabel", "ARCH\u3000X", "ARCH\u3000X", "archisolabel=ARCH\u3000X")],
          "archisolabel=ARCH\u3000X"))  # fmt: skip
@counted
def test_valid_command_lines_parse_to_what_they_say(line: tuple[list[Word], str]) -> None:
    words, text = line
    options = check_parse(text)
    assert options is not None
    last = {w.key: w for w in words if w.key in BY_NAME}
    for name, word in last.items():
        if name != "ip":
            assert getattr(options, BY_NAME[name].field) == word.expected, name
    ips = tuple(cast(netconf.IpConfig, w.expected) for w in words if w.key == "ip")
    assert options.ip == ips  # every ip=, in order

    def value_of(name: str) -> Any:
        return last[name].expected if name in last else None

    shown = options.as_parameters()
    assert set(shown) == set(NAMES)
    for name, param in BY_NAME.items():
        if name not in DERIVED:
            value = value_of(name) if name in last else getattr(DEFAULTS, param.field)
            assert shown[name] == (str(value) if isinstance(value, Size | enum.Enum) else value)
    label, device = value_of("archisolabel"), value_of("archisodevice")
    assert shown["archisodevice"] == (
        _device_path(device) if device else _device_path(f"LABEL={label}") if label else None
    )
    img_label, img_dev = value_of("img_label"), value_of("img_dev")
    assert shown["img_dev"] == (
        _device_path(f"LABEL={img_label}")
        if img_label
        else _device_path(img_dev)
        if img_dev
        else None
    )
    cow_label, cow_device = value_of("cow_label"), value_of("cow_device")
    cow_path = (
        _device_path(f"LABEL={cow_label}")
        if cow_label
        else _device_path(cow_device)
        if cow_device
        else None
    )
    assert shown["cow_device"] == cow_path
    arch = value_of("arch") or X86
    assert shown["cow_directory"] == (
        value_of("cow_directory") or f"persistent_{(label or '').replace('/', '_')}/{arch}"
    )
    assert shown["cow_persistent"] == str(value_of("cow_persistent") or ("P" if cow_path else "PO"))
    grow = value_of("cow_grow")
    assert shown["cow_grow"] == (grow if grow is not None else cow_path is None)
    source = next((k.split("_")[1] for k in sorted(SERVERS) if k in last), None)
    copy = value_of("copytoram")
    assert shown["copytoram"] == (
        "n" if source == "http" else str(copy) if copy else "y" if source else "auto"
    )
    assert options.network_source == source
    usable = [ip for ip in ips if not ip.unsupported]  # the last of them configures
    assert (options.network is None) == (
        source is None or (bool(ips) and (not usable or not usable[-1].wanted))
    )
    if source and ips and usable and usable[-1].wanted:
        assert options.network == usable[-1]
    uuid, filename = value_of("archisosearchuuid"), value_of("archisosearchfilename")
    assert shown["archisosearchfilename"] == (
        "/" + (filename or f"boot/{uuid}.uuid") if uuid or filename else None
    )
    assert options.debug == any(w.key == "rd.debug" for w in words)
    old_names = cmdline.NOT_YET_SUPPORTED | set(cmdline.RENAMED) | set(cmdline.OBSOLETE)
    told = [w.key for w in words if w.key in old_names]
    assert [m.partition("=")[0] for m in options.warnings] == list(dict.fromkeys(told))


KEYS = st.text(chars_except(BLANKS + '"='), min_size=1, max_size=12)


@st.composite
def plain_words(draw: st.DrawFn) -> tuple[tuple[str, str | None], str]:
    """A (key, value) pair and how it is written: bare, k=v, or with a quoted value."""
    key = draw(KEYS)
    style = draw(st.sampled_from(["bare", "plain", "quoted"]))
    if style == "bare":
        return (key, None), key
    if style == "plain":
        value = draw(st.text(chars_except(BLANKS + '"'), max_size=12))
        return (key, value), f"{key}={value}"
    value = draw(st.text(chars_except('"'), max_size=12))
    return (key, value), f'{key}="{value}"'


@given(st.lists(plain_words(), max_size=8).flatmap(
    lambda ws: st.tuples(st.just([p for p, _ in ws]), joined([t for _, t in ws]))
))  # fmt: skip
@example(([("archisolabel", "A\xa0B")], "archisolabel=A\xa0B"))
@example(([("a", "x\x1cy")], "a=x\x1cy"))
@example(([("\x1f", None)], "\x1f"))  # found by fuzzing: str.isspace() took it for a blank
@counted
def test_split_cmdline_round_trips_words(case: tuple[list[tuple[str, str | None]], str]) -> None:
    pairs, text = case
    assert split_cmdline(text) == pairs


@given(st.text(chars_except('"'), max_size=60) | st.binary(max_size=60).map(surrogateescaped))
@example("a=1\u2028b=2")
@example("\x85")  # found by fuzzing
@counted
def test_split_cmdline_splits_on_the_kernels_blanks_only(text: str) -> None:
    """Without quotes, the words are exactly what lies between the kernel's blanks."""
    if '"' in text:  # from the bytes
        text = text.replace('"', "")
    words = [w for w in re.split(f"[{re.escape(BLANKS)}]+", text) if w]
    assert [k if v is None else f"{k}={v}" for k, v in split_cmdline(text)] == words
