"""Broken state, as a killed hook or a damaged file leaves it: the next attempt and the
shutdown take over what is recorded, and the machine always powers off.

- The hook killed half-way through setting up (SIGKILL, no rollback): the emergency
  shell's `archiso-hook mount /new_root` releases what the dead one left, then boots.
- A state file damaged before the power-off: the shutdown, as PID 1, says which records
  it skips, never signals PID 1 for a watchdog, and powers off.
"""

from __future__ import annotations

import pytest

from tests.vm.conftest import SHELL_PROMPT, Lab, hook_lines, leak_report
from vm.media import SAMPLE_LABEL
from vm.qemu import Drive

pytestmark = pytest.mark.vm

BASE = f"archisobasedir=arch archisolabel={SAMPLE_LABEL}"

# Typed at the premount shell: the hook in the background, SIGKILLed as soon as the
# kernel log shows its first loop device (the medium and the cowspace are mounted by
# then, a snapshot and the root are still to come); the marker is computed by the shell.
KILL_HALF_WAY = (
    "archiso-hook mount /new_root & "
    "until dmesg | grep -q 'archiso-hook: attached '; do usleep 20000; done; "
    "kill -9 $!; wait; echo KILLED-$((1+1))"
)
# Then what a kill between a mount(2) and its record leaves, made sure of (the kill above
# may or may not fall in that window): the first loop device the dead hook attached,
# mounted under /run/archiso where no record names it, so that the loop device is busy.
UNRECORDED_MOUNT = (
    "dev=$(dmesg | sed -n 's|.*archiso-hook: attached .* to \\(/dev/loop[0-9]*\\) "
    "read-only.*|\\1|p' | head -n 1); mkdir -p /run/archiso/sfs/unrecorded && "
    "mount -t squashfs -o ro $dev /run/archiso/sfs/unrecorded && echo UNRECORDED-$((1+1)) $dev"
)


def test_the_hook_killed_half_way_then_mount_from_the_emergency_shell(lab: Lab) -> None:
    media = lab.media("sample")
    append = f"{BASE} break=premount lab.check=files,status"
    with lab.boot("killed-half-way", append, [Drive(media.iso, kind="ide-cdrom")]) as guest:
        guest.expect(SHELL_PROMPT, timeout=120)
        guest.send(KILL_HALF_WAY)
        guest.expect("KILLED-2", timeout=180)
        left = leak_report(guest)
        # It did leave something behind, or this test would prove nothing.
        assert any(" /run/archiso/bootmnt " in line for line in left), left
        guest.send(UNRECORDED_MOUNT)
        guest.expect(r"UNRECORDED-2 /dev/loop\d+", timeout=60)
        device = guest.output[guest.output.rindex("UNRECORDED-2 ") :].split()[1]
        guest.send("archiso-hook mount /new_root")
        guest.expect(
            r"an earlier attempt left \d+ thing\(s\) set up: releasing them first", timeout=60
        )
        guest.expect("live root ready at /new_root", timeout=180)
        guest.send("exit")  # the boot goes on: init's mount handler finds it mounted
        guest.expect("LAB: PASS", timeout=180)
        guest.wait(120)
    hook = hook_lines(guest.output)
    # The mounts go; their loop devices with them (autoclear), the others at the kill.
    released = [line for line in hook if line.startswith("released: ")]
    assert "released: unmounted /run/archiso/bootmnt" in released, hook
    unrecorded = f"released: unmounted /run/archiso/sfs/unrecorded ({device}; the record was"
    assert any(line.startswith(unrecorded) for line in released), hook
    assert not any(line.startswith("warning: could not release") for line in hook)
    assert "Traceback" not in guest.output


def test_a_damaged_state_file_at_shutdown_still_powers_off(lab: Lab) -> None:
    media = lab.media("sample")
    append = f"{BASE} lab.check=files lab.state=damaged"
    with lab.boot("damaged-state", append, [Drive(media.iso, kind="ide-cdrom")]) as guest:
        guest.expect("LAB: PASS", timeout=200)
        guest.expect("LAB: damaged the state file", timeout=60)
        guest.expect("holds 1, not the pid of another process: no signal sent", timeout=120)
        guest.expect(r"skipped: its field 'devno' is missing", timeout=60)
        guest.expect(r"skipped: its field 'device' is '/dev/sda'", timeout=60)
        guest.expect("reboot: Power down", timeout=120)
        guest.wait(60)
    assert "Kernel panic" not in guest.output
    assert "Traceback" not in guest.output
