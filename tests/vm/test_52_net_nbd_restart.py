"""An NBD root (copytoram=n) whose server restarts: the watchdog in the live system
reconnects /dev/nbd0 (nbd.reconnect, NBD_CMD_RECONFIGURE) and the reads that waited
for the server meanwhile go on. Real nbd-server on 127.0.0.1, reached through QEMU's
user-mode network (vm/servers.py, as in test_50_net.py).
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from tests.vm.conftest import NET_DONE, Lab, hook_lines, status_reports
from vm.media import Media
from vm.qemu import SERVER_ADDR, Nic, lab_mac
from vm.servers import NbdServer

pytestmark = pytest.mark.vm

SERVER = rf"{re.escape(SERVER_ADDR)}:10809"


def test_an_nbd_root_survives_its_server_restarting(lab: Lab, pxe: Path, media: Media) -> None:
    with NbdServer(media.iso) as server:
        # wait: the live root pauses for a line from the console, then drops the page
        # cache; files then reads every file of the manifest from /dev/nbd0 again.
        append = f"ip=dhcp archiso_nbd_srv={SERVER_ADDR} copytoram=n lab.check=wait,files,status"
        nics = [Nic(lab_mac(1), forwards=[server.forward()])]
        with lab.boot("net-nbd-restart", append, [], initrd=pxe, nics=nics, timeout=600) as guest:
            guest.expect(r"LAB: waiting", timeout=360)
            server.stop()
            guest.expect(
                rf"lost /dev/nbd0's connection to the NBD server {SERVER} \(the kernel reports "
                r"it dead\): reads of the live system wait for it up to 60 s; reconnecting",
                timeout=60,
            )
            guest.expect(
                rf"reconnecting /dev/nbd0 to {SERVER}: attempt 1 failed after \d+ s: the NBD "
                r"server closed the connection during the handshake",
                timeout=60,
            )
            # The reads of the checks begin while the server is still away: they wait.
            guest.send("server-away")
            time.sleep(5)
            server.start()
            guest.expect(
                rf"reconnected /dev/nbd0 to the NBD server {SERVER} after [0-9.]+ s "
                r"\(\d+ attempt\(s\)\): export 'archiso', [0-9.]+ MiB as at boot",
                timeout=120,
            )
            guest.expect(NET_DONE, timeout=300)
            output = guest.output
        opened = server.connections().count("open")
    assert "LAB: PASS" in output, output[-3000:]
    assert "LAB-CHECK files ok" in output
    assert "Traceback" not in output
    hook = hook_lines(output)
    assert (
        f"watching /dev/nbd0's connection to the NBD server {SERVER_ADDR}:10809: it is made "
        "again if it breaks" in hook
    ), hook
    assert opened == 2, server.log_text()  # the boot's connection, then the watchdog's
    (report,) = status_reports(output)
    mounts = {m["target"]: m for m in report["mounts"]}
    assert mounts["/run/archiso/bootmnt"]["source"] == "/dev/nbd0"
