"""The boot menus and loaders of a medium: the configurations isolinux and GRUB read (GRUB's
checked by its own grub-script-check), what is refused before anything is written, and
where each distribution keeps the loaders. Booting them is tests/vm/test_9*_iso_*.py's."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from archiso_hook.build import loaders, menus
from archiso_hook.build.menus import (
    BootKernel,
    Menu,
    grub_cfg,
    grub_quote,
    make_menu,
    syslinux_cfg,
)
from archiso_hook.errors import HookError, InputError

X64 = BootKernel("x86_64", mixed_mode=True)
X64_ONLY = BootKernel("x86_64", mixed_mode=False)
I686 = BootKernel("i686")
UUID = "2026-12-02-10-00-00-00"


def _menu(*kernels: BootKernel, **kw: object) -> Menu:
    args: dict[str, object] = {"label": "ARCH_2026", "basedir": "arch", "kernels": kernels}
    return make_menu(**(args | kw))  # type: ignore[arg-type]


def _blocks(cfg: str) -> dict[str, list[str]]:
    """syslinux.cfg's LABEL blocks: label -> its indented lines."""
    blocks: dict[str, list[str]] = {}
    current: list[str] = []
    for line in cfg.splitlines():
        if line.startswith("LABEL "):
            current = blocks.setdefault(line.split()[1], [])
        elif line.startswith("    "):
            current.append(line.strip())
    return blocks


def test_a_dual_menu_for_isolinux() -> None:
    cfg = syslinux_cfg(_menu(I686, X64, serial=True, append="cow_spacesize=1G quiet"))
    head = cfg.split("\n\n")[0].splitlines()
    assert head[1:] == [
        "SERIAL 0 115200",
        "UI menu.c32",
        "MENU TITLE Live system",
        "TIMEOUT 50",
        "PROMPT 0",
        "DEFAULT auto",
    ]
    blocks = _blocks(cfg)
    assert list(blocks) == ["auto", "x86_64", "x86_64-copytoram", "i686", "i686-copytoram"]
    assert blocks["auto"] == [
        "MENU LABEL Live system (x86_64 on a 64-bit CPU, else i686)",
        "COM32 ifcpu64.c32",
        "APPEND x86_64 -- i686",
    ]
    params = (
        "archisobasedir=arch archisolabel=ARCH_2026 console=tty0 console=ttyS0,115200 "
        "cow_spacesize=1G quiet"
    )
    assert blocks["i686-copytoram"] == [
        "MENU LABEL Live system (i686), copy to RAM",
        "LINUX /arch/boot/i686/vmlinuz",
        "INITRD /arch/boot/i686/archiso.img",
        f"APPEND {params} copytoram=y",
    ]
    assert blocks["x86_64"][-1] == f"APPEND {params}"


def test_one_architecture_no_serial_and_no_timeout() -> None:
    cfg = syslinux_cfg(_menu(X64, timeout=0, title="Arch Linux"))
    assert "SERIAL" not in cfg and "UI menu.c32" not in cfg and "TIMEOUT" not in cfg
    assert "DEFAULT x86_64\n" in cfg and "LABEL auto" not in cfg
    assert list(_blocks(cfg)) == ["x86_64", "x86_64-copytoram"]
    assert "MENU LABEL Arch Linux (x86_64), copy to RAM" in cfg
    assert "console=" not in cfg


