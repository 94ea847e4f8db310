"""Network boot in QEMU against real servers on the host's loopback: nginx, nbd-server
and nfs-ganesha (vm/servers.py), reached through QEMU's user-mode network with only
their ports forwarded (restrict=on): no test sends traffic anywhere else.

Boots are the expensive part of the suite, so each test covers what one boot can:
DHCP with an HTTP server that goes away mid-download; a static ip= on the second of
two NICs picked by BOOTIF, with ${pxeserver} from ip=; NBD with and without copytoram;
NFS; a wrong server; an HTTP server that answers a resume from byte 0; https with the
initramfs's own CA, and with another; four guests at once.
"""

from __future__ import annotations

import contextlib
import http.server
import re
import subprocess
import threading
import time
from pathlib import Path

import pytest

from tests.vm.conftest import (
    NET_DONE,
    SHELL_PROMPT,
    Lab,
    fails_cleanly,
    hook_lines,
    leak_report,
    power_off,
    status_reports,
)
from vm import lab_dir
from vm.lab import pxe_initramfs
from vm.media import Media
from vm.qemu import GUEST_ADDR, SERVER_ADDR, Forward, Guest, Nic, lab_mac
from vm.servers import NbdServer, NfsServer, Nginx
from vm.tlsca import CertificateAuthority

pytestmark = pytest.mark.vm

CHECKS = "lab.check=files,status"


def _image_files(initrd: Path) -> set[str]:
    listing = subprocess.run(
        f"zstd -dc '{initrd}' | cpio -t --quiet",
        shell=True,
        capture_output=True,
        text=True,
        check=False,
    )
    assert listing.returncode == 0, listing.stderr
    return set(listing.stdout.split())


def test_openssl_is_only_in_images_that_boot_from_the_network(lab: Lab, pxe: Path) -> None:
    tls = re.compile(r"usr/lib/archiso-hook/.*/(libssl\.so|libcrypto\.so|_ssl\.|_hashlib\.)")
    disk = _image_files(lab.initrd)
    network = _image_files(pxe)
    assert "usr/lib/archiso-hook/archiso-hook" in disk
    assert not [name for name in disk if tls.match(name)]
    assert len([name for name in network if tls.match(name)]) == 4, sorted(network)
    # Both leave the hook's own loop devices to the hook, not to udev's blkid.
    assert "usr/lib/udev/rules.d/59-archiso-hook-loop.rules" in disk & network


def boot_ok(guest: Guest, timeout: float = 360) -> list[str]:
    guest.expect(NET_DONE, timeout=timeout)
    output = guest.output
    assert "LAB: PASS" in output, output[-3000:]
    return hook_lines(output)


def test_http_with_dhcp_survives_the_server_going_away_mid_download(
    lab: Lab, pxe: Path, media: Media
) -> None:
    # 1 MiB/s: the 10 MiB root image takes long enough to pull the server from under it.
    with Nginx(media.tree, rate_limit="1m") as nginx:
        append = f"ip=dhcp archiso_http_srv=http://{SERVER_ADDR}/ checksum=y {CHECKS}"
        nics = [Nic(lab_mac(1), forwards=[nginx.forward()])]
        with lab.boot("net-http-dhcp", append, [], initrd=pxe, nics=nics, timeout=500) as guest:
            guest.expect(r"downloading root.fs.sfs: ", timeout=300)
            nginx.stop()
            guest.expect(r"retrying in", timeout=60)
            time.sleep(3)
            nginx.start()
            hook = boot_ok(guest)
        ranges = [r for r in nginx.requests() if r.path.endswith("root.fs.sfs") and r.range]
    assert any(re.fullmatch(r"DHCP lease on eth0 after [0-9.]+ s", line) for line in hook), hook
    assert not any("link-kind plugins" in line for line in hook), hook  # pkgutil in the build
    assert any(line.startswith(f"eth0 has {GUEST_ADDR}/24 (dhcp)") for line in hook), hook
    assert any(re.match(r"fetched root.fs.sfs: .*, resumed [1-9] time\(s\)", line) for line in hook)
    assert ranges and all(r.status == 206 for r in ranges), ranges
    assert "root.fs.sfs: sha512 checksum verified" in hook
    assert "took eth0 down: the live root does not need the network" in hook
    (report,) = status_reports(guest.output)
    assert all(m["target"] != "/run/archiso/copytoram" for m in report["mounts"])


