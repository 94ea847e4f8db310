"""The QEMU lab's own tools, without a guest: vmlinux extraction, the bash install API
(via a bash harness), mkinitramfs output and reproducibility, the runtime command-line
parser (busybox ash), the live root tree and its init's checks (in a chroot), the QEMU
command line, and shellcheck on the lab's scripts. Booting with them:
tests/vm/test_00_lab.py.

Some need Debian's kernel package (vm.kernel.fetch_kernel: apt, cached in build/lab).
"""

from __future__ import annotations

import hashlib
import lzma
import os
import re
import shutil
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.lab_hooks import PERSIST_TOKEN, write_hook, write_lab_hooks
from vm import VM_DIR
from vm.initramfs import LAB_HOOKS, InitramfsError, build_initramfs
from vm.kernel import Kernel, KernelError, extract_vmlinux, fetch_kernel
from vm.liveroot import INIT_SCRIPT, LiverootError, make_liveroot, write_manifest
from vm.qemu import DEFAULT_APPEND, Drive, qemu_command

BASH = shutil.which("bash") or "/bin/bash"
BUSYBOX = "/bin/busybox"


@pytest.fixture(scope="module")
def kernel() -> Kernel:
    return fetch_kernel()


@pytest.fixture(scope="module")
def lab_hookdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_lab_hooks(tmp_path_factory.mktemp("labhooks"))


# --- kernel -----------------------------------------------------------------------------


def _fake_bzimage(payload: bytes, *, protocol: int = 0x20F) -> bytes:
    setup_sects = 1
    image = bytearray((setup_sects + 1) * 512)
    image[0x1F1] = setup_sects
    image[0x202:0x206] = b"HdrS"
    struct.pack_into("<H", image, 0x206, protocol)
    offset = 0x40
    struct.pack_into("<II", image, 0x248, offset, len(payload))
    return bytes(image) + b"\0" * offset + payload + b"\x11\x22\x33\x44"


def _fake_elf(machine: int) -> bytes:
    header = bytearray(64)
    header[:4] = b"\x7fELF"
    header[4] = 2
    struct.pack_into("<H", header, 18, machine)
    return bytes(header) + b"kernel" * 1000


def test_extract_vmlinux_from_xz_payload(tmp_path: Path) -> None:
    elf = _fake_elf(62)
    xz = lzma.compress(elf, format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC32)
    for protocol in (0x20F, 0x206):  # header fields, and the magic scan fallback
        bz = tmp_path / f"bz{protocol:x}"
        bz.write_bytes(_fake_bzimage(xz, protocol=protocol))
        out = extract_vmlinux(bz, tmp_path / f"vmlinux{protocol:x}", elf_machine=62)
        assert out.read_bytes() == elf
    with pytest.raises(KernelError, match="ELF machine 62, not 3"):
        extract_vmlinux(bz, tmp_path / "wrong", elf_machine=3)
    bz.write_bytes(_fake_bzimage(lzma.compress(b"not an elf", format=lzma.FORMAT_XZ)))
    with pytest.raises(KernelError, match="not an ELF"):
        extract_vmlinux(bz, tmp_path / "bad")
    bz.write_bytes(b"MZ" + b"\0" * 4096)
    with pytest.raises(KernelError, match="HdrS"):
        extract_vmlinux(bz, tmp_path / "bad")


