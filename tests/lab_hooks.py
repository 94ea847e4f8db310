"""The lab's own test hooks (lab only, never part of archiso-hook): mkinitcpio hooks whose
mount handlers mount an ext4 live root without the archiso hook, used by the lab's boot
tests (tests/vm/test_00_lab.py) and by the unit tests of its build tools
(tests/unit/test_lab_tools.py)."""

from __future__ import annotations

from pathlib import Path

ROOT_LABEL = "labroot"

# A lab-only hook: its mount handler mounts the ext4 root found by label through udev.
LABROOT_INSTALL = """\
#!/bin/bash
build() {
    map add_module virtio_pci virtio_blk ext4
    add_runscript
}

help() {
    cat <<HELPEOF
Lab only: mounts /dev/disk/by-label/\\$(getarg lab.root.label) read-write on /new_root.
HELPEOF
}
"""
LABROOT_RUNTIME = """\
#!/usr/bin/ash
run_hook() {
    mount_handler=lab_mount_handler
}

lab_mount_handler() {
    local dev up _idle
    dev="/dev/disk/by-label/$(getarg lab.root.label labroot)"
    if ! poll_device "$dev" 30; then
        err "lab: $dev did not appear"
        return 1
    fi
    if ! mount -t ext4 -o rw "$dev" "$1"; then
        err "lab: cannot mount $dev"
        return 1
    fi
    read -r up _idle </proc/uptime
    echo "LAB-INITRAMFS: mounted $dev on $1 uptime=$up"
}

run_cleanuphook() {
    local up _idle
    read -r up _idle </proc/uptime
    echo "LAB-INITRAMFS: switch_root uptime=$up"
}
"""
LABFAIL_INSTALL = """\
#!/bin/bash
build() {
    add_runscript
}

help() {
    echo "Lab only: a mount handler that fails."
}
"""
LABFAIL_RUNTIME = """\
#!/usr/bin/ash
run_hook() {
    mount_handler=lab_failing_mount_handler
}

lab_failing_mount_handler() {
    err "lab: simulated mount failure"
    return 1
}

run_emergencyhook() {
    echo "LAB-EMERGENCY: emergency hook ran"
}
"""

# A lab-only hook for partitioned disks: its mount handler first shows each device of
# lab.show=DEV,... (what udev knows of it, and the top-level files of its filesystem,
# mounted read-only), then mounts the ext4 root lab.root=DEV read-write.
LABDISK_INSTALL = """\
#!/bin/bash
build() {
    map add_module virtio_pci virtio_blk ext4 xhci_pci xhci_hcd usb_storage sd_mod vfat \\
        nls_cp437 nls_ascii nls_utf8
    add_runscript
}

help() {
    cat <<HELPEOF
Lab only: shows the devices of lab.show=DEV,..., mounts lab.root=DEV on /new_root.
HELPEOF
}
"""
LABDISK_RUNTIME = """\
#!/usr/bin/ash
run_hook() {
    mount_handler=lab_disk_mount_handler
}

lab_show() {
    local dev="$1" props fstype file
    if ! poll_device "$dev" 60; then
        err "lab: $dev did not appear"
        return 1
    fi
    props="$(udevadm info --query=property --name="$dev" |
        grep -E '^(ID_BUS|ID_FS_(TYPE|LABEL|UUID)|ID_PART_ENTRY_(NAME|UUID))=' | tr '\\n' ' ')"
    echo "LAB-INITRAMFS: found $dev -> $(readlink -f "$dev") ${props% }"
    fstype="$(udevadm info --query=property --name="$dev" | sed -n 's/^ID_FS_TYPE=//p')"
    mkdir -p /tmp/lab-show
    if ! mount -t "$fstype" -o ro "$dev" /tmp/lab-show; then
        err "lab: cannot mount $dev"
        return 1
    fi
    for file in /tmp/lab-show/*; do
        [ -f "$file" ] && echo "LAB-INITRAMFS: $dev file ${file##*/}: $(head -n 1 "$file")"
    done
    umount /tmp/lab-show
}

lab_disk_mount_handler() {
    local dev
    for dev in $(getarg lab.show | tr ',' ' '); do
        lab_show "$dev" || return 1
    done
    dev="$(getarg lab.root)"
    if ! poll_device "$dev" 60; then
        err "lab: root $dev did not appear"
        return 1
    fi
    if ! mount -t ext4 -o rw "$dev" "$1"; then
        err "lab: cannot mount $dev"
        return 1
    fi
    echo "LAB-INITRAMFS: mounted $dev on $1"
}
"""
PERSIST_TOKEN = "abc123"


def write_hook(hookdir: Path, name: str, install: str, runtime: str) -> None:
    (hookdir / "install").mkdir(parents=True, exist_ok=True)
    (hookdir / "hooks").mkdir(parents=True, exist_ok=True)
    (hookdir / "install" / name).write_text(install)
    (hookdir / "hooks" / name).write_text(runtime)
    (hookdir / "hooks" / name).chmod(0o755)


def write_lab_hooks(hookdir: Path) -> Path:
    """labroot, labfail and labdisk under `hookdir` (its install/ and hooks/)."""
    write_hook(hookdir, "labroot", LABROOT_INSTALL, LABROOT_RUNTIME)
    write_hook(hookdir, "labfail", LABFAIL_INSTALL, LABFAIL_RUNTIME)
    write_hook(hookdir, "labdisk", LABDISK_INSTALL, LABDISK_RUNTIME)
    return hookdir
