"""Boot a lab guest in QEMU (TCG) and talk to its serial console and monitor.

    with Guest("boot-ok", kernel=kernel, initrd=initrd, drives=[Drive(img)],
               append="lab.check=write") as guest:
        guest.expect(r"^LAB: PASS$", timeout=120)
        guest.wait(30)

The serial console is QEMU's stdio: every byte is appended to `<lab>/logs/<name>.log`
(whose first line is the QEMU command, `shlex.join`ed) and kept in memory for `expect()`.
The human monitor listens on a unix socket in a private temporary directory
(`monitor()`). A watchdog kills QEMU after `timeout` seconds whatever the test does, and
the context manager kills it on exit. A boot never passes by QEMU's exit status: callers
`expect()` positive lines.

Firmware: `Guest("iso", kernel=None, drives=[Drive(iso, kind="ide-cdrom", bootindex=1)],
firmware=OVMF)` boots as a PC does, through SeaBIOS (the default), OVMF or OVMF_IA32 and
the medium's own boot loader; its kernel parameters come from the medium's menu.

Network: `nics=[Nic(lab_mac(1), forwards=[Forward(host_port=8080, guest_port=80)])]`
gives the guest a virtio-net NIC on QEMU's user-mode network with `restrict=on`: its DHCP
server (slirp, `SLIRP_HOST`) leases `GUEST_ADDR`, and the guest reaches nothing but the
forwarded ports at `SERVER_ADDR`, each connection relayed by `vm/guestfwd.py` to
127.0.0.1 on the host (see vm/README.md, "Networking").
"""

from __future__ import annotations

import codecs
import contextlib
import ipaddress
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Literal, get_args

import attrs

from vm import VM_DIR, lab_dir
from vm.kernel import ARCHES, Kernel

__all__ = [
    "DEFAULT_APPEND",
    "GUEST_ADDR",
    "OVMF",
    "OVMF_IA32",
    "SEABIOS",
    "SERVER_ADDR",
    "SLIRP_HOST",
    "SLIRP_NET",
    "Drive",
    "DriveKind",
    "Firmware",
    "Forward",
    "Guest",
    "GuestError",
    "Nic",
    "lab_mac",
    "qemu_command",
]

DriveKind = Literal["ide-cdrom", "virtio", "scsi-cd", "usb"]
DRIVE_KINDS: tuple[str, ...] = get_args(DriveKind)

#: Always on the kernel command line: serial console, and every panic or oops ends the
#: guest (panic=1 reboots after 1 s, and -no-reboot turns the reboot into QEMU's exit).
DEFAULT_APPEND = "console=ttyS0 panic=1 oops=panic"

_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b[()][A-Za-z0-9]|\x1b[=>]")


class GuestError(AssertionError):
    """A guest did not do what was expected (timeout, early exit); carries the log tail."""


@attrs.frozen
class Drive:
    """A disk image attached to the guest.

    `kind` is the bus: "ide-cdrom" (PIIX IDE CD-ROM), "virtio" (virtio-blk disk),
    "scsi-cd" (CD-ROM on virtio-scsi) or "usb" (usb-storage on an xHCI controller).
    CD-ROMs are always read-only. `serial` sets the device serial number (udev's
    ID_SERIAL, /dev/disk/by-id). `name` is the QEMU drive id (default `drive<N>`); the
    device id is `<name>-dev`, for monitor commands such as `device_del`.
    """

    path: Path = attrs.field(converter=Path)
    kind: DriveKind = attrs.field(default="virtio", validator=attrs.validators.in_(DRIVE_KINDS))
    serial: str | None = None
    readonly: bool = False
    name: str | None = None
    #: the firmware boots from the drive with the lowest index (a firmware boot's medium)
    bootindex: int | None = None


