"""The numbered story `archiso-hook plan` prints, and its JSON, pinned whole: a change to the
plan's modules that changes a word of either fails here. Update these only for a change of
what the plan says, on purpose."""

from __future__ import annotations

import hashlib
import json

import pytest

from tests.unit.test_plan import plan

DISK = "archisolabel=ARCH checksum verify copytoram=y cow_label=COW"
DISK_STORY = """\
boot plan for x86_64: medium /dev/disk/by-label/ARCH, new root /new_root
  1. wait up to 30 s for the boot medium /dev/disk/by-label/ARCH
  2. mount (probed) @medium read-only at /run/archiso/bootmnt
  3. load kernel modules loop, squashfs, dm_mod, dm_snapshot, fs-ext4 (where not built in or loaded)
  4. copy the 3 image(s) to RAM at /run/archiso/copytoram if memory allows, then release the medium; verify each against its .sha512 (or .md5) file, before any is used
  5. check the GPG (<img>.sig) signature of each of the 3 image(s) against the keys built into the initramfs, before any is used
  6. wait up to 30 s for the COW device /dev/disk/by-label/COW
  7. mount (probed) @cowdev read-only at /run/archiso/cowspace
  8. remount /run/archiso/cowspace read-write
  9. create directory /run/archiso/cowspace/persistent_ARCH/x86_64 (mode 0700)
 10. attach /run/archiso/bootmnt/arch/x86_64/root-image.fs.sfs read-only to a free loop device [root-image.sfs]
 11. mount squashfs @root-image.sfs read-only at /run/archiso/sfs/root-image
 12. attach /run/archiso/sfs/root-image/root-image.fs read-only to a free loop device [root-image.origin]
 13. attach /run/archiso/bootmnt/arch/x86_64/srv.fs read-only to a free loop device [srv.origin]
 14. size the COW files of 2 snapshot(s) to fit /run/archiso/cowspace (never more in total than the space holds); existing ones are kept
 15. reuse, or create, the COW file /run/archiso/cowspace/persistent_ARCH/x86_64/root-image.cow [root-image.cow]
 16. attach /run/archiso/cowspace/persistent_ARCH/x86_64/root-image.cow read-write to a free loop device [root-image.cowdev]
 17. create /dev/mapper/arch_root-image: 0 <origin sectors> snapshot @root-image.origin @root-image.cowdev P 8
 18. mount ext4 /dev/mapper/arch_root-image read-write at /new_root
 19. attach /run/archiso/bootmnt/arch/any/usr-share.sfs read-only to a free loop device [usr-share.sfs]
 20. mount squashfs @usr-share.sfs read-only at /new_root/usr/share
 21. reuse, or create, the COW file /run/archiso/cowspace/persistent_ARCH/x86_64/srv.cow [srv.cow]
 22. attach /run/archiso/cowspace/persistent_ARCH/x86_64/srv.cow read-write to a free loop device [srv.cowdev]
 23. create /dev/mapper/arch_srv: 0 <origin sectors> snapshot @srv.origin @srv.cowdev P 8
 24. mount ext4 /dev/mapper/arch_srv read-write at /new_root/srv
"""  # noqa: E501

# How each kind of medium begins: the network's steps, NBD, NFS, an ISO file, a search.
BEGINNINGS = (
    (
        "archiso_http_srv=http://127.0.0.1:8080/ ip=dhcp",
        """\
boot plan for x86_64: medium http server, new root /new_root
  1. bring up the first network interface (waiting up to 30 s for it) with DHCP (retrying up to 60 s)
  2. mount tmpfs httpspace read-write -o size=75%,mode=0755 at /run/archiso/bootmnt
  3. fetch http://127.0.0.1:8080/arch/aitab and the images for x86_64 (and any), with their checksum files, into /run/archiso/bootmnt; verify those that have one
  4. load kernel modules loop, squashfs, dm_mod, dm_snapshot, fs-ext4 (where not built in or loaded)
""",  # noqa: E501
    ),
    (
        "archiso_nbd_srv=127.0.0.1:10809 archiso_nbd_name=live ip=dhcp BOOTIF=01-52-54-00-12-34-56",
        """\
boot plan for x86_64: medium nbd server, new root /new_root
  1. load kernel modules nbd (where not built in or loaded)
  2. bring up the interface with MAC 52:54:00:12:34:56 (waiting up to 30 s for it) with DHCP (retrying up to 60 s)
  3. attach NBD export 'live' of 127.0.0.1:10809 as /dev/nbd0
  4. mount (probed) @medium read-only at /run/archiso/bootmnt
""",  # noqa: E501
    ),
    (
        "archiso_nfs_srv=10.0.2.2:/srv/arch ip=10.0.2.15::10.0.2.2:255.255.255.0::eth0:none"
        " cms_verify",
        """\
boot plan for x86_64: medium nfs server, new root /new_root
  1. load kernel modules nfs, nfsv4, nfsv3 (where not built in or loaded)
  2. bring up eth0 (waiting up to 30 s for it) with address 10.0.2.15/24, gateway 10.0.2.2
  3. mount NFS export 10.0.2.2:/srv/arch read-only at /run/archiso/bootmnt
  4. load kernel modules loop, squashfs, dm_mod, dm_snapshot, fs-ext4 (where not built in or loaded)
""",
    ),
    (
        "img_label=DISK img_loop=/iso/arch.iso",
        """\
boot plan for x86_64: medium the device holding the ISO file, new root /new_root
  1. wait up to 30 s for the device holding the ISO file /dev/disk/by-label/DISK
  2. mount (probed) @isodev read-only, without journal replay at /run/archiso/img_dev
  3. attach /run/archiso/img_dev/iso/arch.iso read-only to a free loop device [medium]
  4. mount (probed) @medium read-only at /run/archiso/bootmnt
""",
    ),
    (
        "archisosearchuuid=1234-ABCD",
        """\
boot plan for x86_64: medium the filesystem with UUID 1234-ABCD, or holding /boot/1234-ABCD.uuid, new root /new_root
  1. wait up to 30 s for a device with filesystem UUID 1234-ABCD, or else holding /boot/1234-ABCD.uuid (removable devices first, each looked into read-only)
  2. mount (probed) @medium read-only at /run/archiso/bootmnt
  3. load kernel modules loop, squashfs, dm_mod, dm_snapshot, fs-ext4 (where not built in or loaded)
  4. copy the 3 image(s) to RAM at /run/archiso/copytoram if it is safe and useful (not from an optical drive, at most 4 GiB, and MemAvailable at least the images' size + 2 GiB), then release the medium
""",  # noqa: E501
    ),
)

# sha256 of the JSON (`archiso-hook plan --json`, keys sorted) of every plan above, in order.
JSON_SHA256 = "a7bd56bdc64c4aabcf02a0fbb546bc97717ada32c0a104a4138afdce6c1f3f05"


def test_the_story_of_a_disk_boot_is_the_same_word_for_word() -> None:
    assert plan(DISK).describe() + "\n" == DISK_STORY


@pytest.mark.parametrize(("cmdline", "story"), BEGINNINGS)
def test_each_medium_begins_its_story_the_same(cmdline: str, story: str) -> None:
    assert "\n".join(plan(cmdline).describe().splitlines()[:5]) + "\n" == story


def test_the_json_is_the_same() -> None:
    digest = hashlib.sha256()
    for cmdline in (DISK, *(c for c, _ in BEGINNINGS)):
        digest.update(json.dumps(plan(cmdline).to_json(), sort_keys=True).encode() + b"\n")
    assert digest.hexdigest() == JSON_SHA256
