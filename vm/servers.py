"""Real servers from Debian's packages on the host's loopback, for network boot tests.

Each server runs as root, in the foreground, from a configuration written here into a
private temporary directory (`workdir`), and listens on 127.0.0.1 only, on a free port
chosen at construction (kept across `stop()` and `start()`). `start()` returns once the
process itself has its listening socket (read from /proc, so no probe connection
pollutes the logs); `stop()` sends SIGTERM to the server's process group and SIGKILL
after a grace time; the context manager stops it and removes `workdir`. What the server
logged stays readable in `log_path` (and `Nginx.access_log`) until then.

    with Nginx(www, rate_limit="256k") as http, NbdServer(image) as nbd:
        guest = Guest(..., nics=[Nic(mac(1), forwards=[http.forward(), nbd.forward()])])

Guests reach a server through QEMU's user-mode network at `vm.qemu.SERVER_ADDR` on the
protocol's usual port (`forward()`: 80, 10809, 2049), relayed to 127.0.0.1:`port` (see
`vm.qemu.Forward`). Servers:

- `Nginx(root_dir, rate_limit=None)`: HTTP/1.1 with byte ranges, `limit_rate`;
  `stop()` then `start()` again on the same port (a server going away mid-download);
  `requests()` parses the access log; `established()` counts open connections.
- `NbdServer(export_file, name="archiso")`: nbd-server, newstyle, one read-only export.
- `NfsServer(export_dir, pseudo="/archiso")`: nfs-ganesha in user space, NFSv4.x only
  (no rpcbind, no mountd), FSAL_VFS, read-only; no kernel nfsd is needed.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Self

import attrs

from vm.qemu import Forward

__all__ = [
    "HOST",
    "AccessEntry",
    "NbdServer",
    "NfsServer",
    "Nginx",
    "Server",
    "ServerError",
    "free_port",
    "listening_pids",
]

#: The only address the servers listen on.
HOST = "127.0.0.1"
_LOOPBACK_HEX = {"0100007F", "0000000000000000FFFF00000100007F"}  # 127.0.0.1, ::ffff:127.0.0.1
_TCP_LISTEN = "0A"
_TCP_ESTABLISHED = "01"


class ServerError(RuntimeError):
    """A server did not start or stop as expected (the message carries its log tail)."""


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (the kernel's choice)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def _tcp_sockets(port: int) -> list[tuple[str, str, str]]:
    """(local address hex, state hex, inode) of the TCP sockets on local `port`."""
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as f:
            next(f)
            for line in f:
                fields = line.split()
                addr, _, port_hex = fields[1].partition(":")
                if int(port_hex, 16) == port:
                    found.append((addr, fields[3], fields[9]))
    return found


def _socket_inodes(pid: int) -> set[str]:
    inodes = set()
    with contextlib.suppress(OSError):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
    return inodes


def listening_pids(port: int, pids: Sequence[int]) -> bool:
    """Whether one of `pids` holds a socket listening on 127.0.0.1:`port` (IPv4 or
    v4-mapped IPv6)."""
    listening = {
        inode
        for addr, state, inode in _tcp_sockets(port)
        if state == _TCP_LISTEN and addr in _LOOPBACK_HEX
    }
    return any(listening & _socket_inodes(pid) for pid in pids)


class Server:
    """Base class: one server process in the foreground, in its own process group.

    Subclasses set `name` and `default_guest_port` and implement `_configure()` (write
    the configuration into `workdir`) and `_command()`.
    """

    name = "server"
    default_guest_port = 0

    def __init__(
        self, *, port: int | None = None, workdir: Path | None = None, timeout: float = 30.0
    ) -> None:
        self._auto_port = port is None
        self.port = port if port is not None else free_port()
        self._own_workdir = workdir is None
        self.workdir = Path(workdir) if workdir is not None else Path()
        if workdir is not None:
            self.workdir.mkdir(parents=True, exist_ok=True)
        self.timeout = timeout
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self._served = False  # started once: the port is ours, never change it again

    # --- paths and addresses ------------------------------------------------------------

    @property
    def log_path(self) -> Path:
        """The server's own output (stdout and stderr, or its log file)."""
        return self.workdir / f"{self.name}.log"

    @property
    def address(self) -> tuple[str, int]:
        return (HOST, self.port)

    def forward(self, guest_port: int | None = None) -> Forward:
        """How a guest reaches this server: `vm.qemu.SERVER_ADDR`:`guest_port` (the
        protocol's usual port by default) relayed to 127.0.0.1:`port`."""
        return Forward(host_port=self.port, guest_port=guest_port or self.default_guest_port)

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    # --- lifecycle ----------------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        """The server's main process (whose process group gets the signals)."""
        return self._leader()

    @property
    def running(self) -> bool:
        leader = self._leader()
        return leader is not None and _alive(leader)

    def __enter__(self) -> Self:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def start(self) -> Self:
        """Start the server and wait until it listens on 127.0.0.1:`port`. A port chosen
        here and taken by someone else before the first start is chosen again."""
        if self.running:
            raise ServerError(f"{self.name} on port {self.port} is already running")
        if self._own_workdir and not self.workdir.parts:
            self.workdir = Path(tempfile.mkdtemp(prefix=f"lab-{self.name}-"))
        attempts = 3 if self._auto_port and not self._served else 1
        for attempt in range(attempts):
            self._configure()
            self._spawn()
            try:
                self._wait_listening()
            except ServerError:
                self._terminate(grace=5.0)
                if attempt + 1 == attempts or self._port_free():
                    raise
                self.port = free_port()  # lost a race for the port: try another one
                continue
            self._served = True
            return self
        raise AssertionError("unreachable")

    def stop(self, grace: float = 15.0) -> None:
        """SIGTERM (the server's fast shutdown), SIGKILL after `grace` seconds."""
        self._terminate(grace=grace)

    def kill(self) -> None:
        """SIGKILL at once: the server vanishes without closing anything itself."""
        self._terminate(grace=0.0)

    def close(self) -> None:
        """Stop the server and remove `workdir` if it was made here (idempotent)."""
        self._terminate(grace=15.0)
        if self._own_workdir and self.workdir.parts:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = Path()

    # --- subclass interface -------------------------------------------------------------

    def _configure(self) -> None:
        raise NotImplementedError

    def _command(self) -> list[str]:
        raise NotImplementedError

    def _stop_signal(self) -> int:
        return signal.SIGTERM

    def _leader(self) -> int | None:
        """The server's main process: the one started here, by default."""
        if self._proc is None or self._proc.returncode is not None or _exited(self._proc.pid):
            return None
        return self._proc.pid

    # --- internals ----------------------------------------------------------------------

    def _spawn(self) -> None:
        command = self._command()
        log = self.log_path.open("ab")
        log.write(f"# {' '.join(command)}\n".encode())
        log.flush()
        self._log = log
        try:
            self._proc = subprocess.Popen(
                command,
                cwd=self.workdir,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        except OSError as e:
            self._close_log()
            raise ServerError(f"{self.name}: cannot run {command[0]}: {e}") from e

    def _wait_listening(self) -> None:
        assert self._proc is not None
        deadline = time.monotonic() + self.timeout
        while True:
            if _exited(self._proc.pid):
                raise self._error(f"exited with status {self._proc.wait()} before listening")
            if listening_pids(self.port, self._pids()):
                return
            if time.monotonic() > deadline:
                raise self._error(f"not listening on {HOST}:{self.port} after {self.timeout} s")
            time.sleep(0.05)

    def _pids(self) -> list[int]:
        """The server's processes: its leader's session (those that may hold sockets)."""
        leader = self._leader()
        return _session(leader) if leader is not None else []

    def _port_free(self) -> bool:
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                sock.bind((HOST, self.port))
        except OSError:
            return False
        return True

    def _terminate(self, grace: float) -> None:
        """Signal the process group while its leader is not reaped (so that its id
        cannot belong to anyone else), SIGKILL what is left, then reap the leader."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.returncode is None:
            if grace > 0 and not _exited(proc.pid):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, self._stop_signal())
                deadline = time.monotonic() + grace
                while not _exited(proc.pid) and time.monotonic() < deadline:
                    time.sleep(0.02)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        self._close_log()

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    def _error(self, message: str) -> ServerError:
        tail = "\n".join(self.log_text().rstrip("\n").split("\n")[-30:])
        return ServerError(
            f"{self.name} ({HOST}:{self.port}): {message}\n--- {self.log_path} ---\n{tail}"
        )


# --- nginx ------------------------------------------------------------------------------

#: Tab-separated, one request a line: see `AccessEntry`.
_NGINX_LOG_FORMAT = (
    "$remote_addr\\t$request_method\\t$request_uri\\t$status\\t$body_bytes_sent\\t"
    "$http_range\\t$request_completion\\t$connection"
)


@attrs.frozen
class AccessEntry:
    """One line of `Nginx`'s access log (written when a request ends, not when it
    starts; a request cut off by `stop()` may not be logged at all)."""

    remote: str
    method: str
    path: str
    status: int
    #: bytes of the body sent (a partial count when the transfer was cut off)
    body_bytes: int
    #: the request's Range header, "" without one
    range: str
    #: whether nginx sent the whole response
    complete: bool
    #: nginx's connection serial number: requests on one connection share it
    connection: int

    @classmethod
    def parse(cls, line: str) -> AccessEntry:
        remote, method, path, status, sent, rng, completion, conn = line.split("\t")
        return cls(
            remote=remote,
            method=method,
            path=path,
            status=int(status),
            body_bytes=int(sent),
            range="" if rng == "-" else rng,
            complete=completion == "OK",
            connection=int(conn),
        )


class Nginx(Server):
    """nginx serving `root_dir` over HTTP/1.1 on 127.0.0.1:`port`.

    Byte ranges (`Range:`, 206) are nginx's default for static files. `rate_limit`
    is nginx's `limit_rate` per connection (bytes/s: an int, or nginx's "256k", "1m"):
    it makes a download slow enough to be cut off half-way by `stop()` (SIGTERM, nginx's
    fast shutdown: open connections are closed) or `kill()`; `start()` serves again on
    the same port, and the access log goes on. The workers run as root, so `root_dir`
    may be anywhere (pytest's temporary directories are mode 0700).
    """

    name = "nginx"
    default_guest_port = 80

    def __init__(
        self,
        root_dir: Path,
        rate_limit: int | str | None = None,
        *,
        port: int | None = None,
        workdir: Path | None = None,
        timeout: float = 30.0,
        tls: tuple[Path, Path] | None = None,
    ) -> None:
        super().__init__(port=port, workdir=workdir, timeout=timeout)
        self.root_dir = Path(root_dir).resolve()
        if not self.root_dir.is_dir():
            raise ServerError(f"nginx: no directory {self.root_dir}")
        #: may be changed between `stop()` and `start()`
        self.rate_limit = rate_limit
        #: https with this certificate and key (vm/tlsca.py makes them)
        self.tls = tls
        if tls is not None:
            self.default_guest_port = 443

    @property
    def access_log(self) -> Path:
        return self.workdir / "access.log"

    @property
    def error_log(self) -> Path:
        return self.workdir / "error.log"

    @property
    def url(self) -> str:
        """The root URL from the host: http(s)://127.0.0.1:<port>/"""
        return f"{'https' if self.tls else 'http'}://{HOST}:{self.port}/"

    def requests(self) -> list[AccessEntry]:
        """The access log so far, oldest first."""
        try:
            text = self.access_log.read_text()
        except FileNotFoundError:
            return []
        return [AccessEntry.parse(line) for line in text.splitlines() if line]

    def wait_requests(self, count: int, timeout: float = 30.0) -> list[AccessEntry]:
        """The access log once it has at least `count` requests (nginx writes a line
        just after a response's last byte went out, so a client may be faster)."""
        deadline = time.monotonic() + timeout
        while len(entries := self.requests()) < count:
            if time.monotonic() > deadline:
                raise ServerError(
                    f"nginx: {len(entries)} of {count} requests logged after {timeout} s: {entries}"
                )
            time.sleep(0.05)
        return entries

    def established(self) -> int:
        """TCP connections open to the server now (e.g. a download in progress)."""
        return sum(
            1
            for addr, state, _ in _tcp_sockets(self.port)
            if state == _TCP_ESTABLISHED and addr in _LOOPBACK_HEX
        )

    def log_text(self) -> str:
        """nginx's error log (and what it printed before opening it)."""
        parts = [super().log_text()]
        with contextlib.suppress(FileNotFoundError):
            parts.append(self.error_log.read_text(errors="replace"))
        return "".join(parts)

    def _configure(self) -> None:
        temp = self.workdir / "temp"
        temp.mkdir(exist_ok=True)
        rate = f"    limit_rate {self.rate_limit};\n" if self.rate_limit is not None else ""
        listen = f"{HOST}:{self.port}"
        if self.tls is not None:
            cert, key = self.tls
            listen += f" ssl;\n        ssl_certificate {cert};\n        ssl_certificate_key {key}"
        conf = f"""\
# Written by vm/servers.py: nginx for a lab test, 127.0.0.1 only.
daemon off;
master_process on;
worker_processes 1;
user root root;
pid {self.workdir}/nginx.pid;
error_log {self.error_log} info;
events {{
    worker_connections 128;
}}
http {{
    default_type application/octet-stream;
    types {{ }}
    server_tokens off;
    sendfile on;
    keepalive_timeout 10s;
    log_format lab "{_NGINX_LOG_FORMAT}";
    access_log {self.access_log} lab;
    client_body_temp_path {temp}/body;
    proxy_temp_path {temp}/proxy;
    fastcgi_temp_path {temp}/fastcgi;
    uwsgi_temp_path {temp}/uwsgi;
    scgi_temp_path {temp}/scgi;
    server {{
        listen {listen};
        root {self.root_dir};
        autoindex off;
{rate}    }}
}}
"""
        (self.workdir / "nginx.conf").write_text(conf)

    def _command(self) -> list[str]:
        return [
            _which("nginx", "/usr/sbin/nginx"),
            "-p",
            f"{self.workdir}/",
            "-c",
            str(self.workdir / "nginx.conf"),
            "-e",
            str(self.error_log),
        ]


# --- nbd-server -------------------------------------------------------------------------


class NbdServer(Server):
    """nbd-server exporting `export_file` read-only as `name` (newstyle negotiation:
    NBD_OPT_GO / NBD_OPT_EXPORT_NAME, NBD_OPT_LIST allowed) on 127.0.0.1:`port`.

    nbd-server goes to the background (its `-d` would serve one client at a time; in
    the background it forks a child a client, so several guests can use the export at
    once): `pid` is the daemon's, read from its pid file. The daemon itself logs only
    to syslog, which nothing reads here; `log_path` has what it printed before going to
    the background, and a line a client from its `prerun` and `postrun` commands:
    `nbd-open <file>` when a client asked for the export, `nbd-close <file>` when it
    went away (`connections()`).
    """

    name = "nbd-server"
    default_guest_port = 10809

    def __init__(
        self,
        export_file: Path,
        name: str = "archiso",
        *,
        port: int | None = None,
        workdir: Path | None = None,
        timeout: float = 30.0,
    ) -> None:
        super().__init__(port=port, workdir=workdir, timeout=timeout)
        self.export_file = Path(export_file).resolve()
        if not self.export_file.is_file():
            raise ServerError(f"nbd-server: no file {self.export_file}")
        self.export_name = name
        self._daemon: int | None = None

    @property
    def pid_file(self) -> Path:
        return self.workdir / "nbd-server.pid"

    def connections(self) -> list[str]:
        """`open` and `close` events of the export, in order (from prerun/postrun)."""
        return [
            line.split(" ", 1)[0].removeprefix("nbd-")
            for line in self.log_text().splitlines()
            if line.startswith(("nbd-open ", "nbd-close "))
        ]

    def _leader(self) -> int | None:
        return self._daemon if self._daemon is not None and _alive(self._daemon) else None

    def _wait_listening(self) -> None:
        assert self._proc is not None
        try:
            status = self._proc.wait(timeout=self.timeout)
        except subprocess.TimeoutExpired:
            raise self._error(f"did not go to the background in {self.timeout} s") from None
        if status != 0:
            raise self._error(f"exited with status {status} before listening")
        deadline = time.monotonic() + self.timeout
        while True:
            with contextlib.suppress(OSError, ValueError):
                self._daemon = int(self.pid_file.read_text().strip())
            if self._daemon is not None:
                if not _alive(self._daemon):
                    raise self._error(f"the daemon (pid {self._daemon}) exited")
                if listening_pids(self.port, _session(self._daemon)):
                    return
            if time.monotonic() > deadline:
                raise self._error(f"not listening on {HOST}:{self.port} after {self.timeout} s")
            time.sleep(0.05)

    def _terminate(self, grace: float) -> None:
        daemon, self._daemon = self._daemon, None
        if daemon is not None and _alive(daemon):
            deadline = time.monotonic() + grace
            for sig in (signal.SIGTERM, signal.SIGKILL):
                if sig == signal.SIGTERM and grace <= 0:
                    continue
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(daemon, sig)
                while _alive(daemon) and time.monotonic() < deadline:
                    time.sleep(0.05)
                if not _alive(daemon):
                    break
                deadline = time.monotonic() + 10
        super()._terminate(grace)
        if daemon is not None and _alive(daemon):
            raise ServerError(f"nbd-server: pid {daemon} survived SIGKILL")

    def _configure(self) -> None:
        if any(c in self.export_name for c in "[]\n"):
            raise ServerError(f"nbd-server: bad export name {self.export_name!r}")
        conf = f"""\
# Written by vm/servers.py: nbd-server for a lab test, 127.0.0.1 only.
[generic]
    user = root
    group = root
    listenaddr = {HOST}
    port = {self.port}
    allowlist = true
[{self.export_name}]
    exportname = {self.export_file}
    readonly = true
    prerun = echo nbd-open %s >>{self.log_path}
    postrun = echo nbd-close %s >>{self.log_path}
"""
        (self.workdir / "nbd-server.conf").write_text(conf)

    def _command(self) -> list[str]:
        return [
            _which("nbd-server", "/usr/bin/nbd-server"),
            "-C",
            str(self.workdir / "nbd-server.conf"),
            "-p",
            str(self.pid_file),
        ]


# --- nfs-ganesha ------------------------------------------------------------------------


class NfsServer(Server):
    """nfs-ganesha exporting `export_dir` read-only over NFSv4 (4.0, 4.1, 4.2) at the
    pseudo path `pseudo`, TCP on 127.0.0.1:`port`, AUTH_SYS, no root squash.

    User space: no kernel nfsd, no rpcbind or mountd (NFSv4 needs neither), no grace
    period (`Graceless`). Its FSAL_VFS opens files by handle (open_by_handle_at, which
    needs CAP_DAC_READ_SEARCH: root here). Mount from a guest with
    `mount -t nfs4 -o ro,vers=4.2,addr=<SERVER_ADDR> <SERVER_ADDR>:<pseudo> /mnt`
    (port 2049 through `forward()`), or read from the host with libnfs's
    `nfs-cat nfs://127.0.0.1/<pseudo>/<file>?version=4&nfsport=<port>`.
    """

    name = "ganesha"
    default_guest_port = 2049

    def __init__(
        self,
        export_dir: Path,
        pseudo: str = "/archiso",
        *,
        port: int | None = None,
        workdir: Path | None = None,
        timeout: float = 30.0,
    ) -> None:
        super().__init__(port=port, workdir=workdir, timeout=timeout)
        self.export_dir = Path(export_dir).resolve()
        if not self.export_dir.is_dir():
            raise ServerError(f"ganesha: no directory {self.export_dir}")
        if not pseudo.startswith("/") or '"' in pseudo:
            raise ServerError(f"ganesha: bad pseudo path {pseudo!r}")
        self.pseudo = pseudo

    def url(self, path: str = "") -> str:
        """A libnfs URL for `path` under the export, from the host."""
        return f"nfs://{HOST}{self.pseudo}/{path.lstrip('/')}?version=4&nfsport={self.port}"

    def _configure(self) -> None:
        recovery = self.workdir / "recovery"
        recovery.mkdir(exist_ok=True)
        plugins = _ganesha_plugins_dir()
        conf = f"""\
# Written by vm/servers.py: nfs-ganesha for a lab test, NFSv4 on 127.0.0.1 only.
NFS_CORE_PARAM {{
    Protocols = 4;
    NFS_Port = {self.port};
    Bind_addr = {HOST};
    Enable_NLM = false;
    Enable_RQUOTA = false;
    Enable_UDP = false;
    Plugins_Dir = "{plugins}";
}}
NFSV4 {{
    Graceless = true;
    RecoveryRoot = "{recovery}";
}}
EXPORT {{
    Export_Id = 1;
    Path = "{self.export_dir}";
    Pseudo = "{self.pseudo}";
    Access_Type = RO;
    Squash = No_Root_Squash;
    Protocols = 4;
    Transports = TCP;
    SecType = sys;
    FSAL {{
        Name = VFS;
    }}
}}
LOG {{
    Default_Log_Level = EVENT;
}}
"""
        (self.workdir / "ganesha.conf").write_text(conf)

    def _command(self) -> list[str]:
        return [
            _which("ganesha.nfsd", "/usr/bin/ganesha.nfsd"),
            "-F",
            "-f",
            str(self.workdir / "ganesha.conf"),
            "-L",
            str(self.log_path),
            "-p",
            str(self.workdir / "ganesha.pid"),
            "-N",
            "NIV_EVENT",
        ]


def _ganesha_plugins_dir() -> Path:
    for candidate in [*sorted(Path("/usr/lib").glob("*/ganesha")), Path("/usr/lib64/ganesha")]:
        if (candidate / "libfsalvfs.so").exists():
            return candidate
    raise ServerError("nfs-ganesha's FSAL_VFS (libfsalvfs.so) is not installed: nfs-ganesha-vfs")


def _stat(pid: int) -> list[str]:
    """/proc/<pid>/stat after the command name: state, ppid, pgrp, session, ..."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return []


def _exited(pid: int) -> bool:
    """Whether our child `pid` has exited, without reaping it."""
    try:
        info = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        return True  # already reaped
    return info is not None


def _alive(pid: int) -> bool:
    fields = _stat(pid)
    return bool(fields) and fields[0] not in ("Z", "X")


def _session(leader: int) -> list[int]:
    """`leader` and every process of the session it leads."""
    pids = [leader]
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != leader:
            fields = _stat(int(entry))
            if len(fields) > 3 and int(fields[3]) == leader:
                pids.append(int(entry))
    return pids


def _which(program: str, default: str) -> str:
    found = shutil.which(program) or shutil.which(program, path="/usr/sbin:/sbin")
    if found is None and not Path(default).exists():
        raise ServerError(f"{program} is not installed (make setup installs it)")
    return found or default