@attrs.frozen
class Firmware:
    """What a guest boots through when QEMU is given no kernel: the machine's firmware,
    then the medium's own boot loader, as on a PC.

    `code` and `vars` are a UEFI's flash images (Debian's ovmf and ovmf-ia32): the code
    read-only, a copy of the variable store for each guest."""

    name: str
    machine: str = "pc"
    code: Path | None = None
    vars: Path | None = None
    package: str | None = None
    extra_args: tuple[str, ...] = ()

    def check(self) -> None:
        for path in (self.code, self.vars):
            if path is not None and not path.is_file():
                raise FileNotFoundError(
                    f"{self.name}: {path} is missing (Debian package {self.package}; make setup)"
                )


_OVMF = Path("/usr/share/OVMF")
#: QEMU's own BIOS.
SEABIOS = Firmware("seabios")
#: 64-bit UEFI (the 4 MB flash layout: code and variables must be of the same one).
OVMF = Firmware("ovmf", code=_OVMF / "OVMF_CODE_4M.fd", vars=_OVMF / "OVMF_VARS_4M.fd",
                package="ovmf")  # fmt: skip
#: 32-bit UEFI, as on tablets and netbooks. Debian builds it only with Secure Boot, which
#: needs SMM on q35 and a secure flash (not enforced: the variables enroll no keys).
OVMF_IA32 = Firmware(
    "ovmf-ia32",
    machine="q35,smm=on",
    code=_OVMF / "OVMF32_CODE_4M.secboot.fd",
    vars=_OVMF / "OVMF32_VARS_4M.fd",
    package="ovmf-ia32",
    extra_args=("-global", "driver=cfi.pflash01,property=secure,value=on"),
)


#: The user-mode network of a lab NIC (the default of `Nic.net`).
SLIRP_NET = "10.0.2.0/24"
#: slirp itself (host part .1): the DHCP server's identifier and BOOTP next-server
#: (siaddr). Moved off slirp's default .2, which cannot carry a guestfwd.
SLIRP_HOST = "10.0.2.1"
#: Where a guest reaches the host's servers (host part .2): each `Forward`ed port.
SERVER_ADDR = "10.0.2.2"
#: What slirp's DHCP leases (host part .15; one lease per NIC's network).
GUEST_ADDR = "10.0.2.15"
#: The relay QEMU runs for each guest connection to a forwarded port.
GUESTFWD = VM_DIR / "guestfwd.py"
_MAC = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")


def _lower(value: str) -> str:
    return value.lower()


def lab_mac(index: int) -> str:
    """A locally administered unicast MAC for the lab: 52:54:00:12:34:<index>."""
    if not 0 <= index <= 0xFF:
        raise ValueError(f"MAC index out of range: {index}")
    return f"52:54:00:12:34:{index:02x}"


@attrs.frozen
class Forward:
    """A TCP port a guest may connect to: `guest_addr`:`guest_port` on its network
    (default: the NIC's server address, host part .2), relayed to 127.0.0.1:`host_port`
    on the host. Each guest connection runs `vm/guestfwd.py`, which connects to the
    server then (so a server may stop and start again); when nothing listens there, the
    guest's connect succeeds and the connection is reset at once (closed, if the guest
    had sent nothing yet): never "connection refused"."""

    host_port: int = attrs.field(
        validator=attrs.validators.and_(attrs.validators.ge(1), attrs.validators.le(65535))
    )
    guest_port: int = attrs.field(
        validator=attrs.validators.and_(attrs.validators.ge(1), attrs.validators.le(65535))
    )
    guest_addr: str | None = None


def _forwards(value: Iterable[Forward]) -> tuple[Forward, ...]:
    return tuple(value)


