"""ip=, BOOTIF= and the server parameters, as archiso users write them."""

from __future__ import annotations

from ipaddress import IPv4Address

import pytest

from archiso_hook.cmdline import Arch, CopyMode, parse_options
from archiso_hook.errors import InputError
from archiso_hook.netconf import (
    Autoconf,
    IpConfig,
    NbdServer,
    NfsExport,
    parse_bootif,
    parse_http_server,
    parse_ip,
    parse_nbd_server,
    parse_nfs_server,
    with_server,
)


def test_ip_words() -> None:
    assert parse_ip("dhcp") == IpConfig(Autoconf.DHCP)
    assert parse_ip("any") == IpConfig(Autoconf.DHCP)
    assert parse_ip("off") == IpConfig(Autoconf.OFF)


def test_ip_static_fields() -> None:
    config = parse_ip("10.0.2.15:10.0.2.2:10.0.2.2:255.255.255.0:live:eth1:off:10.0.2.3")
    assert config == IpConfig(
        Autoconf.STATIC,
        client=IPv4Address("10.0.2.15"),
        server=IPv4Address("10.0.2.2"),
        gateway=IPv4Address("10.0.2.2"),
        prefixlen=24,
        hostname="live",
        device="eth1",
        dns=(IPv4Address("10.0.2.3"),),
    )


def test_ip_device_only_means_dhcp_on_it() -> None:
    assert parse_ip(":::::eth0:dhcp") == IpConfig(Autoconf.DHCP, device="eth0")
    assert parse_ip(":::::eth0") == IpConfig(Autoconf.DHCP, device="eth0")


def test_ip_netmask_defaults_to_the_class_of_the_address() -> None:
    assert parse_ip("10.1.2.3::::::off").prefixlen == 8
    assert parse_ip("192.168.7.9::::::none").prefixlen == 24


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("10.0.2.300", "client address '10.0.2.300' is not an IPv4 address (field 1)"),
        ("10.0.2.15::::::static", "autoconf 'static' is not valid (field 7)"),
        ("10.0.2.15:::255.0.255.0", "netmask '255.0.255.0' is not a contiguous mask (field 4)"),
        (":::::eth0/x", "device 'eth0/x' is not a network interface name (field 6)"),
        ("1:2:3:4:5:6:7:8:9:10:11", "has 11 fields"),
    ],
)
def test_ip_errors_name_the_field(value: str, message: str) -> None:
    with pytest.raises(InputError, match="ip="):
        parse_ip(value)
    with pytest.raises(InputError) as excinfo:
        parse_ip(value)
    assert message in str(excinfo.value)


def test_bootif() -> None:
    assert parse_bootif("01-52-54-00-AB-cd-02") == "52:54:00:ab:cd:02"
    with pytest.raises(InputError, match="BOOTIF=01-aa is not valid"):
        parse_bootif("01-aa")


def test_servers() -> None:
    assert parse_http_server("http://10.0.2.2:8080/arch") == "http://10.0.2.2:8080/arch/"
    assert parse_http_server("http://${pxeserver}/") == "http://${pxeserver}/"
    assert parse_nbd_server("10.0.2.2") == NbdServer("10.0.2.2", 10809)
    assert parse_nbd_server("nbd.lan:2000") == NbdServer("nbd.lan", 2000)
    assert parse_nfs_server("${pxeserver}:/srv/live") == NfsExport("${pxeserver}", "/srv/live")


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("archiso_http_srv", "ftp://host/"),
        ("archiso_http_srv", "http://host/../etc/"),
        ("archiso_http_srv", "http://user@host/"),
        ("archiso_nbd_srv", "host:99999"),
        ("archiso_nfs_srv", "host:/srv,addr=1.2.3.4"),  # would smuggle a mount option
        ("archiso_nfs_srv", "host/srv"),
        ("archiso_nfs_srv", "$(reboot):/srv"),
    ],
)
def test_bad_servers_are_refused_naming_the_parameter(name: str, value: str) -> None:
    with pytest.raises(InputError, match=f"{name}="):
        parse_options(f"{name}={value}", machine_arch=Arch.X86_64)


def test_pxeserver_is_replaced_as_text() -> None:
    assert with_server("${pxeserver}:/srv", IPv4Address("10.0.2.2"), "x") == "10.0.2.2:/srv"
    with pytest.raises(InputError, match="archiso_nfs_srv uses \\$\\{pxeserver\\}"):
        with_server("${pxeserver}:/srv", None, "archiso_nfs_srv")


def test_network_boot_defaults() -> None:
    nfs = parse_options("archiso_nfs_srv=10.0.2.2:/srv", machine_arch=Arch.X86_64)
    assert nfs.network == IpConfig(Autoconf.DHCP)  # no ip=: DHCP
    assert nfs.copy_mode is CopyMode.Y  # archiso's rule for NBD and NFS
    kept = parse_options("archiso_nbd_srv=10.0.2.2 copytoram=n", machine_arch=Arch.X86_64)
    assert kept.copy_mode is CopyMode.N
    http = parse_options("archiso_http_srv=http://10.0.2.2/ copytoram=y", machine_arch=Arch.X86_64)
    assert http.copy_mode is CopyMode.N  # downloaded into RAM already
    disc = parse_options("archisolabel=X ip=dhcp", machine_arch=Arch.X86_64)
    assert disc.network is None and disc.copy_mode is CopyMode.AUTO
