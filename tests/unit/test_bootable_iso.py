"""`archiso-hook build --iso` makes a medium that boots by itself, checked with the real
tools (xorriso, mtools, blkid, grub-mkimage, isolinux's files) and no QEMU: the layout, the
El Torito entries, the hybrid MBR and the GPT, the EFI partition, reproducibility, and the
inputs refused before anything is written. The kernels and initramfs images here are
tests/unit/fake_boot.py's headers; tests/vm/test_9*_iso_*.py boots Debian's through firmware.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import attrs
import pytest

from archiso_hook.build import loaders, menus
from archiso_hook.build.builder import BootOptions, BuildResult, build
from archiso_hook.cli import main as cli_main
from archiso_hook.errors import InputError
from tests.unit.fake_boot import write_boot_pair

EPOCH = 1796000000  # 2026-11-30 00:53:20 UTC
LABEL = "ARCH_2026"
DUAL_AITAB = "root / x86_64 gzip none\nroot / i686 gzip none\nshare /usr/share any gzip none\n"


def _sources(tmp: Path) -> Path:
    src = tmp / "src"
    for arch in ("x86_64", "i686"):
        (src / arch / "root" / "etc").mkdir(parents=True, exist_ok=True)
        (src / arch / "root" / "etc" / "hostname").write_text(f"live-{arch}\n")
    (src / "any" / "share").mkdir(parents=True, exist_ok=True)
    (src / "any" / "share" / "README").write_text("shared\n")
    return src


def _build(
    tmp: Path,
    *,
    aitab: str = DUAL_AITAB,
    boot: BootOptions | None = None,
    iso: str | None = "live.iso",
    out: str = "out",
    src: Path | None = None,
) -> BuildResult:
    (tmp / "aitab").write_text(aitab)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SOURCE_DATE_EPOCH", str(EPOCH))
        return build(
            tmp / "aitab",
            src or _sources(tmp),
            tmp / out,
            iso=None if iso is None else tmp / iso,
            label=LABEL,
            boot=boot,
            log=lambda _: None,
        )


def _dual_boot(tmp: Path, **kw: object) -> BootOptions:
    files = {arch: write_boot_pair(tmp / "kernels", arch) for arch in ("x86_64", "i686")}
    return BootOptions(files=files, **kw)  # type: ignore[arg-type]


def _run(*argv: str) -> str:
    return subprocess.run(argv, capture_output=True, check=True, text=True).stdout


@pytest.fixture(scope="module")
def dual(tmp_path_factory: pytest.TempPathFactory) -> BuildResult:
    tmp = tmp_path_factory.mktemp("dual")
    return _build(tmp, boot=_dual_boot(tmp, serial=True, timeout=3, append="quiet"))


def test_the_layout_of_a_bootable_medium(dual: BuildResult) -> None:
    assert dual.iso is not None
    listing = _run("xorriso", "-indev", str(dual.iso), "-find", "/", "-not", "-type", "d")
    files = sorted(line.strip("'") for line in listing.splitlines())
    boot = [f"/arch/boot/{a}/{n}" for a in ("i686", "x86_64") for n in ("archiso.img", "vmlinuz")]
    syslinux = [f"/syslinux/{n}" for n in ("isolinux.bin", *loaders.SYSLINUX_MODULES)]
    for name in [*boot, *syslinux, "/syslinux/syslinux.cfg", "/syslinux/boot.cat"]:
        assert name in files, name
    assert "/grub/grub.cfg" in files and "/arch/aitab" in files
    for files_of in dual.boot:
        placed = dual.iso.parent / "out" / "arch" / "boot" / files_of.arch
        assert (placed / "vmlinuz").read_bytes() == files_of.kernel.path.read_bytes()
        assert (placed / "archiso.img").read_bytes() == files_of.initramfs.path.read_bytes()


def test_el_torito_for_bios_and_uefi_and_a_hybrid_partition_table(dual: BuildResult) -> None:
    assert dual.iso is not None
    report = _run(
        "xorriso", "-indev", str(dual.iso), "-report_el_torito", "plain",
        "-report_system_area", "plain",
    )  # fmt: skip
    # BIOS: isolinux, no emulation, 4 sectors loaded, patched with the boot info table
    assert re.search(r"El Torito boot img\s+:\s+1\s+BIOS\s+y\s+none\s+0x0000\s+0x00\s+4", report)
    assert re.search(r"El Torito img path\s+:\s+1\s+/syslinux/isolinux.bin", report)
    assert re.search(r"El Torito boot img\s+:\s+2\s+UEFI\s+y\s+none", report)
    # the isohybrid MBR (bootable), partition 1 at 32 KiB, the EFI partition as type 0xef
    assert re.search(r"System area summary: MBR isohybrid cyl-align-\w+ GPT", report)
    assert re.search(r"MBR partition\s+:\s+1\s+0x80\s+0x00\s+64\s+", report)
    assert re.search(r"MBR partition\s+:\s+2\s+0x00\s+0xef\s+", report)
    assert re.search(r"GPT type GUID\s+:\s+\d+\s+28732ac11ff8d211ba4b00a0c93ec93b", report)


def test_the_efi_partition_holds_grub_for_both_uefis(dual: BuildResult, tmp_path: Path) -> None:
    assert dual.iso is not None
    table = _run("sfdisk", "--dump", str(dual.iso))
    start, size = map(
        int,
        re.search(r"\.iso2 : start=\s*(\d+), size=\s*(\d+), type=ef", table).groups(),  # type: ignore[union-attr]
    )
    esp = tmp_path / "esp.img"
    with dual.iso.open("rb") as f:
        f.seek(start * 512)
        esp.write_bytes(f.read(size * 512))
    names = _run("mdir", "-i", str(esp), "-b", "-/", "::/")
    assert sorted(names.split()) == [
        "::/EFI/",
        "::/EFI/BOOT/",
        "::/EFI/BOOT/BOOTIA32.EFI",
        "::/EFI/BOOT/BOOTX64.EFI",
        "::/grub/",
        "::/grub/grub.cfg",
    ]
    for name, machine in (("BOOTX64.EFI", "x86-64"), ("BOOTIA32.EFI", "Intel 80386")):
        _run("mcopy", "-i", str(esp), f"::/EFI/BOOT/{name}", str(tmp_path / name))
        assert machine in _run("file", str(tmp_path / name))
        # the embedded configuration: this volume, by the UUID GRUB and blkid give it
        assert b"search.fs_uuid 2026-11-30-00-53-20-00 root" in (tmp_path / name).read_bytes()
    assert "2026-11-30-00-53-20-00" in _run("mtype", "-i", str(esp), "::/grub/grub.cfg")
    assert "LABEL=ARCHISO_EFI" in _run("blkid", "-o", "export", str(esp)).replace('"', "")


def test_the_volume_is_what_grub_searches_and_the_menus_say(dual: BuildResult) -> None:
    assert dual.iso is not None
    blkid = _run("blkid", "-o", "export", str(dual.iso))
    assert f"UUID={menus.volume_uuid(EPOCH)}" in blkid and f"LABEL={LABEL}" in blkid
    tree = dual.iso.parent / "out"
    syslinux = (tree / "syslinux" / "syslinux.cfg").read_text()
    grub = (tree / "grub" / "grub.cfg").read_text()
    params = f"archisobasedir=arch archisolabel={LABEL} console=tty0 console=ttyS0,115200 quiet"
    assert syslinux.count(f"APPEND {params}\n") == 2 and "SERIAL 0 115200" in syslinux
    assert grub.count(f"/vmlinuz {params} copytoram=y\n") == 2
    assert "cpuid" not in grub  # the amd64 header of fake_boot is not mixed-mode
    assert "TIMEOUT 30" in syslinux and "set timeout=3" in grub


def test_the_same_inputs_give_the_same_bytes(dual: BuildResult, tmp_path: Path) -> None:
    """Other paths, other file times, another day: the same ISO, byte for byte."""
    assert dual.iso is not None
    boot = _dual_boot(tmp_path, serial=True, timeout=3, append="quiet")
    for kernel, initramfs in boot.files.values():
        for path in (kernel, initramfs):
            path.touch()
    again = _build(tmp_path, boot=boot, out="elsewhere", iso="again.iso")
    assert again.iso is not None
    assert again.iso.read_bytes() == dual.iso.read_bytes()


def test_the_kernels_are_found_in_the_root_images_source(tmp_path: Path) -> None:
    src = _sources(tmp_path)
    for arch in ("x86_64", "i686"):
        boot = src / arch / "root" / "boot"
        kernel, initramfs = write_boot_pair(boot, arch)
        kernel.rename(boot / "vmlinuz-linux")
        initramfs.rename(boot / "initramfs-linux.img")
    result = _build(tmp_path, src=src, boot=BootOptions())
    assert sorted(b.arch for b in result.boot) == ["i686", "x86_64"]
    assert {b.kernel.path.name for b in result.boot} == {"vmlinuz-linux"}
    assert result.iso is not None and result.iso.exists()


def _nothing_written(tmp: Path) -> None:
    assert not (tmp / "out").exists() and not (tmp / "live.iso").exists()


@pytest.mark.parametrize(
    ("aitab", "files", "message"),
    [
        (
            DUAL_AITAB,
            {"x86_64": "x86_64"},
            "no kernel for the i686 images: give --boot i686=KERNEL,INITRAMFS, or put them in "
            ".*/src/i686/root/boot .* or --no-boot",
        ),
        (
            DUAL_AITAB,
            {"x86_64": "i686", "i686": "i686"},
            r"vmlinuz-i686 is an i686 kernel 6.1.0-57-686 \(32-bit\), not a kernel for x86_64",
        ),
        (
            "root / x86_64 gzip none\n",
            {"x86_64": "x86_64", "i686": "i686"},
            r"--boot i686=...: .*aitab has no image for i686 \(it has images for x86_64 and any\)",
        ),
        (
            "share / any gzip none\n",
            {},
            "has images for any architecture only: say which kernel boots them",
        ),
        (
            DUAL_AITAB,
            {"x86_64": "x86_64", "i686": "i686", "arm": "x86_64"},
            "--boot arm=...: unknown architecture, expected x86_64 or i686",
        ),
    ],
)
def test_wrong_boot_files_are_refused_before_anything_is_written(
    tmp_path: Path, aitab: str, files: dict[str, str], message: str
) -> None:
    given = {
        arch: write_boot_pair(tmp_path / "kernels" / kind, kind) for arch, kind in files.items()
    }
    with pytest.raises(InputError, match=message):
        _build(tmp_path, aitab=aitab, boot=BootOptions(files=given))
    _nothing_written(tmp_path)


def test_several_kernels_in_the_source_ask_for_a_choice(tmp_path: Path) -> None:
    src = _sources(tmp_path)
    boot = src / "x86_64" / "root" / "boot"
    for name in ("linux", "linux-lts"):
        kernel, initramfs = write_boot_pair(boot / name, "x86_64")
        kernel.rename(boot / f"vmlinuz-{name}")
        initramfs.rename(boot / f"initramfs-{name}.img")
    with pytest.raises(InputError, match=r"has several kernels for x86_64 .*: choose one with"):
        _build(tmp_path, src=src, aitab="root / x86_64 gzip none\n", boot=BootOptions())
    _nothing_written(tmp_path)


def test_a_menu_that_cannot_boot_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    boot = _dual_boot(tmp_path, append="cow_spacesize=12Q")
    with pytest.raises(InputError, match="--append: cow_spacesize=12Q is not valid"):
        _build(tmp_path, boot=boot)
    _nothing_written(tmp_path)


def test_without_an_iso_the_kernels_are_placed_where_found(tmp_path: Path) -> None:
    result = _build(tmp_path, iso=None, boot=BootOptions(required=False))
    assert result.boot == () and result.iso is None  # none given, none found: images only
    result = _build(tmp_path, iso=None, boot=_dual_boot(tmp_path, required=False), out="o2")
    assert (tmp_path / "o2/arch/boot/i686/vmlinuz").exists()
    assert not (tmp_path / "o2/syslinux").exists()


@attrs.frozen
class _Cli:
    status: int
    out: str
    err: str


def _cli(capsys: pytest.CaptureFixture[str], *argv: str) -> _Cli:
    status = cli_main(["build", *argv])
    captured = capsys.readouterr()
    return _Cli(status, captured.out, captured.err)


def test_the_command_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SOURCE_DATE_EPOCH", str(EPOCH))
    src = _sources(tmp_path)
    (tmp_path / "aitab").write_text("root / x86_64 gzip none\n")
    kernel, initramfs = write_boot_pair(tmp_path / "k", "x86_64")
    common = ["--aitab", str(tmp_path / "aitab"), "--src", str(src), "--label", LABEL]

    run = _cli(capsys, *common, "--out", str(tmp_path / "o1"), "--iso", str(tmp_path / "a.iso"))
    assert run.status == 2 and run.out == ""
    assert run.err.startswith("archiso-hook: error: no kernel for the x86_64 images: give --boot")
    assert run.err.count("\n") == 1

    run = _cli(capsys, *common, "--out", str(tmp_path / "o1"), "--boot", f"x86_64={kernel}")
    assert run.status == 2 and "expected ARCH=KERNEL,INITRAMFS" in run.err

    boot = f"x86_64={kernel},{initramfs}"
    iso = tmp_path / "b.iso"
    run = _cli(capsys, *common, "--out", str(tmp_path / "o2"), "--iso", str(iso), "--boot", boot,
               "--title", "Arch Linux", "--timeout", "0")  # fmt: skip
    assert run.status == 0, run.err
    assert run.out.splitlines()[-1] == str(iso)
    cfg = (tmp_path / "o2" / "syslinux" / "syslinux.cfg").read_text()
    assert "MENU LABEL Arch Linux (x86_64)" in cfg and "DEFAULT x86_64" in cfg

    data = tmp_path / "c.iso"
    run = _cli(capsys, *common, "--out", str(tmp_path / "o3"), "--iso", str(data), "--no-boot")
    assert run.status == 0, run.err
    assert "El Torito" not in _run("xorriso", "-indev", str(data), "-report_el_torito", "plain")

    run = _cli(capsys, *common, "--out", "/dev/null/media", "--no-boot")
    assert (run.status, run.err.splitlines()[-1]) == (
        1,
        "archiso-hook: error: cannot write /dev/null/media/arch: Not a directory",
    )