def _elf_notes(data: bytes) -> Iterator[tuple[bytes, int]]:
    """(name, type) of the notes in the PT_NOTE segments of a 64-bit ELF."""
    (phoff,) = struct.unpack_from("<Q", data, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", data, 0x36)
    for i in range(phnum):
        p_type, _flags, p_offset, _vaddr, _paddr, p_filesz = struct.unpack_from(
            "<IIQQQQ", data, phoff + i * phentsize
        )
        if p_type != 4:  # PT_NOTE
            continue
        pos, end = p_offset, p_offset + p_filesz
        while pos + 12 <= end:
            namesz, descsz, ntype = struct.unpack_from("<III", data, pos)
            name = data[pos + 12 : pos + 12 + namesz].rstrip(b"\0")
            yield name, ntype
            pos += 12 + (namesz + 3) // 4 * 4 + (descsz + 3) // 4 * 4


def test_fetched_kernel_is_bootable_elf(kernel: Kernel) -> None:
    data = kernel.vmlinux.read_bytes()
    assert data[:4] == b"\x7fELF" and data[4] == 2  # ELFCLASS64
    assert struct.unpack_from("<H", data, 18)[0] == 62  # EM_X86_64
    # QEMU boots an ELF vmlinux through PVH: XEN_ELFNOTE_PHYS32_ENTRY (18) must be there.
    assert (b"Xen", 18) in set(_elf_notes(data))
    assert kernel.bzimage.is_file() and kernel.bzimage.stat().st_size < len(data)
    moddir = kernel.moduleroot / "lib" / "modules" / kernel.version
    assert moddir == kernel.moduledir
    assert (moddir / "modules.dep.bin").is_file()
    assert (moddir / "kernel" / "fs" / "ext4" / "ext4.ko").is_file()
    assert fetch_kernel() == kernel  # cached: same paths


# --- the install API (bash harness) -----------------------------------------------------


def _harness(
    script: str,
    buildroot: Path,
    *,
    kernel: Kernel | None = None,
    hookdir: Path | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run `script` in bash after sourcing vm/initcpio/functions into a fresh buildroot;
    it ends by printing ERRORS=<_builderrors>."""
    prologue = f"""
        set -o pipefail
        BUILDROOT={buildroot}
        EARLYROOT={buildroot}.early
        KERNELVERSION={kernel.version if kernel else "none"}
        _optmoduleroot={kernel.moduleroot if kernel else "''"}
        _d_kmoduledir={kernel.moduledir if kernel else "''"}
        _d_hooks={hookdir / "hooks" if hookdir else "''"}
        _d_install={hookdir / "install" if hookdir else "''"}
        _d_library={LAB_HOOKS}
        _builderrors=0
        . {LAB_HOOKS / "functions"}
        initialize_buildroot "$BUILDROOT"
    """
    return subprocess.run(
        [BASH, "-c", f"{prologue}\n{script}\necho ERRORS=$_builderrors"],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "LC_ALL": "C", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
    )


def test_functions_add_file_and_symlinks(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "real.txt").write_text("real\n")
    (src / "link.txt").symlink_to("real.txt")
    (src / "sub" / "deep.txt").write_text("deep\n")
    (src / ".hidden").write_text("hidden\n")
    (src / "sub" / "deep.lnk").symlink_to("deep.txt")
    (tmp_path / "linkdir").symlink_to("src")
    root = tmp_path / "root"
    proc = _harness(
        f"""
        add_file {src}/link.txt
        add_file {src}/real.txt /etc/
        add_file {src}/real.txt /etc/secret 600
        printf 'from stdin\\n' | add_file - /etc/stdin.txt 640
        add_file {tmp_path}/linkdir/real.txt
        add_symlink /etc/hostlink {src}/link.txt
        add_symlink {src}/sub/deep.lnk
        add_full_dir {src} '*' {src}
        add_full_dir {src} '*.txt' {tmp_path}
        add_dir /var/lib/lab 700
        map add_dir /a relative || echo map-failures=$?
        """,
        root,
    )
    assert proc.returncode == 0, proc.stderr
    assert "ERRORS=0" in proc.stdout, proc.stderr
    assert "map-failures=1" in proc.stdout
    inside = root / str(src).lstrip("/")
    # a symlink source: its realpath is added, plus a link to it
    assert (inside / "real.txt").read_text() == "real\n"
    assert os.readlink(inside / "link.txt") == f"{src}/real.txt"
    assert (root / "etc/real.txt").read_text() == "real\n"
    assert (root / "etc/secret").stat().st_mode & 0o777 == 0o600
    assert (root / "etc/stdin.txt").read_text() == "from stdin\n"
    assert (root / "etc/stdin.txt").stat().st_mode & 0o777 == 0o640
    # SRC == DEST under a symlinked directory: stored under the real directory + dir link
    assert os.readlink(root / str(tmp_path / "linkdir").lstrip("/")) == "src"
    # add_symlink: a symlink target is realpath'd; one argument keeps a same-dir link
    assert os.readlink(root / "etc/hostlink") == f"{src}/real.txt"
    assert os.readlink(inside / "sub/deep.lnk") == "deep.txt"
    # add_full_dir with strip_prefix (v41): paths relative to the prefix, no dot files
    assert (root / "real.txt").read_text() == "real\n"
    assert os.readlink(root / "link.txt") == "real.txt"
    assert (root / "sub/deep.txt").read_text() == "deep\n"
    assert not (root / ".hidden").exists()
    # the glob filters files and links by their full host path
    assert (root / "src/sub/deep.txt").is_file() and (root / "src/link.txt").is_symlink()
    assert not (root / "src/sub/deep.lnk").is_symlink()
    assert (root / "var/lib/lab").stat().st_mode & 0o777 == 0o700
    assert (root / "a").is_dir()


def test_functions_count_build_errors(tmp_path: Path) -> None:
    proc = _harness(
        """
        add_file /nonexistent/file || echo add_file=$?
        add_binary no-such-binary-anywhere || echo add_binary=$?
        add_udev_rule no-such-rule.rules || echo add_udev_rule=$?
        add_dir relative || echo add_dir=$?
        ln -s /tmp "$BUILDROOT/escape"
        add_file /etc/os-release /escape/lab-must-not-exist || echo escape=$?
        add_all_modules /fs/ext4/ || echo none-kernel=$?
        """,
        tmp_path / "root",
    )
    assert "add_file=1" in proc.stdout and "add_binary=1" in proc.stdout
    assert "add_udev_rule=1" in proc.stdout and "add_dir=1" in proc.stdout
    assert "none-kernel" not in proc.stdout  # KERNELVERSION=none: module calls succeed
    assert "escape=1" in proc.stdout and not Path("/tmp/lab-must-not-exist").exists()
    assert "ERRORS=3" in proc.stdout  # the missing rule and add_dir are not counted
    assert "==> ERROR: file not found: '/nonexistent/file'" in proc.stderr
    assert "==> ERROR: binary not found: 'no-such-binary-anywhere'" in proc.stderr


def test_functions_add_binary_and_udev_rule(tmp_path: Path) -> None:
    script = tmp_path / "script.sh"
    script.write_text("#!/usr/bin/env python3\nprint('hi')\n")
    script.chmod(0o755)
    root = tmp_path / "root"
    proc = _harness(
        f"""
        add_binary switch_root
        add_binary {script} /usr/bin/lab-script
        add_udev_rule 60-persistent-storage.rules
        add_udev_rule 64-btrfs
        """,
        root,
    )
    assert "ERRORS=0" in proc.stdout, proc.stderr
    # util-linux switch_root (from /usr/sbin, through the usr/sbin -> bin link) + glibc
    assert (root / "usr/bin/switch_root").is_file()
    assert not (root / "usr/bin/switch_root").is_symlink()
    assert list(root.glob("usr/lib/*/libc.so.6"))
    assert (root / "lib64/ld-linux-x86-64.so.2").exists()
    # a script: the interpreter is only checked, with a warning
    assert (root / "usr/bin/lab-script").is_file()
    assert "Possibly missing '/usr/bin/env'" in proc.stderr
    assert "Possibly missing 'python3'" in proc.stderr
    # rules and the programs they IMPORT/RUN
    assert (root / "usr/lib/udev/rules.d/60-persistent-storage.rules").is_file()
    assert (root / "usr/lib/udev/rules.d/64-btrfs.rules").is_file()
    for helper in ("ata_id", "scsi_id"):
        assert (root / "usr/lib/udev" / helper).is_file()
    assert (root / "usr/bin/udevadm").is_file()  # RUN+="/bin/udevadm ..." in 64-btrfs


def test_functions_add_module(tmp_path: Path, kernel: Kernel) -> None:
    proc = _harness(
        """
        add_module ext4
        add_module virtio-blk.ko
        add_module 'no_such_module?'
        add_module ext4
        add_module no_such_module || echo missing=$?
        add_all_modules '/drivers/block/(loop|nbd)\\.ko'
        add_checked_modules -f 'input' '/drivers/virtio/virtio_(mmio|input)'
        add_all_modules '/no/such/dir/' || echo nomatch=$?
        printf 'MOD %s\\n' "${!_modpaths[@]}"
        printf 'ADDED %s=%s\\n' ext4 "${_addedmodules[ext4]}" \\
            virtio_blk "${_addedmodules[virtio_blk]}"
        """,
        tmp_path / "root",
        kernel=kernel,
    )
    assert "missing=1" in proc.stdout and "ERRORS=1" in proc.stdout, proc.stderr
    assert "==> ERROR: module not found: 'no_such_module'" in proc.stderr
    modules = {Path(line.split()[1]).name for line in proc.stdout.splitlines() if "MOD " in line}
    # depends (jbd2, mbcache, crc16), the softdep crc32c, virtio_blk's depends
    assert {"ext4.ko", "jbd2.ko", "mbcache.ko", "crc16.ko", "crc32c_generic.ko"} <= modules
    assert {"virtio_blk.ko", "virtio.ko", "virtio_ring.ko"} <= modules
    # add_all_modules/add_checked_modules: ERE on the path, -f filters out
    assert {"loop.ko", "nbd.ko", "virtio_mmio.ko"} <= modules
    assert "virtio_input.ko" not in modules
    assert "nomatch=1" in proc.stdout
    assert "ADDED ext4=1" in proc.stdout and "ADDED virtio_blk=1" in proc.stdout


def test_functions_add_runscript_order(tmp_path: Path) -> None:
    hookdir = tmp_path / "hooks"
    for name in ("first", "second"):
        write_hook(
            hookdir,
            name,
            "build() {\n    add_runscript\n}\n",
            "#!/usr/bin/ash\nrun_earlyhook() { :; }\nrun_hook() { :; }\n"
            "run_cleanuphook() { :; }\nrun_emergencyhook() { :; }\n",
        )
    root = tmp_path / "root"
    proc = _harness(
        """
        run_build_hook first
        run_build_hook second
        run_build_hook missing-hook || echo missing=$?
        for k in early hooks late cleanup emergency; do echo "RUN $k=[${_runhooks[$k]-}]"; done
        """,
        root,
        hookdir=hookdir,
    )
    assert "RUN early=[ first second]" in proc.stdout
    assert "RUN hooks=[ first second]" in proc.stdout
    assert "RUN late=[]" in proc.stdout
    assert "RUN cleanup=[second first ]" in proc.stdout
    assert "RUN emergency=[second first ]" in proc.stdout
    assert "missing=1" in proc.stdout and "ERRORS=1" in proc.stdout
    assert (root / "hooks/first").stat().st_mode & 0o777 == 0o755


# --- mkinitramfs ------------------------------------------------------------------------


def _cpio_list(image: Path) -> list[str]:
    data = subprocess.run(["zstd", "-dc", str(image)], capture_output=True, check=True).stdout
    listing = subprocess.run(
        ["cpio", "-it", "--quiet"], input=data, capture_output=True, check=True
    ).stdout
    return listing.decode().splitlines()


def test_mkinitramfs_image_is_reproducible_and_complete(
    kernel: Kernel, lab_hookdir: Path, tmp_path: Path
) -> None:
    envhook = tmp_path / "envhook"
    write_hook(
        envhook,
        "labenv",
        "build() {\n"
        "    printf '%s\\n' \"$LAB_TEST_VALUE\" | add_file - /etc/lab-env 644\n"
        "    add_runscript\n"
        "}\n",
        "#!/usr/bin/ash\nrun_latehook() { :; }\n",
    )
    images = []
    for n in (1, 2):
        out = tmp_path / f"image{n}.img"
        started = time.monotonic()
        build_initramfs(
            kernel,
            ["base", "udev", "labroot", "labenv"],
            out,
            hook_dirs=[lab_hookdir, envhook],
            env={"LAB_TEST_VALUE": "from-the-environment"},
            modules=["loop"],
            builddir=tmp_path / f"build{n}",
        )
        print(f"initramfs build {n}: {time.monotonic() - started:.2f} s", file=sys.stderr)
        images.append(out)
    assert images[0].read_bytes() == images[1].read_bytes()
    print(f"initramfs size: {images[0].stat().st_size} bytes", file=sys.stderr)

    names = set(_cpio_list(images[0]))
    moddir = f"usr/lib/modules/{kernel.version}"
    for name in (
        "init",
        "init_functions",
        "config",
        "hooks/udev",
        "hooks/labroot",
        "usr/bin/busybox",
        "usr/bin/ash",
        "usr/bin/switch_root",
        "usr/bin/kmod",
        "usr/bin/modprobe",
        "usr/lib/systemd/systemd-udevd",
        "usr/lib/udev/rules.d/80-drivers.rules",
        f"{moddir}/modules.dep.bin",
        f"{moddir}/modules.alias.bin",
        f"{moddir}/modules.devname",
        f"{moddir}/modules.softdep",
        f"{moddir}/kernel/fs/ext4/ext4.ko",
        f"{moddir}/kernel/drivers/block/loop.ko",
        "etc/lab-env",
        "new_root",
        "lib64",
    ):
        assert name in names, name
    for name in ("modules.dep", "modules.alias", "modules.order", "modules.builtin"):
        assert f"{moddir}/{name}" not in names

    root = tmp_path / "build1"
    assert (root / "config").read_text() == (
        'MODULES="loop"\n'
        'EARLYHOOKS="udev"\n'
        'HOOKS="udev labroot"\n'
        'LATEHOOKS="labenv"\n'
        'CLEANUPHOOKS="labroot udev"\n'
        'EMERGENCYHOOKS=""\n'
    )
    assert (root / "etc/lab-env").read_text() == "from-the-environment\n"
    assert os.readlink(root / "usr/bin/ash") == "busybox"
    assert os.readlink(root / "usr/bin/modprobe") == "kmod"
    assert (root / "usr/bin/switch_root").read_bytes() == Path("/usr/sbin/switch_root").read_bytes()
    assert (root / "init").read_bytes() == (LAB_HOOKS / "init").read_bytes()
    assert os.readlink(root / "sbin") == "usr/bin" and os.readlink(root / "usr/sbin") == "bin"


def test_mkinitramfs_fails_on_build_errors(kernel: Kernel, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    write_hook(
        broken,
        "broken",
        "build() {\n    add_binary /no/such/binary\n    add_module 'optional_missing?'\n}\n",
        "",
    )
    with pytest.raises(InitramfsError, match=r"binary not found|file not found"):
        build_initramfs(kernel, ["base", "broken"], tmp_path / "a.img", hook_dirs=[broken])
    with pytest.raises(InitramfsError, match=r"Hook 'nosuchhook' cannot be found"):
        build_initramfs(kernel, ["base", "nosuchhook"], tmp_path / "b.img", hook_dirs=[broken])
    usage = subprocess.run(
        [str(VM_DIR / "mkinitramfs")], capture_output=True, text=True, check=False
    )
    assert usage.returncode == 2 and "usage: mkinitramfs" in usage.stderr


# --- runtime functions (busybox ash) ----------------------------------------------------


def _ash(script: str, tmp_path: Path) -> str:
    proc = subprocess.run(
        [
            BUSYBOX,
            "ash",
            "-c",
            f"cmdline_cache={tmp_path}/cmdline\n. {LAB_HOOKS}/init_functions\n" + script,
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


@pytest.mark.parametrize(
    ("cmdline", "queries"),
    [
        ("root=/dev/sda1 rw quiet", {"root": "/dev/sda1", "rw": "y", "quiet": "y"}),
        ('a="b c d" e=f', {"a": "b c d", "e": "f"}),
        ("x='single quoted' y=\"\"", {"x": "single quoted", "y": ""}),
        ("lab.check=write,mounts lab.check=files", {"lab.check": "files"}),
        ("one=1 #two=2 three=3", {"one": "1", "two": None, "three": None}),
        ('k="unterminated value', {"k": "unterminated value"}),
        ("key=with=equals", {"key": "with=equals"}),
        ("break=premount init=/bin/sh", {"break": "premount", "init": "/bin/sh"}),
        # keys named like the parser's own variables must not disturb it
        ('_pc_v=1 quote=x line=y key=k a="b c"', {"quote": "x", "key": "k", "a": "b c"}),
    ],
)
def test_parse_cmdline_and_getarg(
    cmdline: str, queries: dict[str, str | None], tmp_path: Path
) -> None:
    lines = [f"parse_cmdline <<'EOF'\n{cmdline}\nEOF"]
    for key in queries:
        lines.append(
            f"v=$(getarg '{key}'); st=$?; printf '%s=[%s] status=%s\\n' '{key}' \"$v\" $st"
        )
    out = _ash("\n".join(lines), tmp_path)
    for key, value in queries.items():
        if value is None:
            assert f"{key}=[] status=1" in out, out
        else:
            assert f"{key}=[{value}] status=0" in out, out


def test_parse_cmdline_variables_and_defaults(tmp_path: Path) -> None:
    out = _ash(
        "parse_cmdline <<'EOF'\n"
        "ro fstype=ext4 rd.debug init=/sbin/other foo-bar=1 archisobasedir=arch\n"
        "EOF\n"
        'echo "rwopt=$rwopt rootfstype=$rootfstype rd_debug=$rd_debug init=$init"\n'
        'echo "archisobasedir=$archisobasedir"\n'
        'echo "default=$(getarg missing fallback) foo-bar=$(getarg foo-bar)"\n',
        tmp_path,
    )
    assert "rwopt=ro rootfstype=ext4 rd_debug=y init=/sbin/other" in out
    assert "archisobasedir=arch" in out
    assert "default=fallback foo-bar=1" in out


# --- live root, QEMU command line, shellcheck -------------------------------------------


def test_make_liveroot_tree(tmp_path: Path) -> None:
    fake = tmp_path / "frozen"
    (fake / "_internal").mkdir(parents=True)
    shutil.copy2("/usr/bin/true", fake / "archiso-hook")
    libz = next(Path("/").glob("usr/lib/*/libz.so.1"))
    shutil.copy2(libz.resolve(), fake / "_internal" / "libz.so.1")
    root = make_liveroot(
        tmp_path / "root",
        hook_tree=fake,
        extra_files={"/usr/share/lab/run.sh": b"#!/bin/sh\necho hi\n", "etc/motd": b"m\n"},
    )
    assert (root / "sbin/init").read_bytes() == INIT_SCRIPT.read_bytes()
    assert os.access(root / "sbin/init", os.X_OK)
    assert "ID=archiso-hook-lab" in (root / "etc/os-release").read_text()
    assert os.readlink(root / "usr/bin/sh") == "busybox"
    assert (root / "usr/share/lab/run.sh").stat().st_mode & 0o777 == 0o755
    assert (root / "etc/motd").stat().st_mode & 0o777 == 0o644
    assert (root / "tmp").stat().st_mode & 0o7777 == 0o1777
    # The frozen tree runs in the root: glibc was copied in, libz comes from _internal.
    assert os.readlink(root / "usr/bin/archiso-hook") == "../lib/archiso-hook/archiso-hook"
    assert (root / "usr/lib/archiso-hook/_internal/libz.so.1").is_file()
    assert list(root.glob("usr/lib/*/libc.so.6"))
    subprocess.run(["chroot", str(root), "/usr/bin/archiso-hook"], check=True)

    manifest = write_manifest(root, exclude=["etc/motd"])
    lines = manifest.read_text().splitlines()
    entries = {line.split("  ", 1)[1]: line.split("  ", 1)[0] for line in lines}
    os_release = (root / "etc/os-release").read_bytes()
    assert entries["/etc/os-release"] == hashlib.sha256(os_release).hexdigest()
    assert "/etc/motd" not in entries and "/lab/manifest.sha256" not in entries
    assert "/usr/bin/sh" not in entries  # symlinks are not recorded
    with pytest.raises(LiverootError, match="not empty"):
        make_liveroot(root)


def _in_liveroot(root: Path, script: str) -> str:
    """Run `script` after the live root's init functions, in a chroot of `root` (no
    /proc there: getparam reads a plain /proc/cmdline file, if the test writes one)."""
    proc = subprocess.run(
        [
            "chroot",
            str(root),
            "/bin/sh",
            "-c",
            f'LAB_INIT_LIBRARY=y . /sbin/init; {script}; echo "rc=$? reason=$reason"',
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    return proc.stdout


def test_liveroot_init_checks_in_chroot(tmp_path: Path) -> None:
    """The init's check functions, run on the host in a chroot of the live root."""
    fake = tmp_path / "frozen"
    (fake / "_internal").mkdir(parents=True)
    (fake / "archiso-hook").write_text(
        '#!/bin/sh\necho "warning on stderr" >&2\nprintf \'{"args": "%s"}\' "$*"\n'
    )
    (fake / "archiso-hook").chmod(0o755)
    root = make_liveroot(tmp_path / "root", hook_tree=fake, extra_files={"/etc/a": b"a"})
    write_manifest(root)
    write_manifest(root / "etc", root / "usr/share/lab/manifest.sha256", prefix="/etc")
    (root / "etc/a").write_bytes(b"changed")

    def run(check: str) -> str:
        return _in_liveroot(root, check)

    out = run("check_status")
    assert "LAB-RESULT status stderr=warning on stderr\n" in out
    assert 'LAB-STATUS-BEGIN\n{"args": "status --json"}\nLAB-STATUS-END\n' in out
    assert "LAB-RESULT status exit=0\nrc=0" in out
    out = run("check_files")
    assert "LAB-RESULT files bad=/etc/a: FAILED" in out
    assert re.search(
        r"^rc=1 reason=1 of \d+ files failed in /lab/manifest.sha256, "
        r"1 of \d+ files failed in /usr/share/lab/manifest.sha256$",
        out,
        re.M,
    ), out
    (root / "usr/lib/archiso-hook/archiso-hook").write_text("#!/bin/sh\nexit 3\n")
    out = run("check_status")
    assert "rc=1 reason=archiso-hook status --json exited with 3" in out


def test_liveroot_persist_checks_in_chroot(tmp_path: Path) -> None:
    root = make_liveroot(tmp_path / "root")
    cmdline = root / "proc/cmdline"
    cmdline.write_text(f"console=ttyS0 lab.check=persist-write lab.token={PERSIST_TOKEN}\n")
    persist = root / "root/lab-persist.txt"
    out = _in_liveroot(root, "check_persist_write")
    assert out == f"LAB-RESULT persist-write token={PERSIST_TOKEN}\nrc=0 reason=\n"
    assert persist.read_text() == f"{PERSIST_TOKEN}\n"
    out = _in_liveroot(root, "check_persist_read")
    assert out == f"LAB-RESULT persist-read present=yes content={PERSIST_TOKEN}\nrc=0 reason=\n"
    persist.unlink()
    out = _in_liveroot(root, "check_persist_read")
    assert out == "LAB-RESULT persist-read present=no content=\nrc=0 reason=\n"
    persist.mkdir()  # there, but head cannot read it
    out = _in_liveroot(root, "check_persist_read")
    assert out == "rc=1 reason=/root/lab-persist.txt exists but cannot be read\n"
    cmdline.write_text("console=ttyS0 lab.check=persist-write lab.tokens=x\n")
    out = _in_liveroot(root, "check_persist_write")
    assert out == "rc=1 reason=no lab.token= on the kernel command line\n"


def test_liveroot_poweroff_remounts_disk_filesystems(tmp_path: Path) -> None:
    """Read-write disk filesystems are remounted read-only, children first; API and /run
    mounts, read-only and memory filesystems are left alone; a refusal is reported."""
    root = make_liveroot(tmp_path / "root")
    (root / "proc/self").mkdir()
    (root / "proc/self/mountinfo").write_text(
        "22 1 254:2 / / rw,relatime shared:1 - ext4 /dev/vda2 rw\n"
        "23 22 0:5 / /dev rw,nosuid shared:2 - devtmpfs dev rw,size=1\n"
        "24 22 0:21 / /proc rw,nosuid,nodev,noexec shared:3 - proc proc rw\n"
        "25 22 0:22 / /run rw,nosuid,nodev shared:4 - tmpfs run rw\n"
        "26 25 7:0 / /run/archiso/bootmnt ro,relatime shared:5 - iso9660 /dev/sr0 ro\n"
        "27 25 8:1 / /run/archiso/cowspace rw,relatime - ext4 /dev/sda1 rw\n"
        "28 22 8:2 / /mnt/a\\040b rw,relatime shared:7 - vfat /dev/sda2 rw,fmask=0022\n"
        "29 22 8:3 / /usr/share ro,relatime shared:8 - ext4 /dev/sda3 rw\n"
        "30 22 8:4 / /srv rw,relatime shared:9 master:1 - xfs /dev/sda4 rw\n"
        "31 22 0:30 / /tmp rw,relatime - tmpfs tmp rw\n"
        "32 22 8:5 / /proceeds rw - ext3 /dev/sda5 rw\n"
    )
    (root / "usr/local/bin").mkdir(parents=True)
    fake_mount = root / "usr/local/bin/mount"  # first on the init's PATH
    fake_mount.write_text(
        '#!/bin/sh\necho "$*" >>/tmp/mount.log\n'
        '[ "$3" = /srv ] && { echo "mount: /srv: Device or resource busy" >&2; exit 1; }\n'
        "exit 0\n"
    )
    fake_mount.chmod(0o755)
    assert _in_liveroot(root, "rw_disk_mounts /proc/self/mountinfo") == (
        "/proceeds\n/srv\n/mnt/a b\n/\nrc=0 reason=\n"
    )
    assert _in_liveroot(root, "remount_readonly") == (
        "LAB: /proceeds remounted read-only\n"
        "LAB: cannot remount /srv read-only: mount: /srv: Device or resource busy\n"
        "LAB: /mnt/a b remounted read-only\n"
        "LAB: root remounted read-only\n"
        "rc=0 reason=\n"
    )
    assert (root / "tmp/mount.log").read_text() == (
        "-o remount,ro /proceeds\n-o remount,ro /srv\n-o remount,ro /mnt/a b\n-o remount,ro /\n"
    )


def test_qemu_command_line(tmp_path: Path) -> None:
    img = tmp_path / "disk,with,commas.img"
    img.write_bytes(b"\0" * 512)
    cmd = qemu_command(
        kernel=Path("/k"),
        initrd=Path("/i"),
        append="lab.check=write",
        drives=[
            Drive(img, "ide-cdrom", serial="CD0"),
            Drive(img, "virtio", readonly=True),
            Drive(img, "scsi-cd"),
            Drive(img, "usb", name="stick"),
            Drive(img, "ide-cdrom"),
        ],
        memory_mib=512,
        monitor=tmp_path / "mon.sock",
    )
    line = " ".join(cmd)
    assert line.startswith("qemu-system-x86_64 -accel tcg -M pc -m 512 -smp 1 -nodefaults")
    assert "-no-reboot" in cmd and "-display none" in line
    assert cmd[cmd.index("-append") + 1] == f"{DEFAULT_APPEND} lab.check=write"
    assert "panic=1" in DEFAULT_APPEND and "oops=panic" in DEFAULT_APPEND
    escaped = str(img).replace(",", ",,")
    drives = [cmd[i + 1] for i, arg in enumerate(cmd) if arg == "-drive"]
    devices = [cmd[i + 1] for i, arg in enumerate(cmd) if arg == "-device"]
    assert drives[0] == f"id=drive0,if=none,file={escaped},format=raw,media=cdrom,readonly=on"
    assert drives[1] == f"id=drive1,if=none,file={escaped},format=raw,readonly=on"
    assert drives[3] == f"id=stick,if=none,file={escaped},format=raw"
    assert devices == [
        "ide-cd,drive=drive0,id=drive0-dev,bus=ide.0,unit=0,serial=CD0",
        "virtio-blk-pci,drive=drive1,id=drive1-dev",
        "virtio-scsi-pci,id=scsi0",
        "scsi-cd,drive=drive2,id=drive2-dev,bus=scsi0.0",
        "qemu-xhci,id=xhci",
        "usb-storage,drive=stick,id=stick-dev,bus=xhci.0",
        "ide-cd,drive=drive4,id=drive4-dev,bus=ide.0,unit=1",
    ]
    assert f"unix:{tmp_path}/mon.sock,server=on,wait=off" in cmd
    with pytest.raises(ValueError, match="must be in"):
        Drive(img, "floppy")  # type: ignore[arg-type]


def test_lab_scripts_pass_shellcheck() -> None:
    shellcheck = shutil.which("shellcheck")
    if shellcheck is None:
        pytest.skip("shellcheck is not installed")
    runtime = [
        LAB_HOOKS / "init",
        LAB_HOOKS / "init_functions",
        *sorted((LAB_HOOKS / "hooks").iterdir()),
        INIT_SCRIPT,
    ]
    build = [LAB_HOOKS / "functions", *sorted((LAB_HOOKS / "install").iterdir())]
    build.append(VM_DIR / "mkinitramfs")
    for shell, files in (("sh", runtime), ("bash", build)):
        proc = subprocess.run(
            [shellcheck, "-s", shell, *map(str, files)],
            capture_output=True,
            text=True,
            check=False,
        )
        assert proc.returncode == 0, proc.stdout
