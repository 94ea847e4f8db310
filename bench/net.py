"""Network boot download rate: the hook fetching images over HTTP in a QEMU guest,
against busybox wget (and sha512sum) on the same path, and curl on the host.

The guest boots the PXE initramfs with `archiso_http_srv=` from an nginx on 127.0.0.1
(reached through QEMU's user-mode network and the lab's relay, vm/guestfwd.py); the
hook logs each image's rate at boot. In the booted live system, in rounds, each image
is then fetched (the same path: TCG, virtio-net, slirp, the lab's relay) by busybox
wget to /dev/null (the path's own rate); by wget and sha512sum doing the hook's work
(the image's .sha512, the image into the tmpfs, then `sha512sum -c`: as a shell hook
does it, and faster in this one-CPU guest than `wget -O - | tee FILE | sha512sum`,
whose three processes take turns through 64 KiB pipes); and by the hook's own engine
(`archiso-hook transfer --verify`: the .sha512, the image into the tmpfs, hashed as it
arrives). curl fetches the images from the same server on the host, three times each.
The ratios that judge the hook's code are against wget on the same path, measured in
the same rounds; the first says what the guest path costs against the host's loopback.
"""

from __future__ import annotations

import os
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
ROUNDS = 3
WGET = re.compile(r"LAB-RESULT bench-wget url=\S+ run=\d+ mode=(\S+) seconds=([0-9.]+)")
WGET_LABELS = {
    "null": "busybox wget to /dev/null",
    "file": "busybox wget to tmpfs",
    "file-sum": "busybox wget to tmpfs, then sha512sum -c",
    "hook-nosum": "archiso-hook transfer, no checksum",
    "hook": "archiso-hook transfer --verify (the boot's engine)",
}
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
    load = os.getloadavg()[0]  # these machines are shared: how busy this one was
    kernel = fetch_kernel()
    initrd = pxe_initramfs(kernel)
    media = bench_media("bench-net", IMAGE_MIB)
    guest_rates: list[float] = []
    wget_rates: dict[str, list[float]] = {mode: [] for mode in WGET_LABELS}
    host_rates: list[float] = []
    with Nginx(media.tree) as nginx:
        urls = ",".join(f"http://{SERVER_ADDR}/arch/any/{n}.sfs" for n in ("bench1", "bench2"))
        append = (
            f"ip=dhcp archiso_http_srv=http://{SERVER_ADDR}/ lab.check=files,bench-wget "
            f"lab.urls={urls} lab.rounds={ROUNDS}"
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
            wget_rates[match.group(1)].append(IMAGE_MIB / float(match.group(2)))
        for name in ("bench1", "bench2"):
            url = f"{nginx.url}arch/any/{name}.sfs"
            host_rates += [curl_rate(url) for _ in range(3)]
    at_boot = statistics.median(guest_rates)
    wget = {mode: statistics.median(rates) for mode, rates in wget_rates.items()}
    host = statistics.median(host_rates)
    lines = [
        f"# bench net, {time.strftime('%Y-%m-%d %H:%M:%S')}: HTTP download of 2 x {IMAGE_MIB} MiB "
        f"images from nginx on 127.0.0.1; medians (guest: per image, one boot, {ROUNDS} rounds "
        f"in the live system; host: 3 runs each); host load average {load:.1f} at the start",
        f"{'what':<52}{'MiB/s':>9}{'ratio':>9}",
        f"{'curl on the host, loopback (baseline)':<52}{host:>9.1f}{1.0:>9.2f}",
        f"{'archiso-hook at boot, QEMU guest (TCG, user-mode net)':<52}{at_boot:>9.1f}"
        f"{at_boot / host:>9.3f}",
        "in the booted guest, one CPU, the same rounds:",
    ]
    lines += [f"  {WGET_LABELS[m]:<50}{rate:>9.1f}{rate / host:>9.3f}" for m, rate in wget.items()]
    lines += [
        "archiso-hook (its engine, in the same rounds) against:",
        f"{'  wget to tmpfs, then sha512sum -c (the same work)':<52}{'':>9}"
        f"{wget['hook'] / wget['file-sum']:>9.2f}",
        f"{'  wget to /dev/null (neither copy nor hash)':<52}{'':>9}"
        f"{wget['hook'] / wget['null']:>9.2f}",
        "archiso-hook without a checksum against wget to tmpfs:"
        f"{wget['hook-nosum'] / wget['file']:>18.2f}",
    ]
    publish("\n".join(lines) + "\n", RESULTS / "net.txt")
    return 0


if __name__ == "__main__":
    sys.exit(main())