@attrs.frozen
class Nic:
    """A virtio-net NIC on its own QEMU user-mode network, `restrict=on`.

    slirp's DHCP server (at host part .1 of `net`) leases host part .15, with no router
    and no DNS server (restrict=on leaves them out); `bootfile` sets the BOOTP file and
    DHCP option 67, `tftp_server_name` option 66. Nothing but `forwards` is reachable:
    a connection to any other port or address is refused by slirp (an unused address on
    the network gets no ARP answer), UDP other than DHCP is dropped, and no packet
    leaves the host. The device id is `<name>-dev` (default `net<N>`), for monitor
    commands such as `set_link net1-dev off`.
    """

    mac: str = attrs.field(converter=_lower)
    forwards: tuple[Forward, ...] = attrs.field(default=(), converter=_forwards)
    net: str = attrs.field(default=SLIRP_NET)
    bootfile: str | None = None
    tftp_server_name: str | None = None
    model: str = "virtio-net-pci"
    name: str | None = None

    @mac.validator
    def _check_mac(self, _attribute: object, value: str) -> None:
        if not _MAC.match(value) or int(value[:2], 16) & 1:
            raise ValueError(f"not a unicast MAC address: {value!r}")

    @net.validator
    def _check_net(self, _attribute: object, value: str) -> None:
        if ipaddress.ip_network(value).prefixlen > 24:
            raise ValueError(f"the lab needs at least a /24 for a NIC: {value}")

    def _host(self, number: int) -> str:
        return str(ipaddress.ip_network(self.net)[number])

    @property
    def host_addr(self) -> str:
        """slirp: the DHCP server (host part .1)."""
        return self._host(1)

    @property
    def server_addr(self) -> str:
        """Where the forwarded servers are (host part .2)."""
        return self._host(2)

    @property
    def guest_addr(self) -> str:
        """What DHCP leases (host part .15)."""
        return self._host(15)


def _nic_args(nics: Sequence[Nic], relay_log: Path) -> list[str]:
    args: list[str] = []
    seen: set[tuple[str, int]] = set()
    for index, nic in enumerate(nics):
        nid = nic.name or f"net{index}"
        spec = (
            f"user,id={nid},restrict=on,ipv6=off,net={nic.net},host={nic.host_addr},"
            f"dhcpstart={nic.guest_addr}"
        )
        if nic.bootfile is not None:
            spec += f",bootfile={_opt(nic.bootfile)}"
        if nic.tftp_server_name is not None:
            spec += f",tftp-server-name={_opt(nic.tftp_server_name)}"
        for fwd in nic.forwards:
            addr = fwd.guest_addr or nic.server_addr
            if ipaddress.ip_address(addr) not in ipaddress.ip_network(nic.net):
                raise ValueError(f"forward to {addr} is outside the NIC's network {nic.net}")
            if (nid, fwd.guest_port) in seen and fwd.guest_addr is None:
                raise ValueError(f"{nid}: guest port {fwd.guest_port} forwarded twice")
            seen.add((nid, fwd.guest_port))
            relay = shlex.join(
                [sys.executable, "-I", "-S", str(GUESTFWD), str(fwd.host_port), str(relay_log)]
            )
            spec += f",guestfwd=tcp:{addr}:{fwd.guest_port}-cmd:{_opt(relay)}"
        args += ["-netdev", spec, "-device", f"{nic.model},netdev={nid},mac={nic.mac},id={nid}-dev"]
    return args


def _opt(value: str | Path) -> str:
    """Escape a value for QEMU's comma-separated option syntax."""
    return str(value).replace(",", ",,")