def test_static_ip_on_the_nic_bootif_names_with_pxeserver_from_ip(
    lab: Lab, pxe: Path, media: Media
) -> None:
    with Nginx(media.tree) as nginx:
        # The first NIC reaches nothing: booting from it would fail.
        nics = [Nic(lab_mac(1)), Nic(lab_mac(2), forwards=[nginx.forward()])]
        append = (
            f"ip={GUEST_ADDR}:{SERVER_ADDR}::255.255.255.0:live::off:{SERVER_ADDR} "
            f"BOOTIF=01-{lab_mac(2).replace(':', '-')} archiso_http_srv=http://${{pxeserver}}/ "
            f"{CHECKS}"
        )
        with lab.boot("net-static-bootif", append, [], initrd=pxe, nics=nics) as guest:
            hook = boot_ok(guest)
    assert (
        f"eth1 has {GUEST_ADDR}/24 (static), DNS {SERVER_ADDR}, boot server {SERVER_ADDR}" in hook
    )
    assert not any("DHCP" in line for line in hook)
    assert f"fetch http://{SERVER_ADDR}/arch/aitab" not in hook  # the plan is not printed...
    assert any(line.startswith("fetched root.fs.sfs") for line in hook)  # ...but it was fetched


def test_nbd_copied_to_ram_then_released(lab: Lab, pxe: Path, media: Media) -> None:
    with NbdServer(media.iso) as nbd:
        append = f"ip=dhcp archiso_nbd_srv={SERVER_ADDR} {CHECKS}"
        nics = [Nic(lab_mac(1), forwards=[nbd.forward()])]
        with lab.boot("net-nbd-copy", append, [], initrd=pxe, nics=nics) as guest:
            hook = boot_ok(guest)
    assert f"attached NBD export 'archiso' of {SERVER_ADDR}:10809 as /dev/nbd0" in hook
    assert any(line.startswith("copytoram=y: copying") for line in hook), hook
    assert "releasing the medium: detach /dev/nbd0" in hook
    assert "took eth0 down: the live root does not need the network" in hook
    (report,) = status_reports(guest.output)
    assert "/run/archiso/bootmnt" not in [m["target"] for m in report["mounts"]]


def test_nbd_kept_for_the_root_with_copytoram_n(lab: Lab, pxe: Path, media: Media) -> None:
    with NbdServer(media.iso) as nbd:
        append = f"ip=dhcp archiso_nbd_srv={SERVER_ADDR}:10809 copytoram=n {CHECKS}"
        nics = [Nic(lab_mac(1), forwards=[nbd.forward()])]
        with lab.boot("net-nbd-keep", append, [], initrd=pxe, nics=nics) as guest:
            hook = boot_ok(guest)
            assert nbd.connections(), "the server saw no client"
    assert f"attached NBD export 'archiso' of {SERVER_ADDR}:10809 as /dev/nbd0" in hook
    assert not any("took eth0 down" in line for line in hook)
    (report,) = status_reports(guest.output)
    mounts = {m["target"]: m for m in report["mounts"]}
    assert mounts["/run/archiso/bootmnt"]["source"] == "/dev/nbd0"


def test_nfs(lab: Lab, pxe: Path, media: Media) -> None:
    with NfsServer(media.tree, pseudo="/archiso") as nfs:
        append = f"ip=dhcp archiso_nfs_srv={SERVER_ADDR}:/archiso {CHECKS}"
        nics = [Nic(lab_mac(1), forwards=[nfs.forward()])]
        with lab.boot("net-nfs", append, [], initrd=pxe, nics=nics) as guest:
            hook = boot_ok(guest)
    assert any(
        line.startswith(f"mounted NFS {SERVER_ADDR}:/archiso read-only at /run/archiso/bootmnt")
        for line in hook
    ), hook
    assert any(line.startswith("copytoram=y: copying") for line in hook), hook
    assert "took eth0 down: the live root does not need the network" in hook


def test_a_wrong_server_says_so_and_leaves_nothing(lab: Lab, pxe: Path, media: Media) -> None:
    with NbdServer(media.iso) as nbd:
        # The server listens on 10809; 10810 is not forwarded: slirp refuses it.
        append = f"ip=dhcp archiso_nbd_srv={SERVER_ADDR}:10810"
        nics = [Nic(lab_mac(1), forwards=[nbd.forward()])]
        with lab.boot("net-wrong-server", append, [], initrd=pxe, nics=nics) as guest:
            guest.expect(
                rf"error: cannot connect to the NBD server {SERVER_ADDR}:10810: Connection refused"
                r"\r?\n.*error: hint: check archiso_nbd_srv= and that nbd-server runs there",
                timeout=300,
            )
            guest.expect(SHELL_PROMPT, timeout=60)
            assert leak_report(guest) == []
            guest.send(
                "echo NET-$((1+1)) $(cat /sys/class/net/eth0/operstate) "
                "$(test -e /sys/block/nbd0/pid && echo attached || echo free)"
            )
            # To the end of the line: the console may deliver it in pieces.
            match = guest.expect(r"NET-2 (\S+) (\S+)\r?\n", timeout=30)
            guest.send("poweroff -f")
            guest.wait(60)
    assert match.groups() == ("down", "free")  # undone: the interface is as it was
    hook = hook_lines(guest.output)
    assert "undone: take eth0 down" in hook


