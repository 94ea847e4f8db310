from __future__ import annotations

import pytest

from archiso_hook.aitab import ImageType, parse_aitab
from archiso_hook.errors import InputError
from archiso_hook.sizes import Size

SEED = """\
# <img>      <mnt>         <arch>   <sfs_comp> <fs_type> <fs_size>
root-image   /             x86_64   xz         ext4      50%
lib-modules  /lib/modules  x86_64   xz         ext4      10%

usr-share\t/usr/share\tany\txz\text4\t50%
core-pkgs    /repo/pkg     i686     gzip       none      0   # packages
plain        /srv/         x86_64   none       ext3      64
"""


def test_the_seed_format_with_comments_blank_lines_and_tabs() -> None:
    entries = parse_aitab(SEED, "arch/aitab")
    assert [(e.name, e.mount, e.arch, e.type, e.line) for e in entries] == [
        ("root-image", "/", "x86_64", ImageType.FS_SFS, 2),
        ("lib-modules", "/lib/modules", "x86_64", ImageType.FS_SFS, 3),
        ("usr-share", "/usr/share", "any", ImageType.FS_SFS, 5),
        ("core-pkgs", "/repo/pkg", "i686", ImageType.SFS, 6),
        ("plain", "/srv", "x86_64", ImageType.FS, 7),
    ]
    assert [e.filename for e in entries] == [
        "root-image.fs.sfs",
        "lib-modules.fs.sfs",
        "usr-share.fs.sfs",
        "core-pkgs.sfs",
        "plain.fs",
    ]
    assert entries[0].fs_size == Size(50, percent=True)
    assert entries[4].fs_size == Size(64 << 20)
    assert entries[3].fs_size is None and entries[3].fs_type is None
    assert entries[4].sfs_comp is None


def test_five_fields_are_enough_for_a_squashfs() -> None:
    (entry,) = parse_aitab("pkgs /repo any zstd none\n")
    assert entry.type is ImageType.SFS


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("root / x86_64 xz", "f:1: missing field(s) fs_type, fs_size"),
        ("root / x86_64 xz ext4", "f:1: missing field fs_size"),
        ("root / x86_64 xz ext4 50% extra", "f:1: 7 fields, expected 6"),
        (
            "root / armv7 xz ext4 50%",
            "f:1: field arch: unknown architecture 'armv7', expected one of i686 | x86_64 | any",
        ),
        ("root / any brotli ext4 50%", "f:1: field sfs_comp: unknown compression 'brotli'"),
        ("root / any xz zfs 50%", "f:1: field fs_type: unknown filesystem 'zfs'"),
        ("root / any none none 0", "f:1: sfs_comp and fs_type are both none"),
        ("root / any xz ext4 0%", "f:1: field fs_size: '0%' is not valid"),
        ("root / any xz ext4 100%", "f:1: field fs_size: '100%' is not valid"),
        ("root / any xz ext4 1.5", "f:1: field fs_size: '1.5' is not valid"),
        ("root / any xz none big", "f:1: field fs_size: 'big' is not valid"),
        ("../root / any xz ext4 50%", "f:1: field img: '../root' is not a plain file name"),
        ("a/b / any xz ext4 50%", "f:1: field img: 'a/b' is not a plain file name"),
        (".hidden / any xz ext4 50%", "f:1: field img: '.hidden' is not a plain file name"),
        ("root usr any xz ext4 50%", "f:1: field mnt: 'usr' is not an absolute"),
        ("root /usr/../etc any xz ext4 50%", "f:1: field mnt: '/usr/../etc' is not"),
        ("root //srv any xz ext4 50%", "f:1: field mnt: '//srv' is not"),
        ("root /a/./b any xz ext4 50%", "f:1: field mnt: '/a/./b' is not"),
    ],
)
def test_every_bad_line_names_file_line_field_and_accepted_values(line: str, message: str) -> None:
    with pytest.raises(InputError) as excinfo:
        parse_aitab(f"# header\n\n{line}\n".replace("# header\n\n", ""), "f")
    assert str(excinfo.value).startswith(message)


def test_line_numbers_count_comments_and_blank_lines() -> None:
    with pytest.raises(InputError, match=r"^x:4: field arch"):
        parse_aitab("# c\n\nroot / any xz ext4 5%\nb /b bad xz ext4 5%\n", "x")


def test_duplicates_within_one_architecture_are_errors() -> None:
    with pytest.raises(InputError, match="f:2: field mnt: / is already the mount point of line 1"):
        parse_aitab("a / x86_64 xz ext4 5%\nb / any xz ext4 5%\n", "f")
    with pytest.raises(InputError, match="f:2: field img: a is already the image of line 1"):
        parse_aitab("a / any xz ext4 5%\na /b x86_64 xz ext4 5%\n", "f")
    # The same name and mount point for two different architectures is a dual-arch medium.
    assert len(parse_aitab("a / i686 xz ext4 5%\na / x86_64 xz ext4 5%\n", "f")) == 2
