"""What the tests, the demo and the benchmarks share: the initramfs with the project's
hook, built from the staged install (`make stage`) as mkinitcpio would on a system."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from vm import lab_dir
from vm.initramfs import build_initramfs
from vm.kernel import Kernel
from vm.media import I386_ROOT, STAGE

#: What the README recommends: the hook is its own coldplug, without udev.
HOOKS = ("base", "archiso")
#: The hook after udev's coldplug, waiting on udev's events (kept, and tested).
UDEV_HOOKS = ("base", "udev", "archiso")
#: The network boot hooks, as archiso's releng HOOKS list them (after udev).
PXE_HOOKS = (
    *UDEV_HOOKS, "archiso_pxe_common", "archiso_pxe_http", "archiso_pxe_nbd", "archiso_pxe_nfs"
)  # fmt: skip


def staged_hook() -> Path:
    """The frozen tree `make stage` installed; an error saying so if it is missing."""
    hook = STAGE / "usr/lib/archiso-hook"
    if not (hook / "archiso-hook").exists():
        raise FileNotFoundError(f"{hook}/archiso-hook is missing: run `make stage` first")
    return hook


def archiso_initramfs(kernel: Kernel, out: Path | None = None, *, hwdb: bool = False) -> Path:
    """HOOKS=(base archiso) for `kernel`, with the staged archiso-hook. `hwdb`: instead
    HOOKS=(base udev archiso) with udev's hardware database, as Arch's mkinitcpio (v41)
    adds it."""
    if hwdb:
        out = out or lab_dir() / "initramfs-archiso-hwdb.img"
        return _staged_initramfs(kernel, UDEV_HOOKS, out, env={"LAB_UDEV_HWDB": "1"})
    return _staged_initramfs(kernel, HOOKS, out or lab_dir() / "initramfs-archiso.img")


def udev_initramfs(kernel: Kernel, out: Path | None = None) -> Path:
    """HOOKS=(base udev archiso): the hook waits on udev's events and links."""
    out = out or lab_dir() / "initramfs-archiso-udev.img"
    return _staged_initramfs(kernel, UDEV_HOOKS, out)


def pxe_initramfs(
    kernel: Kernel, out: Path | None = None, *, ca_bundle: Path | None = None
) -> Path:
    """HOOKS=(base udev archiso archiso_pxe_*): network drivers, nbd and NFS modules too.
    `ca_bundle`: the CA certificates https servers are checked against (mkinitcpio.conf's
    ARCHISO_CA_BUNDLE), instead of the system's."""
    env = {"ARCHISO_CA_BUNDLE": str(ca_bundle)} if ca_bundle else {}
    out = out or lab_dir() / "initramfs-archiso-pxe.img"
    return _staged_initramfs(kernel, PXE_HOOKS, out, env=env)


def signing_initramfs(
    kernel: Kernel,
    out: Path,
    *,
    gpg_keys: Path | None = None,
    cert: Path | None = None,
    ca: Path | None = None,
) -> Path:
    """HOOKS=(base archiso) with the keys verify= and cms_verify= check signatures
    against, handed to the install hook as mkarchiso hands them: open descriptors in
    ARCHISO_GNUPG_FD (public keys), ARCHISO_TLS_FD and ARCHISO_TLSCA_FD."""
    fds = {
        name: path
        for name, path in (
            ("ARCHISO_GNUPG_FD", gpg_keys), ("ARCHISO_TLS_FD", cert), ("ARCHISO_TLSCA_FD", ca)
        )
        if path is not None
    }  # fmt: skip
    return _staged_initramfs(kernel, HOOKS, out, fds=fds)


def archiso_initramfs_i686(kernel: Kernel, out: Path | None = None) -> Path:
    """HOOKS=(base archiso) for Debian's 686 `kernel`, built inside the i386 root
    (`make stage` makes it, tools/i386-root) as archiso builds i686 images in an i686
    chroot: the image gets i386 busybox and kmod and the i686 archiso-hook."""
    out = out or lab_dir() / "initramfs-archiso-i686.img"
    return _staged_initramfs(kernel, HOOKS, out, chroot=I386_ROOT)


def _staged_initramfs(
    kernel: Kernel,
    hooks: tuple[str, ...],
    out: Path,
    *,
    chroot: Path | None = None,
    env: Mapping[str, str] | None = None,
    fds: Mapping[str, Path] | None = None,
) -> Path:
    staged_hook()
    return build_initramfs(
        kernel,
        list(hooks),
        out,
        hook_dirs=[STAGE / "usr/lib/initcpio"],
        env={"ARCHISO_HOOK_SYSROOT": str(STAGE), **(env or {})},
        chroot=chroot,
        fds=fds or {},
    )
