"""Every name the hook gives to a place: under /run/archiso in the initramfs (and in the
live system, which inherits /run), the copy of the initramfs kept for the shutdown, and
where the shutdown finds the live system again. One module, so that the boot, the
watchdog, `status` and the shutdown cannot disagree; the parameter reference and the
README cite the same names."""

from __future__ import annotations

#: Everything the hook makes at boot, kept in the live system (its /run is moved there).
RUN_DIR = "/run/archiso"
#: The boot medium (or the NFS export, or the downloaded images' tmpfs).
BOOTMNT = f"{RUN_DIR}/bootmnt"
#: The tmpfs (or persistent device) holding the COW files.
COWSPACE = f"{RUN_DIR}/cowspace"
#: copytoram's tmpfs: the images read into RAM.
COPYTORAM = f"{RUN_DIR}/copytoram"
#: The read-only images' mount points (`<name>` for each aitab entry).
SFS_DIR = f"{RUN_DIR}/sfs"
#: The filesystem holding an ISO file (`img_dev=`).
IMG_DEV_MNT = f"{RUN_DIR}/img_dev"
#: Where a search (`archisosearchuuid=`, ...) mounts each candidate to look into it.
SEARCH_MNT = f"{RUN_DIR}/search"
#: What the boot set up, for the watchdog, `status` and the shutdown (boot/state.py);
#: writers take an flock on `STATE_FILE + ".lock"`.
STATE_FILE = f"{RUN_DIR}/state.json"
#: What a successful boot did, for people and tools (boot/report.py).
REPORT_FILE = f"{RUN_DIR}/report.json"
#: The watchdog's pid and start time (live/pidfile.py), and its "I have started" mark.
PID_FILE = f"{RUN_DIR}/watch.pid"
READY_FILE = f"{RUN_DIR}/watch.ready"
#: The handoff is done (the watchdog forked from `mount` itself): for the cleanup hook.
HANDED_OFF = f"{RUN_DIR}/handoff.done"

#: The copy of the initramfs the live system switches back into to shut down (the
#: protocol of systemd-shutdown and mkinitcpio-archiso's shutdown hook).
SHUTDOWN_ROOT = "/run/initramfs"
#: Where the shutdown finds the live system's root and its /run again.
OLDROOT = "/oldroot"
OLDRUN = "/oldrun"

#: The uuid of every dm device the hook makes: `ARCHISO-<name>`; what the shutdown and a
#: retried boot check before they remove a device. DM_UUID_LEN (129, with its NUL) bounds
#: the names: `DM_NAME_MAX`, 120, within DM_NAME_LEN's 127 (include/uapi/linux/dm-ioctl.h).
DM_UUID_PREFIX = "ARCHISO-"
DM_UUID_LEN = 129
DM_NAME_MAX = DM_UUID_LEN - 1 - len(DM_UUID_PREFIX)


def under(path: str, root: str) -> bool:
    """Whether `path` is `root` or below it (by its components: /run/archiso2 is not below
    /run/archiso)."""
    return path == root or path.startswith(root.rstrip("/") + "/")
