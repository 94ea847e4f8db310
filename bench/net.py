"""Network boot download rate: the hook fetching images over HTTP in a QEMU guest,
against curl fetching the same files from the same nginx on the host.

The guest boots the PXE initramfs with `archiso_http_srv=` from an nginx on 127.0.0.1
(reached through QEMU's user-mode network and the lab's relay, vm/guestfwd.py); the
hook logs each image's rate. curl then fetches the same files from the same server,
three times each, on the host; and busybox wget fetches them again in the booted
guest (the same path: TCG, virtio-net, slirp, the lab's relay). The first ratio says
what the guest path costs against the host's loopback, the second what the hook's
own code costs against a C client on that path.
"""

from __future__ import annotations

import re
import statistics
import subprocess
import sys
import time

from bench import publish
from bench.transfer import bench_media
from vm import REPO
from vm.kernel import fetch_kernel
from vm.lab import pxe_initramfs
from vm.qemu import SERVER_ADDR, Guest, Nic, lab_mac
from vm.servers import Nginx

IMAGE_MIB = 64
RESULTS = REPO / "bench" / "results"
WGET = re.compile(r"LAB-RESULT bench-wget url=\S+ seconds=([0-9.]+)")
FETCHED = re.compile(r"archiso-hook: fetched (bench\d)\.sfs: ([0-9.]+) MiB in ([0-9.]+) s")


def curl_rate(url: str) -> float:
    """MiB/s of one curl download to /dev/null."""
    out = subprocess.run(
        ["curl", "-sS", "-o", "/dev/null", "-w", "%{speed_download}", url],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return float(out) / (1 << 20)


def main() -> int:
    kernel = fetch_kernel()
    initrd = pxe_initramfs(kernel)
    media = bench_media("bench-net", IMAGE_MIB)
    guest_rates: list[float] = []
    wget_rates: list[float] = []
    host_rates: list[float] = []
    with Nginx(media.tree) as nginx:
        urls = ",".join(f"http://{SERVER_ADDR}/arch/any/{n}.sfs" for n in ("bench1", "bench2"))
        append = (
            f"ip=dhcp archiso_http_srv=http://{SERVER_ADDR}/ lab.check=files,bench-wget "
            f"lab.urls={urls}"
        )
        nics = [Nic(lab_mac(1), forwards=[nginx.forward()])]
        with Guest(
            "bench-net",
            kernel=kernel,
            initrd=initrd,
            append=append,
            memory_mib=1536,
            nics=nics,
            timeout=900,
        ) as guest:
            guest.expect(r"LAB: (PASS|FAIL)|Falling back to interactive prompt", timeout=800)
            output = guest.output
        if "LAB: PASS" not in output:
            print(output[-3000:], file=sys.stderr)
            return 1
        for match in FETCHED.finditer(output):
            guest_rates.append(float(match.group(2)) / float(match.group(3)))
        for match in WGET.finditer(output):
            wget_rates.append(IMAGE_MIB / float(match.group(1)))
        for name in ("bench1", "bench2"):
            url = f"{nginx.url}arch/any/{name}.sfs"
            host_rates += [curl_rate(url) for _ in range(3)]
    guest = statistics.median(guest_rates)
    wget = statistics.median(wget_rates)
    host = statistics.median(host_rates)
    lines = [
        f"# bench net, {time.strftime('%Y-%m-%d %H:%M:%S')}: HTTP download of 2 x {IMAGE_MIB} MiB "
        "images from nginx on 127.0.0.1; medians (guest: per image, one boot; host: 3 runs each)",
        f"{'what':<52}{'MiB/s':>9}{'ratio':>9}",
        f"{'curl on the host, loopback (baseline)':<52}{host:>9.1f}{1.0:>9.2f}",
        f"{'archiso-hook in a QEMU guest (TCG, user-mode net)':<52}{guest:>9.1f}"
        f"{guest / host:>9.3f}",
        f"{'busybox wget in the same guest, same boot':<52}{wget:>9.1f}{wget / host:>9.3f}",
        f"{'archiso-hook against busybox wget, same path':<52}{'':>9}{guest / wget:>9.2f}",
    ]
    publish("\n".join(lines) + "\n", RESULTS / "net.txt")
    return 0


if __name__ == "__main__":
    sys.exit(main())