def _drive_args(drives: Sequence[Drive], machine: str = "pc") -> list[str]:
    args: list[str] = []
    controllers: set[str] = set()
    ide_slot = 0
    # pc: PIIX IDE, two buses of two units; q35: AHCI, six ports of one unit.
    ide_buses, ide_units = (6, 1) if machine.startswith("q35") else (2, 2)
    for index, drive in enumerate(drives):
        if not drive.path.exists():
            raise FileNotFoundError(f"drive image not found: {drive.path}")
        did = drive.name or f"drive{index}"
        cdrom = drive.kind in ("ide-cdrom", "scsi-cd")
        spec = f"id={did},if=none,file={_opt(drive.path.resolve())},format=raw"
        if cdrom:
            spec += ",media=cdrom"
        if cdrom or drive.readonly:
            spec += ",readonly=on"
        device = {
            "virtio": "virtio-blk-pci",
            "ide-cdrom": "ide-cd",
            "scsi-cd": "scsi-cd",
            "usb": "usb-storage",
        }[drive.kind]
        device += f",drive={did},id={did}-dev"
        if drive.kind == "ide-cdrom":
            if ide_slot >= ide_buses * ide_units:
                raise ValueError(f"the {machine} IDE controller has room for {ide_slot} drives")
            device += f",bus=ide.{ide_slot // ide_units},unit={ide_slot % ide_units}"
            ide_slot += 1
        elif drive.kind == "scsi-cd":
            if "scsi" not in controllers:
                args += ["-device", "virtio-scsi-pci,id=scsi0"]
                controllers.add("scsi")
            device += ",bus=scsi0.0"
        elif drive.kind == "usb":
            if "usb" not in controllers:
                args += ["-device", "qemu-xhci,id=xhci"]
                controllers.add("usb")
            device += ",bus=xhci.0"
        if drive.serial is not None:
            device += f",serial={_opt(drive.serial)}"
        if drive.bootindex is not None:
            device += f",bootindex={drive.bootindex}"
        args += ["-drive", spec, "-device", device]
    return args


def qemu_command(
    *,
    kernel: Path | None,
    initrd: Path | None = None,
    append: str = "",
    drives: Sequence[Drive] = (),
    memory_mib: int = 1024,
    monitor: Path | None = None,
    qemu: str = "qemu-system-x86_64",
    extra_args: Sequence[str] = (),
    nics: Sequence[Nic] = (),
    relay_log: Path = Path(os.devnull),
    firmware: Firmware = SEABIOS,
    firmware_vars: Path | None = None,
) -> list[str]:
    """The QEMU command line of a lab guest (TCG, no default devices, no reboot).
    `relay_log` is where the relays of the NICs' forwards log their connections.

    With `kernel`, QEMU starts it directly (`-kernel`, `-initrd`, `-append`). Without,
    the guest boots as a PC does: `firmware` (its variables in `firmware_vars`, a copy
    the guest may write), then the boot loader of the drive with the lowest `bootindex`;
    it gets a display adapter, as a PC has (GRUB's Linux loader on UEFI complains
    without one), shown nowhere."""
    cmd = [
        qemu,
        "-accel",
        "tcg",
        "-M",
        firmware.machine,
        "-m",
        str(memory_mib),
        "-smp",
        "1",
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-no-reboot",
        "-chardev",
        "stdio,id=console,signal=off",
        "-serial",
        "chardev:console",
    ]
    if monitor is not None:
        cmd += ["-monitor", f"unix:{_opt(monitor)},server=on,wait=off"]
    if kernel is not None:
        if initrd is None:
            raise ValueError("a guest booted with -kernel needs an initrd")
        cmd += ["-kernel", str(kernel), "-initrd", str(initrd)]
        cmd += ["-append", f"{DEFAULT_APPEND} {append}".strip()]
    else:
        if append:
            raise ValueError("a firmware boot takes its kernel parameters from the medium")
        if firmware.code is not None:
            if firmware_vars is None:
                raise ValueError(f"{firmware.name} needs a copy of its variable store")
            cmd += ["-drive", f"if=pflash,format=raw,readonly=on,file={_opt(firmware.code)}"]
            cmd += ["-drive", f"if=pflash,format=raw,file={_opt(firmware_vars)}"]
        cmd += [*firmware.extra_args, "-vga", "std"]
    cmd += _drive_args(drives, firmware.machine)
    cmd += _nic_args(nics, relay_log)
    cmd += list(extra_args)
    return cmd


def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "guest"