def _script_check(cfg: str, tmp_path: Path) -> None:
    path = tmp_path / "grub.cfg"
    path.write_text(cfg)
    argv = ["grub-script-check", str(path)]
    proc = subprocess.run(argv, check=False, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_a_dual_menu_for_grub(tmp_path: Path) -> None:
    cfg = grub_cfg(_menu(X64, I686, serial=True, timeout=3), UUID)
    _script_check(cfg, tmp_path)
    assert f"# volume by its UUID ({UUID}) and read this file." in cfg
    assert "if serial --unit=0 --speed=115200; then" in cfg
    assert "set timeout=3\nset timeout_style=menu\n" in cfg
    # 64-bit GRUB, or a 64-bit CPU under 32-bit GRUB with a mixed-mode kernel
    assert 'if [ "${grub_cpu}" = x86_64 ]; then\n    set archiso_x86_64=y\nelif cpuid -l;' in cfg
    assert "    set default=x86_64\nelse\n    set default=i686\n" in cfg
    entries = re.findall(r"menuentry (.*?) --id (\S+) \{\n(.*?)\n    \}", cfg, re.S)
    assert [(title, ident) for title, ident, _ in entries] == [
        ("'Live system (x86_64)'", "x86_64"),
        ("'Live system (x86_64), copy to RAM'", "x86_64-copytoram"),
        ("'Live system (i686)'", "i686"),
        ("'Live system (i686), copy to RAM'", "i686-copytoram"),
    ]
    body = entries[3][2].splitlines()
    assert [line.strip() for line in body] == [
        "set gfxpayload=keep",
        "linux /arch/boot/i686/vmlinuz archisobasedir=arch archisolabel=ARCH_2026 "
        "console=tty0 console=ttyS0,115200 copytoram=y",
        "initrd /arch/boot/i686/archiso.img",
    ]
    # the i686 entries only under a 32-bit UEFI
    assert cfg.index('if [ "${grub_cpu}" = i386 ]; then') < cfg.index("--id i686 ")


def test_grub_without_mixed_mode_offers_x86_64_to_64_bit_uefi_only(tmp_path: Path) -> None:
    cfg = grub_cfg(_menu(X64_ONLY, timeout=0), UUID)
    _script_check(cfg, tmp_path)
    assert "cpuid" not in cfg
    assert "set timeout=0\nset timeout_style=hidden\n" in cfg
    assert "set default=x86_64\n" in cfg
    cfg = grub_cfg(_menu(I686), UUID)
    _script_check(cfg, tmp_path)
    assert "set default=i686\n" in cfg and "archiso_x86_64" not in cfg


def test_parameters_with_quotes_and_spaces_stay_one_kernel_word(tmp_path: Path) -> None:
    menu = _menu(X64, label="ARCH 2026", append="""x="a b" y=it's quiet""")
    assert menu.cmdline()[:2] == ["archisobasedir=arch", 'archisolabel="ARCH 2026"']
    assert menu.append == ('x="a b"', "y=it's", "quiet")
    cfg = grub_cfg(menu, UUID)
    _script_check(cfg, tmp_path)
    assert """ 'archisolabel="ARCH 2026"' 'x="a b"' 'y=it'\\''s' quiet""" in cfg
    assert 'APPEND archisobasedir=arch archisolabel="ARCH 2026" x="a b" y=it\'s quiet' in (
        syslinux_cfg(menu)
    )
    assert grub_quote("console=ttyS0,115200") == "console=ttyS0,115200"
    assert grub_quote("$x;y") == "'$x;y'"


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"kernels": ()}, "a bootable medium needs a kernel"),
        ({"label": 'A"B'}, "cannot be written on a kernel command line"),
        ({"title": "a^b"}, "--title 'a^b' is not valid"),
        ({"title": "é"}, "expected 1 to 60 printable ASCII characters"),
        ({"title": ""}, "--title '' is not valid"),
        ({"timeout": -1}, "--timeout -1 is not valid: expected 0 to 600 seconds"),
        ({"timeout": 601}, "--timeout 601 is not valid"),
        ({"append": "quiet\nx=1"}, "--append holds a control character"),
        ({"append": "archisolabel=X"}, "--append sets archisolabel=, which the medium's entries"),
        ({"append": "archisobasedir=y"}, "set from --basedir: leave it out"),
        (
            {"append": "cow_spacesize=12Q"},
            "--append: cow_spacesize=12Q is not valid: expected a size",
        ),
        ({"append": "x=" + "a" * 2000}, "would be 20.. bytes, more than the kernel's 2047"),
    ],
)
def test_what_the_menus_cannot_carry_is_refused(kw: dict[str, object], message: str) -> None:
    with pytest.raises(InputError, match=re.escape(message).replace(r"\.\.", "..")):
        _menu(X64, **kw)


def test_the_volume_uuid_is_the_modification_time() -> None:
    assert menus.volume_date(1_796_000_000) == "2026113000532000"
    assert menus.volume_uuid(1_796_000_000) == "2026-11-30-00-53-20-00"
    assert menus.grub_embedded_cfg(UUID) == (
        f"search.fs_uuid {UUID} root\nset prefix=($root)/grub\n"
    )


# --------------------------------------------------------------------------- the loaders


def _touch(root: Path, *paths: str) -> None:
    for path in paths:
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_bytes(b"x")


def test_syslinux_of_each_distribution(tmp_path: Path) -> None:
    with pytest.raises(HookError) as error:
        loaders.find_syslinux(tmp_path)
    assert "isolinux (the BIOS boot loader) is not installed" in str(error.value)
    assert str(error.value).endswith(
        "(install the Debian packages isolinux and syslinux-common (Arch: syslinux))"
    )
    arch = "usr/lib/syslinux/bios"
    _touch(tmp_path, f"{arch}/isolinux.bin", f"{arch}/isohdpfx.bin")
    with pytest.raises(HookError):  # the modules are missing
        loaders.find_syslinux(tmp_path)
    _touch(tmp_path, *(f"{arch}/{m}" for m in loaders.SYSLINUX_MODULES))
    found = loaders.find_syslinux(tmp_path)
    assert found.isolinux == tmp_path / arch / "isolinux.bin"
    assert [m.name for m in found.modules] == list(loaders.SYSLINUX_MODULES)
    assert loaders.find_syslinux().isolinux == Path("/usr/lib/ISOLINUX/isolinux.bin")  # Debian


def test_grub_for_each_uefi(tmp_path: Path) -> None:
    lines: list[str] = []
    with pytest.raises(HookError) as error:
        loaders.uefi_loaders([X64], lines.append, tmp_path)
    assert str(error.value) == (
        f"GRUB for x86_64-efi (the UEFI boot loader of x86_64 machines) is not installed: "
        f"{tmp_path}/usr/lib/grub/x86_64-efi has no modules "
        "(install the Debian package grub-efi-amd64-bin (Arch: grub))"
    )
    _touch(tmp_path, "usr/lib/grub/x86_64-efi/linux.mod")
    # a mixed-mode kernel without i386-efi: BOOTX64 only, and a note
    assert list(loaders.uefi_loaders([X64], lines.append, tmp_path)) == ["x86_64"]
    assert lines and lines[0].startswith("note: no BOOTIA32.EFI, so 64-bit machines with a 32")
    assert list(loaders.uefi_loaders([X64_ONLY], lines.append, tmp_path)) == ["x86_64"]
    with pytest.raises(HookError, match="grub-efi-ia32-bin"):  # an i686 kernel needs it
        loaders.uefi_loaders([X64, I686], lines.append, tmp_path)
    _touch(tmp_path, "usr/lib/grub/i386-efi/linux.mod")
    assert sorted(loaders.uefi_loaders([X64], lines.append, tmp_path)) == ["i686", "x86_64"]
    assert list(loaders.uefi_loaders([I686], lines.append, tmp_path)) == ["i686"]
