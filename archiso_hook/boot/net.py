"""Bring the network up for a network boot, and down again: pyroute2, in-process.

No ipconfig, no udhcpc, no shell: rtnetlink for links, addresses and routes, and
pyroute2's DHCP client (raw packet socket) for the lease. pyroute2 is imported
only here, and only on a network boot: it costs start-up time a disc boot does
not pay.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
import time
from typing import Any

import attrs

from archiso_hook.boot import medium, pyroute
from archiso_hook.errors import HookError
from archiso_hook.log import Log
from archiso_hook.netconf import Autoconf, IpConfig, dhcp_names

# archiso raised ipconfig's timeout to 60 s: a switch port running STP forwards
# nothing for 30 s or more after the link comes up.
DHCP_TIMEOUT = 60.0
CARRIER_TIMEOUT = 10.0
RESOLV_CONF = "/etc/resolv.conf"
ARPHRD_ETHER = 1


class NetworkError(HookError):
    pass


@attrs.frozen
class Lease:
    """What the interface got, from DHCP or ip=."""

    interface: str
    address: ipaddress.IPv4Address
    prefixlen: int
    gateway: ipaddress.IPv4Address | None
    dns: tuple[ipaddress.IPv4Address, ...]
    server: ipaddress.IPv4Address | None  # the boot server, for ${pxeserver}
    how: str  # dhcp or static
    hostname: str | None = None
    domain: str | None = None

    def describe(self) -> str:
        parts = [f"{self.interface} has {self.address}/{self.prefixlen} ({self.how})"]
        if self.gateway:
            parts.append(f"gateway {self.gateway}")
        if self.dns:
            parts.append("DNS " + " ".join(map(str, self.dns)))
        if self.server:
            parts.append(f"boot server {self.server}")
        return ", ".join(parts)


def _link_kinds_missing() -> bool:
    """pyroute2 lists its link-kind plugins (bond, vlan, ...) with pkgutil: true when it
    found none, as in a frozen build whose archive pkgutil cannot list."""
    return not pyroute.ifinfmsg.data_plugins


def _iproute() -> Any:
    return pyroute.IPRoute()


def _links(ipr: Any) -> list[dict[str, Any]]:
    out = []
    for link in ipr.get_links():
        if link["ifi_type"] != ARPHRD_ETHER:
            continue
        out.append(
            {
                "index": link["index"],
                "name": link.get("ifname"),
                "mac": (link.get("address") or "").lower(),
                "carrier": link.get("carrier") == 1,
            }
        )
    return sorted(out, key=lambda link: link["index"])


def describe_interfaces() -> str:
    with _iproute() as ipr:
        links = _links(ipr)
    return ", ".join(f"{link['name']} ({link['mac']})" for link in links) or "none"


def choose_interface(config: IpConfig, bootif: str | None, timeout: float, log: Log) -> str:
    """The interface to configure: ip='s device, else the one with BOOTIF's MAC, else the
    first Ethernet interface; waiting for its driver to make it appear (udev events)."""

    def find() -> str | None:
        with _iproute() as ipr:
            links = _links(ipr)
        for link in links:
            if config.device and link["name"] == config.device:
                return str(link["name"])
            if not config.device and bootif and link["mac"] == bootif:
                return str(link["name"])
        if not config.device and not bootif and links:
            return str(links[0]["name"])
        return None

    what = (
        f"network interface {config.device}"
        if config.device
        else f"the network interface with MAC {bootif} (BOOTIF=)"
        if bootif
        else "a network interface"
    )
    found, _ = medium.wait_until(find, timeout, what, log, subsystem="net")
    if found is None:
        raise NetworkError(
            f"{what} did not appear within {timeout:g} s; interfaces seen: {describe_interfaces()}",
            hint="is its driver in the initramfs? (the archiso_pxe_common hook adds them)",
        )
    return found


def link_up(name: str, log: Log, timeout: float = CARRIER_TIMEOUT) -> None:
    """Set the link up and wait a little for a carrier (DHCP retries cover the rest)."""
    with _iproute() as ipr:
        index = ipr.link_lookup(ifname=name)[0]
        ipr.link("set", index=index, state="up")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if ipr.get_links(index)[0].get("carrier") == 1:
                return
            time.sleep(0.05)
    log.warning(f"{name} has no carrier after {timeout:g} s (cable, switch?); trying anyway")


def _set_address(
    name: str,
    address: ipaddress.IPv4Address,
    prefixlen: int,
    gateway: ipaddress.IPv4Address | None,
) -> None:
    with _iproute() as ipr:
        index = ipr.link_lookup(ifname=name)[0]
        ipr.addr("replace", index=index, address=str(address), prefixlen=prefixlen)
        if gateway:
            ipr.route("replace", dst="0.0.0.0/0", gateway=str(gateway), oif=index)


def configure_static(name: str, config: IpConfig) -> Lease:
    assert config.client is not None and config.prefixlen is not None
    _set_address(name, config.client, config.prefixlen, config.gateway)
    return Lease(
        name,
        config.client,
        config.prefixlen,
        config.gateway,
        config.dns,
        config.server,
        "static",
        config.hostname,
    )


def dhcp(name: str, config: IpConfig, log: Log, timeout: float = DHCP_TIMEOUT) -> Lease:
    """A lease through pyroute2's DHCP client, retransmitting with back-off until
    `timeout`; the address, route and DNS are set from it here (no hooks, no files)."""
    lease = asyncio.run(_dhcp(name, log, timeout))
    if lease is None:
        raise NetworkError(
            f"no DHCP answer on {name} within {timeout:g} s",
            hint="is a DHCP server on this network? or give a static ip=",
        )
    ack = lease.ack
    options = ack["options"]
    address = ipaddress.IPv4Address(ack["yiaddr"])
    prefixlen = lease.prefixlen if "subnet_mask" in options else 24
    routers = options.get("router") or []
    gateway = ipaddress.IPv4Address(routers[0]) if routers else None
    dns = tuple(ipaddress.IPv4Address(a) for a in options.get("name_server") or [])
    # The boot server: next-server (siaddr) as PXE sets it, else the DHCP server.
    siaddr = ack.get("siaddr") or "0.0.0.0"
    server_id = options.get("server_id")
    server = siaddr if siaddr != "0.0.0.0" else server_id
    _set_address(name, address, prefixlen, gateway)
    checked = {}
    for key, what in (("host_name", "host name"), ("domain_name", "domain name")):
        checked[key], why = dhcp_names(options.get(key), what)
        if why:
            log.warning(f"{why}: ignored")
    return Lease(
        name,
        address,
        prefixlen,
        config.gateway or gateway,
        config.dns or dns,
        config.server or (ipaddress.IPv4Address(server) if server else None),
        "dhcp",
        checked["host_name"],
        checked["domain_name"],
    )


async def _dhcp(name: str, log: Log, timeout: float) -> Any:
    class InMemoryLease(pyroute.Lease):  # type: ignore[misc]  # no lease files at boot
        def dump(self) -> None:
            pass

        @classmethod
        def load(cls, interface: str) -> None:
            return None

    client_config = pyroute.ClientConfig(
        interface=name,
        lease_type=InMemoryLease,
        release=False,  # the live system keeps the address (archiso does the same)
        handle_signals=False,
        vendor_id="archiso-hook",
        host_name=None,
    )
    start = time.monotonic()
    async with pyroute.AsyncDHCPClient(client_config) as client:
        await client.bootstrap()
        while (left := timeout - (time.monotonic() - start)) > 0:
            try:
                await client.wait_for_state(pyroute.fsm.State.BOUND, timeout=min(10.0, left))
                log.info(f"DHCP lease on {name} after {time.monotonic() - start:.2f} s")
                return client.lease
            except TimeoutError:
                log.info(f"no DHCP answer on {name} yet, after {time.monotonic() - start:.0f} s")
    return None


def write_resolv_conf(lease: Lease, path: str = RESOLV_CONF) -> bool:
    if not lease.dns:
        return False
    domain = dhcp_names(lease.domain, "domain name")[0]  # what a Lease holds is checked
    lines = [f"search {domain}"] if domain else []
    lines += [f"nameserver {a}" for a in lease.dns]
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="ascii") as f:
        f.write("# written by archiso-hook from the boot network\n" + "\n".join(lines) + "\n")
    os.replace(tmp, path)
    return True


def take_down(name: str) -> None:
    """Addresses and routes off, link down: the live system starts with a clean
    interface, as archiso does after copytoram (FS#36749)."""
    with _iproute() as ipr:
        index = ipr.link_lookup(ifname=name)
        if not index:
            return
        with contextlib.suppress(Exception):
            ipr.flush_addr(index=index[0])
        ipr.link("set", index=index[0], state="down")


def bring_up(config: IpConfig, bootif: str | None, timeout: float, log: Log) -> Lease:
    """The whole bring-up: interface, link, address (static or DHCP)."""
    name = choose_interface(config, bootif, timeout, log)
    if _link_kinds_missing():
        log.warning(
            "pyroute2 found none of its link-kind plugins: bonds, VLANs and the like "
            "are described without their settings"
        )
    link_up(name, log)
    if config.autoconf is Autoconf.STATIC:
        lease = configure_static(name, config)
    else:
        log.info(f"asking for a DHCP lease on {name}")
        lease = dhcp(name, config, log)
    log.info(lease.describe())
    return lease
