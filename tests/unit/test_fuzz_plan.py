"""Property tests of the boot plan: plan_boot on parsed command lines and aitab tables
(paths inside /run/archiso, /new_root and /dev; device-mapper names dm can pack;
`plan --json` whole), and the COW sizes that never exceed the space."""

from __future__ import annotations

import json
from collections.abc import Iterator

import attrs
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from archiso_hook.aitab import AitabEntry, ImageType, parse_aitab
from archiso_hook.cmdline import CowMode
from archiso_hook.cowsize import cow_need, cow_sizes
from archiso_hook.errors import InputError
from archiso_hook.kernel import dm
from archiso_hook.options import Options
from archiso_hook.paths import DM_NAME_MAX, DM_UUID_PREFIX
from archiso_hook.plan import BootPlan, plan_boot
from archiso_hook.sizes import MiB
from tests.unit.strategies import (
    MOUNT,
    PARAMETER_NAMED,
    SOURCE,
    Table,
    Word,
    aitab_tables,
    assert_no_internal_repr,
    check_parse,
    command_lines,
    counted,
)

pytestmark = pytest.mark.usefixtures("fuzz_tally")


PLAN_MOUNTS = st.sampled_from(
    ["/", "/usr", "/usr/share", "/usr/share/doc", "/srv", "/opt/x", "/var"]
)


def _paths(plan: BootPlan) -> Iterator[tuple[str, str]]:
    """(what, path) for every absolute path in the plan."""
    for image in plan.images:
        for field in ("path", "target", "fs_image", "container", "cow_file"):
            if path := getattr(image, field):
                yield field, path
    for step in plan.steps:
        for field, value in attrs.asdict(step, recurse=False).items():
            for item in value if isinstance(value, tuple) else (value,):
                if isinstance(item, str) and item.startswith("/"):
                    yield field, item


def check_plan(options: Options, entries: list[AitabEntry]) -> None:
    aitab = f"/run/archiso/bootmnt/{options.basedir}/aitab"
    try:
        plan = plan_boot(options, entries)
    except InputError as e:
        message = str(e)
        assert message.startswith(aitab + ":") or PARAMETER_NAMED.search(message), message
        assert_no_internal_repr(message, aitab, *(p for p in _option_texts(options)))
        return
    arch = str(options.arch)
    assert [i.entry for i in plan.images] == [e for e in entries if e.arch in (arch, "any")]
    base = f"/run/archiso/bootmnt/{options.basedir}/"
    for image in plan.images:
        entry = image.entry
        assert image.target == "/new_root" + ("" if entry.mount == "/" else entry.mount)
        assert image.path == f"{base}{entry.arch}/{entry.filename}"
        if entry.type is ImageType.FS_SFS:
            assert image.container == f"/run/archiso/sfs/{entry.name}"
        if entry.type.snapshot:
            # The name and its uuid ARCHISO-<name> fit struct dm_ioctl, as the boot packs them.
            assert image.dm_name is not None and len(image.dm_name.encode()) <= DM_NAME_MAX
            dm.pack_ioctl(data_size=0, name=image.dm_name, uuid=DM_UUID_PREFIX + image.dm_name)
            assert image.cow_file is not None
            assert image.cow_file.startswith("/run/archiso/cowspace/")
        else:
            assert image.dm_name is None and image.cow_file is None
    # `plan --json` writes every plan the boot would run.
    assert json.loads(json.dumps(plan.to_json()))["newroot"] == "/new_root"
    dm_names = [i.dm_name for i in plan.images if i.dm_name]
    assert len(dm_names) == len(set(dm_names))
    for field, path in _paths(plan):
        assert ".." not in path.split("/"), (field, path)
        if field != "live_path":  # where the live system sees a mount, after switch_root
            assert path.startswith(("/run/archiso/", "/new_root", "/dev/")), (field, path)


def _option_texts(options: Options) -> Iterator[str]:
    for value in attrs.asdict(options, recurse=False).values():
        if isinstance(value, str):
            yield value


@given(command_lines(), aitab_tables(mounts=PLAN_MOUNTS | MOUNT, max_images=5))
@example(  # a device-mapper name of 128 bytes
    (
        [Word("dm_snap_prefix", "p" * 64, "p" * 64, "dm_snap_prefix=" + "p" * 64)],
        "archisolabel=A dm_snap_prefix=" + "p" * 64,
    ),
    Table([], [], [], "\n", "r" * 63 + " / x86_64 xz ext4 1"),
)
@example(  # the medium was /dev/disk/by-label/.., that is /dev/disk
    ([Word("archisolabel", "..", "..", "archisolabel=..")], "archisolabel=.."),
    Table(["A / x86_64 gzip ext4 1"], [0], [], "\n", "A / x86_64 gzip ext4 1"),
)
@counted
def test_plan_boot_on_parsed_inputs(line: tuple[list[Word], str], table: Table) -> None:
    options = check_parse(line[1])
    if options is not None:  # (the pinned example no longer parses)
        check_plan(options, parse_aitab(table.text, SOURCE))


@st.composite
def cow_cases(draw: st.DrawFn) -> tuple[list[int], int, CowMode, int]:
    """Origin sizes, a cowspace (often a little less than they need), a mode, a chunk."""
    origins = draw(
        st.lists(st.integers(0, 1 << 44) | st.sampled_from([0, 1, 511, 512, MiB - 1]), max_size=8)
    )
    mode = draw(st.sampled_from(list(CowMode)))
    chunk_sectors = draw(st.integers(0, 21).map(lambda k: 1 << k))
    total = sum(cow_need(origin, mode, chunk_sectors) for origin in origins)
    capacity = draw(
        st.integers(0, 1 << 46)
        | st.integers(0, 64 * MiB)
        | st.integers(max(total // 2, total - 64 * MiB), total + 1).filter(lambda c: c >= 0)
    )
    return origins, capacity, mode, chunk_sectors


@given(cow_cases())
@counted
def test_cow_sizes_never_exceed_the_space(case: tuple[list[int], int, CowMode, int]) -> None:
    origins, capacity, mode, chunk_sectors = case
    chunk = chunk_sectors * 512
    needs = [cow_need(origin, mode, chunk_sectors) for origin in origins]
    for origin, need in zip(origins, needs, strict=True):
        data = -(-origin // chunk)
        assert need % chunk == 0 and need >= origin
        if mode is CowMode.N:
            assert need == data * chunk
        else:  # a header chunk, then metadata chunks of chunk/16 exceptions each
            metadata = need // chunk - 1 - data
            assert metadata * (chunk // 16) >= data > (metadata - 1) * (chunk // 16)
    try:
        sizes = cow_sizes(origins, capacity, mode, chunk_sectors)
    except InputError as e:
        assert "cow_spacesize=" in str(e) and sum(needs) > capacity
        return
    assert len(sizes) == len(origins) and sum(sizes) <= capacity
    if sum(needs) <= capacity:
        assert sizes == needs
    else:
        for size, need in zip(sizes, needs, strict=True):
            assert max(MiB, 3 * chunk) <= size <= need and size % chunk == 0