class _WrongResume(http.server.BaseHTTPRequestHandler):
    """Serves a medium's files, but cuts the first answer for an image after 1 MiB, and
    answers the resume with the file from byte 0 (as a broken cache might)."""

    root: Path
    cut = 1 << 20

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        path = self.root / self.path.lstrip("/")
        if not path.is_file():
            self.send_error(404)
            return
        data = path.read_bytes()
        ranged = "Range" in self.headers
        self.send_response(206 if ranged else 200)
        if ranged:
            self.send_header("Content-Range", f"bytes 0-{len(data) - 1}/{len(data)}")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.wfile.write(data if ranged or path.suffix != ".sfs" else data[: self.cut])


def test_a_server_that_resumes_wrongly_is_refused_and_nothing_is_left(
    lab: Lab, pxe: Path, media: Media
) -> None:
    handler = type("H", (_WrongResume,), {"root": media.tree})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, args=(0.1,), daemon=True).start()
    try:
        # no checksum=y and no checksum file would have caught it: the transfer itself must
        append = f"ip=dhcp archiso_http_srv=http://{SERVER_ADDR}/"
        nics = [Nic(lab_mac(1), forwards=[Forward(httpd.server_address[1], 80)])]
        with lab.boot("net-wrong-resume", append, [], initrd=pxe, nics=nics) as guest:
            fails_cleanly(
                guest,
                rf"error: refusing http://{SERVER_ADDR}/arch/x86_64/root.fs.sfs: asked for "
                r"bytes from 1048576, it sent them from 0 \(a file of \d+ bytes\); the server "
                r"does not serve this file consistently",
                timeout=300,
            )
            power_off(guest)
    finally:
        httpd.shutdown()
        httpd.server_close()
    hook = hook_lines(guest.output)
    assert not any(line.startswith("mounted /dev/loop") for line in hook), hook


def test_https_checked_against_the_ca_the_initramfs_carries(
    lab: Lab, media: Media, tmp_path: Path
) -> None:
    """nginx with a certificate of a CA the test makes, which the initramfs trusts
    (ARCHISO_CA_BUNDLE): the boot downloads over https. The same server with another
    CA's certificate: refused at once, not retried, nothing left."""
    ca = CertificateAuthority.create(tmp_path / "ca", "archiso-hook lab CA")
    initrd = pxe_initramfs(lab.kernel, lab_dir() / "initramfs-pxe-lab-ca.img", ca_bundle=ca.cert)
    append = f"ip=dhcp archiso_http_srv=https://{SERVER_ADDR}/ checksum=y"
    tls = ca.issue(tmp_path / "server", ips=[SERVER_ADDR, "127.0.0.1"])
    with Nginx(media.tree, tls=tls) as nginx:
        nics = [Nic(lab_mac(1), forwards=[nginx.forward()])]
        with lab.boot("net-https", f"{append} {CHECKS}", [], initrd=initrd, nics=nics) as guest:
            hook = boot_ok(guest)
        assert {r.path for r in nginx.requests()} >= {"/arch/aitab", "/arch/x86_64/root.fs.sfs"}
    assert "root.fs.sfs: sha512 checksum verified" in hook

    other = CertificateAuthority.create(tmp_path / "other", "another CA")
    with Nginx(media.tree, tls=other.issue(tmp_path / "other-server", ips=[SERVER_ADDR])) as nginx:
        nics = [Nic(lab_mac(1), forwards=[nginx.forward()])]
        with lab.boot("net-https-other-ca", append, [], initrd=initrd, nics=nics) as guest:
            fails_cleanly(
                guest,
                rf"error: cannot fetch https://{SERVER_ADDR}/arch/aitab: the server's "
                r"certificate is not trusted: unable to get local issuer certificate",
                timeout=300,
            )
            power_off(guest)
    assert "retrying" not in guest.output


def test_four_guests_boot_at_once_from_one_server(lab: Lab, pxe: Path, media: Media) -> None:
    with Nginx(media.tree) as nginx, contextlib.ExitStack() as stack:
        append = f"ip=dhcp archiso_http_srv=http://{SERVER_ADDR}/ lab.check=files"
        guests = [
            stack.enter_context(
                lab.boot(
                    f"net-fleet-{i}",
                    append,
                    [],
                    initrd=pxe,
                    nics=[Nic(lab_mac(i), forwards=[nginx.forward()])],
                    timeout=900,
                )
            )
            for i in range(1, 5)
        ]
        for guest in guests:
            boot_ok(guest, timeout=800)
        images = [r for r in nginx.requests() if r.path.endswith("root.fs.sfs")]
    assert len(images) == 4 and all(r.status == 200 and r.complete for r in images), images