class Guest:
    """A running QEMU guest; use it as a context manager (QEMU is killed on exit).

    `kernel` is a `Kernel` (its uncompressed `vmlinux` is booted, or its bzImage when
    the vmlinux has no PVH entry: `Kernel.boot_file`) or a kernel file; None boots as a
    PC does, through `firmware` and the boot loader of the drive with a `bootindex`, on
    `arch`'s QEMU (qemu-system-i386 for "i686").
    `timeout` is the hard limit of the whole run: the watchdog kills QEMU then.
    `nics` are its network cards (none by default); the relays of their forwards log
    each connection to `relay_log_path` (`<lab>/logs/<name>.relay.log`).
    """

    def __init__(
        self,
        name: str,
        *,
        kernel: Kernel | Path | None,
        initrd: Path | None = None,
        append: str = "",
        drives: Sequence[Drive] = (),
        memory_mib: int = 1024,
        timeout: float = 300.0,
        extra_args: Sequence[str] = (),
        log_dir: Path | None = None,
        nics: Sequence[Nic] = (),
        firmware: Firmware = SEABIOS,
        arch: str = "x86_64",
    ) -> None:
        self.name = _safe_name(name)
        self.kernel_path: Path | None
        if isinstance(kernel, Kernel):
            self.kernel_path = kernel.boot_file
            arch = kernel.arch
        else:
            self.kernel_path = None if kernel is None else Path(kernel)
        self.qemu = ARCHES[arch].qemu
        self.firmware = firmware
        if kernel is None:
            firmware.check()
        self.initrd = None if initrd is None else Path(initrd)
        self.append = append
        self.drives = tuple(drives)
        self.memory_mib = memory_mib
        self.timeout = timeout
        self.extra_args = tuple(extra_args)
        self.nics = tuple(nics)
        logs = log_dir if log_dir is not None else lab_dir() / "logs"
        self.log_path = logs / f"{self.name}.log"
        self.stderr_path = logs / f"{self.name}.qemu-stderr.log"
        self.relay_log_path = logs / f"{self.name}.relay.log"
        self.command: list[str] = []

        self._proc: subprocess.Popen[bytes] | None = None
        self._tmpdir: Path | None = None
        self._cond = threading.Condition()
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._raw = bytearray()
        self._text = ""
        self._cursor = 0
        self._stderr = bytearray()
        self._eof = False
        self._timed_out = False
        self._started = 0.0
        self._threads: list[threading.Thread] = []
        self._watchdog: threading.Timer | None = None
        self._log: IO[bytes] | None = None
        self._monitor_sock: socket.socket | None = None

    # --- lifecycle ---------------------------------------------------------------------

    def __enter__(self) -> Guest:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def monitor_path(self) -> Path:
        if self._tmpdir is None:
            raise RuntimeError("the guest is not started")
        return self._tmpdir / "monitor.sock"

    def start(self) -> None:
        """Start QEMU (once)."""
        if self._proc is not None:
            raise RuntimeError(f"guest {self.name} already started")
        self._tmpdir = Path(tempfile.mkdtemp(prefix="lab-qemu-"))
        firmware_vars = None
        if self.kernel_path is None and self.firmware.vars is not None:
            firmware_vars = self._tmpdir / "firmware-vars.fd"
            shutil.copyfile(self.firmware.vars, firmware_vars)
        self.command = qemu_command(
            kernel=self.kernel_path,
            initrd=self.initrd,
            append=self.append,
            drives=self.drives,
            memory_mib=self.memory_mib,
            monitor=self.monitor_path,
            qemu=self.qemu,
            extra_args=self.extra_args,
            nics=self.nics,
            relay_log=self.relay_log_path,
            firmware=self.firmware,
            firmware_vars=firmware_vars,
        )
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        if self.nics:
            self.relay_log_path.write_text("")
        log = self.log_path.open("wb")
        log.write(f"# {shlex.join(self.command)}\n".encode())
        log.flush()
        self._log = log
        self._started = time.monotonic()
        try:
            self._proc = subprocess.Popen(
                self.command,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                start_new_session=True,
            )
        except OSError:
            self.close()
            raise
        assert self._proc.stdout is not None and self._proc.stderr is not None
        self._threads = [
            threading.Thread(target=self._read_console, args=(self._proc.stdout,), daemon=True),
            threading.Thread(target=self._read_stderr, args=(self._proc.stderr,), daemon=True),
        ]
        for thread in self._threads:
            thread.start()
        self._watchdog = threading.Timer(self.timeout, self._on_deadline)
        self._watchdog.daemon = True
        self._watchdog.start()

    def close(self) -> None:
        """Kill QEMU if it still runs and release everything (idempotent)."""
        if self._watchdog is not None:
            self._watchdog.cancel()
        if self._monitor_sock is not None:
            self._monitor_sock.close()
            self._monitor_sock = None
        if self._proc is not None and self._proc.poll() is None:
            self._kill()
            self._proc.wait()
        for thread in self._threads:
            thread.join(timeout=5)
        if self._proc is not None:
            for stream in (self._proc.stdin, self._proc.stdout, self._proc.stderr):
                if stream is not None:
                    with contextlib.suppress(OSError):
                        stream.close()
        with self._cond:
            log, self._log = self._log, None
        if log is not None:
            log.close()
            self.stderr_path.write_bytes(bytes(self._stderr))
        if self._tmpdir is not None:
            shutil.rmtree(self._tmpdir, ignore_errors=True)

    def _kill(self) -> None:
        assert self._proc is not None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self._proc.pid, signal.SIGKILL)

    def _on_deadline(self) -> None:
        with self._cond:
            self._timed_out = True
            self._cond.notify_all()
        if self._proc is not None and self._proc.poll() is None:
            self._kill()

    # --- console -----------------------------------------------------------------------

    def _read_console(self, stream: IO[bytes]) -> None:
        fd = stream.fileno()
        while True:
            try:
                data = os.read(fd, 65536)
            except OSError:
                data = b""
            with self._cond:
                if not data:
                    self._text += self._decoder.decode(b"", final=True).replace("\r", "")
                    self._eof = True
                    self._cond.notify_all()
                    return
                self._raw += data
                self._text += self._decoder.decode(data).replace("\r", "")
                if self._log is not None:
                    self._log.write(data)
                    self._log.flush()
                self._cond.notify_all()

    def _read_stderr(self, stream: IO[bytes]) -> None:
        fd = stream.fileno()
        while True:
            try:
                data = os.read(fd, 65536)
            except OSError:
                return
            if not data:
                return
            with self._cond:
                self._stderr += data

    @property
    def output(self) -> str:
        """Everything the console printed so far (decoded, carriage returns removed)."""
        with self._cond:
            return self._text

    def relayed(self) -> list[str]:
        """The relay log's lines so far (`vm/guestfwd.py`: `<time> <pid> connect
        127.0.0.1:<port> ok|failed: <why>` and `... done ... to_server=<n> to_guest=<n>`)."""
        try:
            return self.relay_log_path.read_text().splitlines()
        except FileNotFoundError:
            return []

    @property
    def raw_output(self) -> bytes:
        with self._cond:
            return bytes(self._raw)

    @property
    def elapsed(self) -> float:
        """Seconds since QEMU started."""
        return time.monotonic() - self._started if self._started else 0.0

    def expect(self, pattern: str | re.Pattern[str], timeout: float = 60.0) -> re.Match[str]:
        """Wait for `pattern` in the console output after the previous match.

        A `str` pattern is compiled with `re.MULTILINE | re.DOTALL` (as pexpect does: `^`
        and `$` match at line ends, `.` matches newlines too; the output has no carriage
        returns). The match is searched in everything printed so far, so anchor on "\\n"
        when the whole line matters. Raises `GuestError` (with the log tail) on timeout,
        when QEMU exits first, or when the hard timeout killed it.
        """
        if isinstance(pattern, str):
            regex = re.compile(pattern, re.MULTILINE | re.DOTALL)
        else:
            regex = pattern
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                match = regex.search(self._text, self._cursor)
                if match:
                    self._cursor = match.end()
                    return match
                if self._timed_out:
                    raise self._error(
                        f"hard timeout ({self.timeout:.0f} s) hit while waiting for "
                        f"/{regex.pattern}/; QEMU was killed"
                    )
                if self._eof:
                    break
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise self._error(
                        f"timed out after {timeout:.0f} s waiting for /{regex.pattern}/"
                    )
                self._cond.wait(min(remaining, 1.0))
        # QEMU closed the console: let the readers finish (stderr explains why) first.
        assert self._proc is not None
        try:
            status = self._proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._kill()
            status = self._proc.wait()
        for thread in self._threads:
            thread.join(timeout=5)
        raise self._error(f"QEMU exited (status {status}) before /{regex.pattern}/ appeared")

    def send(self, line: str) -> None:
        """Type `line` and Enter on the serial console."""
        self.type(line + "\n")

    def type(self, keys: str) -> None:
        """Type `keys` on the serial console as they are (a boot menu's arrows are
        `"\\x1b[B"`, Enter is `"\\r"`)."""
        if self._proc is None or self._proc.stdin is None:
            raise RuntimeError("the guest is not started")
        try:
            self._proc.stdin.write(keys.encode())
            self._proc.stdin.flush()
        except BrokenPipeError:
            raise self._error(f"QEMU is gone: cannot send {keys!r}") from None

    def wait(self, timeout: float = 60.0) -> int:
        """Wait for QEMU to exit and return its status; kill it and raise on timeout."""
        if self._proc is None:
            raise RuntimeError("the guest is not started")
        try:
            status = self._proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self._kill()
            self._proc.wait()
            raise self._error(f"QEMU did not exit within {timeout:.0f} s; killed") from None
        for thread in self._threads:
            thread.join(timeout=5)
        if self._timed_out:
            raise self._error(f"hard timeout ({self.timeout:.0f} s): QEMU was killed")
        return status

    # --- monitor -----------------------------------------------------------------------

    def monitor(self, command: str, timeout: float = 10.0) -> str:
        """Run a human-monitor command (e.g. `info block`, `device_del drive1-dev`) and
        return its output (without the echoed command and the prompt)."""
        if self._monitor_sock is None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(timeout)
            deadline = time.monotonic() + timeout
            while True:
                try:
                    sock.connect(str(self.monitor_path))
                    break
                except (FileNotFoundError, ConnectionRefusedError):
                    if time.monotonic() > deadline:
                        sock.close()
                        raise self._error("the QEMU monitor socket did not appear") from None
                    time.sleep(0.05)
            self._monitor_sock = sock
            self._monitor_read(timeout)  # banner and first prompt
        sock = self._monitor_sock
        sock.settimeout(timeout)
        sock.sendall(command.encode() + b"\n")
        reply = _ANSI.sub("", self._monitor_read(timeout)).replace("\r", "")
        lines = reply.split("\n")
        if lines and lines[0].strip().endswith(command.strip()):
            lines = lines[1:]
        return "\n".join(lines).rstrip()

    def _monitor_read(self, timeout: float) -> str:
        assert self._monitor_sock is not None
        data = b""
        deadline = time.monotonic() + timeout
        while not data.endswith(b"(qemu) "):
            if time.monotonic() > deadline:
                raise self._error("no (qemu) prompt from the monitor")
            chunk = self._monitor_sock.recv(65536)
            if not chunk:
                raise self._error("the QEMU monitor closed the connection")
            data += chunk
        return data[: -len(b"(qemu) ")].decode(errors="replace")

    # --- errors ------------------------------------------------------------------------

    def tail(self, lines: int = 40) -> str:
        with self._cond:
            return "\n".join(self._text.rstrip("\n").split("\n")[-lines:])

    def _error(self, message: str) -> GuestError:
        with self._cond:
            stderr = self._stderr.decode(errors="replace").strip()
        parts = [
            f"guest {self.name!r}: {message} (after {self.elapsed:.1f} s)",
            f"serial log: {self.log_path}",
            "--- last lines of the serial console ---",
            self.tail(),
            "--- end of the serial console ---",
        ]
        if stderr:
            parts += ["--- QEMU stderr ---", stderr]
        return GuestError("\n".join(parts))
