"""The network boot's steps: BringUpNetwork, FetchHttp, AttachNbd and MountNfs, and what
they leave behind (the DNS servers, a link taken down once the images are in RAM).

Imported by the executor only when the plan has a network step: pyroute2 and the NBD
client come with it, never on a boot from a disk."""

from __future__ import annotations

import os
import socket
import time
from typing import TYPE_CHECKING, Any

from archiso_hook.boot import net, resources
from archiso_hook.boot.mounting import acquired_mount
from archiso_hook.boot.rootpath import resolve_in_root
from archiso_hook.errors import HookError, KernelError
from archiso_hook.kernel import nbd, syscalls
from archiso_hook.log import Log
from archiso_hook.mountopts import parse_mount_options
from archiso_hook.netconf import with_server
from archiso_hook.sizes import human
from archiso_hook.steps import AttachNbd, BringUpNetwork, FetchHttp, MountNfs

if TYPE_CHECKING:
    from archiso_hook.boot.executor import Boot
    from archiso_hook.boot.seam import Network

# An NBD root: seconds a request may take, and that reads wait for a lost connection to
# be replaced (NBD_ATTR_TIMEOUT, NBD_ATTR_DEAD_CONN_TIMEOUT; `watch` reconnects).
NBD_TIMEOUT = 60


class LiveNetwork:
    """The running system's network: pyroute2 (boot/net.py) and the NBD client."""

    def attach_nbd(self, host: str, port: int, name: str, timeout: int) -> Any:
        return nbd.attach(host, port, name, timeout=timeout)

    def detach_nbd(self, device: str) -> None:
        nbd.detach(int(device.removeprefix("/dev/nbd")))

    def bring_up(self, config: Any, bootif: str | None, timeout: float, log: Log) -> Any:
        return net.bring_up(config, bootif, timeout, log)

    def take_down(self, interface: str) -> None:
        net.take_down(interface)

    def write_resolv_conf(self, lease: Any, path: str | None = None) -> bool:
        return net.write_resolv_conf(lease, path or net.RESOLV_CONF)


def _network(boot: Boot) -> Network:
    if boot.network is None:
        boot.network = LiveNetwork()
    return boot.network


def bring_up_network(boot: Boot, step: BringUpNetwork) -> None:
    network = _network(boot)
    boot.lease = lease = network.bring_up(step.config, step.bootif, step.timeout, boot.log)
    link = resources.Link(lease.interface, f"{lease.address}/{lease.prefixlen}", lease.how)
    boot.acquired(link, lambda: network.take_down(lease.interface))
    if network.write_resolv_conf(lease):
        boot.log.info(f"DNS servers {' '.join(map(str, lease.dns))} in {net.RESOLV_CONF}")


def network_done(boot: Boot) -> None:
    """The root no longer needs the network: leave the interface as the live system
    expects to find it, unconfigured (archiso FS#36749)."""
    if boot.lease is None:
        return
    name = boot.lease.interface
    if not boot.release({f"net:{name}"}, why="the images are in RAM"):
        boot.log.info(f"took {name} down: the live root does not need the network")


def _server(boot: Boot, text: str, name: str) -> str:
    server = boot.lease.server if boot.lease is not None else None
    return with_server(text, server, name)


def fetch_http(boot: Boot, step: FetchHttp) -> None:
    url = _server(boot, step.url, "archiso_http_srv")
    start = time.monotonic()
    fetched = boot.call(
        "archiso_hook.boot.httpmedium:fetch_medium",
        url,
        step.basedir,
        step.arch,
        step.root,
        boot.log,
        require_checksums=step.require_checksums,
        signatures=step.signatures,
    )
    seconds = time.monotonic() - start
    total = sum(f.size for f in fetched)
    boot.log.info(
        f"downloaded {len(fetched)} image(s), {human(total)} in {seconds:.1f} s "
        f"({human(total / seconds if seconds else 0.0)}/s) into RAM"
    )
    boot.state.timings["download_seconds"] = round(seconds, 3)
    network_done(boot)


def attach_nbd(boot: Boot, step: AttachNbd) -> None:
    network = _network(boot)
    host = _server(boot, step.host, "archiso_nbd_srv")
    attached = network.attach_nbd(host, step.port, step.name, NBD_TIMEOUT)
    path = attached.device
    boot.refs[step.ref] = path
    record = resources.Nbd(
        device=path,
        server=f"{host}:{step.port}",
        export=step.name,
        address=attached.address,
        port=step.port,
        size=attached.export.size,
        timeout=NBD_TIMEOUT,
    )
    boot.acquired(record, lambda: network.detach_nbd(path))
    boot.log.info(f"attached NBD export {step.name!r} of {host}:{step.port} as {path}")
    # The kernel makes the device; udev's event says it has its size.
    boot.kernel.wait_for_device(path, 10, boot.log, what=f"NBD device {path}")


def mount_nfs(boot: Boot, step: MountNfs) -> None:
    host = _server(boot, step.export.host, "archiso_nfs_srv")
    try:
        address = socket.getaddrinfo(host, None, socket.AF_INET)[0][4][0]
    except OSError as e:
        raise HookError(
            f"cannot resolve the NFS server {host}: {e.strerror or e}",
            hint="give archiso_nfs_srv= an IP address, or check DNS",
        ) from None
    options = parse_mount_options(step.options, what="archiso_nfs_opt")
    given = [o for o in (options.data or "").split(",") if o]
    versions = [None] if any(o.split("=")[0] in {"vers", "nfsvers"} for o in given) else [
        "4.2", "4.1", "4.0", "3"]  # fmt: skip
    source = f"{host}:{step.export.path}"
    boot.kernel.mount_point(step.target)
    last: KernelError | None = None
    for version in versions:
        data = ",".join([*given, f"addr={address}", *([f"vers={version}"] if version else [])])
        if version == "3" and "nolock" not in given:
            data += ",nolock"  # no lockd/statd in an initramfs; read-only anyway
        try:
            boot.kernel.mount(source, step.target, "nfs", options.flags | syscalls.MS_RDONLY, data)
        except KernelError as e:
            last = e
            boot.log.info(f"NFS {version or ''} mount of {source} failed: {e.message}")
            continue
        acquired_mount(boot, resources.Mount(step.target, source, "nfs", True, None))
        boot.log.info(f"mounted NFS {source} read-only at {step.target} ({data})")
        return
    assert last is not None
    raise HookError(
        f"cannot mount the NFS export {source}: {last.message}",
        hint="check archiso_nfs_srv= (server and path) and that the server exports it",
    )


def copy_resolv_conf(boot: Boot) -> None:
    """The live root gets the DNS servers the lease gave (copy_resolvconf=n: not)."""
    path = resolve_in_root(boot.newroot, "/etc/resolv.conf")
    if os.path.islink(f"{boot.newroot}/etc/resolv.conf"):
        boot.log.info("the live root's /etc/resolv.conf is a link (systemd-resolved?); kept")
        return
    try:
        copied = _network(boot).write_resolv_conf(boot.lease, path)
    except OSError as e:
        boot.log.warning(f"could not copy the DNS servers into {path}: {e.strerror or e}")
        return
    if copied:
        boot.log.info(f"copied the DNS servers into {path} (copy_resolvconf=n to skip)")
