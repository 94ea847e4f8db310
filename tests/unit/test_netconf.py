"""ip=, BOOTIF= and the server parameters, as archiso users write them."""

from __future__ import annotations

from ipaddress import IPv4Address
from pathlib import Path

import attrs
import pytest

from archiso_hook.cmdline import Arch, CopyMode
from archiso_hook.errors import InputError
from archiso_hook.netconf import (
    Autoconf,
    IpConfig,
    NbdServer,
    NfsExport,
    dhcp_names,
    parse_bootif,
    parse_http_server,
    parse_ip,
    parse_nbd_server,
    parse_nfs_server,
    with_server,
)
from archiso_hook.options import parse_options


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
    assert parse_bootif("52-54-00-ab-cd-02") == "52:54:00:ab:cd:02"  # dracut's forms
    assert parse_bootif("52:54:00:AB:CD:02") == "52:54:00:ab:cd:02"
    for bad in ("01-aa", "52-54:00-ab-cd-02", "02-52-54-00-ab-cd-02"):
        with pytest.raises(InputError, match=f"BOOTIF={bad} is not valid: expected a MAC"):
            parse_bootif(bad)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        # the kernel's, dracut's and systemd's words
        ("single-dhcp", IpConfig(Autoconf.DHCP)),
        ("none", IpConfig(Autoconf.OFF)),
        ("dhcp6", IpConfig(Autoconf.OTHER, unsupported=("DHCPv6 (dhcp6)",))),
        ("auto6", IpConfig(Autoconf.OTHER, unsupported=("IPv6 autoconfiguration (auto6)",))),
        ("either6", IpConfig(Autoconf.OTHER,
                             unsupported=("IPv6 autoconfiguration or DHCPv6 (either6)",))),
        ("link6", IpConfig(Autoconf.OTHER, unsupported=("IPv6 link-local addressing (link6)",))),
        ("link-local", IpConfig(Autoconf.OTHER,
                                unsupported=("link-local addressing (link-local)",))),
        ("ibft", IpConfig(Autoconf.OTHER, unsupported=("the iBFT's settings (ibft)",))),
        # <interface>:<method>[:[<mtu>][:<macaddr>]]
        ("eth0:dhcp", IpConfig(Autoconf.DHCP, device="eth0")),
        ("enp1s0:on:", IpConfig(Autoconf.DHCP, device="enp1s0")),
        ("eth0:off", IpConfig(Autoconf.OFF, device="eth0")),
        ("eth0:dhcp6", IpConfig(Autoconf.OTHER, device="eth0", unsupported=("DHCPv6 (dhcp6)",))),
        ("eth0:dhcp:9000", IpConfig(Autoconf.DHCP, device="eth0", unsupported=("the MTU 9000",))),
        ("eth0:any::52:54:00:12:34:56", IpConfig(
            Autoconf.DHCP, device="eth0",
            unsupported=("the MAC address 52:54:00:12:34:56",))),
        ("eth0:dhcp:1500:52-54-00-12-34-56", IpConfig(
            Autoconf.DHCP, device="eth0",
            unsupported=("the MTU 1500", "the MAC address 52:54:00:12:34:56"))),
        # the full form: a prefix length for the netmask, dracut's MTU, IPv6 in brackets
        ("10.0.2.15::10.0.2.2:24:live:eth0:none:1500", IpConfig(
            Autoconf.STATIC, IPv4Address("10.0.2.15"), None, IPv4Address("10.0.2.2"), 24,
            "live", "eth0", (), ("the MTU 1500",))),
        ("[2001:db8::2]::[2001:db8::1]:64::eth0:none", IpConfig(
            Autoconf.OTHER, device="eth0",
            unsupported=("the IPv6 client address [2001:db8::2]",
                         "the IPv6 gateway [2001:db8::1]"))),
        ("10.0.2.15", IpConfig(Autoconf.STATIC, IPv4Address("10.0.2.15"), prefixlen=8)),
    ],
)  # fmt: skip
def test_ip_forms_of_the_kernel_dracut_and_systemd(value: str, expected: IpConfig) -> None:
    config = parse_ip(value)
    assert config == expected and config.text == value
    assert config.usable == (not expected.unsupported)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("eth0:", "ip=eth0:: autoconf '' is not valid (field 2)"),
        ("eth0:dhcp:jumbo", "'jumbo' after the method is not an MTU and a MAC address"),
        ("eth0:dhcp:12", "MTU '12' is not 68..65535 (field 3)"),
        ("[2001:db8::zz]::::::none", "client address '[2001:db8::zz]' is not an IPv6 address"),
        ("10.0.2.15:::33::::", "netmask '33' is not a prefix length, 0..32 (field 4)"),
        ("eth0/x:dhcp", "device 'eth0/x' is not a network interface name (field 1)"),
    ],
)
def test_ip_forms_that_are_not(value: str, message: str) -> None:
    with pytest.raises(InputError) as excinfo:
        parse_ip(value)
    assert message in str(excinfo.value) and str(excinfo.value).startswith(f"ip={value}")


def test_a_boot_from_a_disc_never_stops_for_ip_or_bootif() -> None:
    options = parse_options(
        "archisolabel=L ip=eth0:dhcp ip=dhcp6 BOOTIF=01-52-54-00-12-34-56", machine_arch=Arch.X86_64
    )
    assert options.warnings == ()  # forms for the live system: nothing to say
    assert [c.text for c in options.ip] == ["eth0:dhcp", "dhcp6"]
    assert options.bootif == "52:54:00:12:34:56" and options.network is None
    bad = parse_options("archisolabel=L ip=eth0:bogus BOOTIF=01-aa", machine_arch=Arch.X86_64)
    assert bad.ip == () and bad.bootif is None
    assert bad.warnings == (
        "ip=eth0:bogus: autoconf 'bogus' is not valid (field 2): expected off, none, on, any, "
        "dhcp, bootp, rarp, both, dhcp6, auto6, either6, link6, link-local or ibft; ignored, "
        "as this boot does not use the network",
        "BOOTIF=01-aa is not valid: expected a MAC address, as in BOOTIF=01-52-54-00-12-34-56 "
        "or BOOTIF=52:54:00:12:34:56; ignored, as this boot does not use the network",
    )


@pytest.mark.parametrize("bad", ["ip=eth0:bogus", "BOOTIF=01-aa", "BOOTIF=01-aa ip=dhcp"])
def test_a_network_boot_stops_for_a_bad_ip_or_bootif(bad: str) -> None:
    with pytest.raises(InputError, match=f"^{bad.split(maxsplit=1)[0]}[: ]"):
        parse_options(f"{bad} archiso_http_srv=http://10.0.2.2/", machine_arch=Arch.X86_64)
    # the last BOOTIF= decides: a good one after a bad one is taken
    options = parse_options("BOOTIF=01-aa BOOTIF=52:54:00:12:34:56 archiso_nbd_srv=h")
    assert options.bootif == "52:54:00:12:34:56"


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


@pytest.mark.parametrize(
    ("value", "what", "names", "why"),
    [
        ("lab.example", "domain name", "lab.example", None),
        ("a.example  b.example.", "domain name", "a.example b.example.", None),
        ("live_1", "host name", "live_1", None),
        (None, "domain name", None, None),
        ("", "domain name", None, None),
        ("lab\nnameserver 203.0.113.9", "domain name", None, "is not a DNS name"),
        ("lab\x00x", "domain name", None, "is not a DNS name"),
        ("-lab.example", "domain name", None, "is not a DNS name"),
        ("a" * 64 + ".example", "domain name", None, "is not a DNS name"),
        (".".join(["a" * 60] * 5), "domain name", None, "is not a DNS name"),  # 304 bytes
        (" ".join(f"d{i}.example" for i in range(7)), "domain name", None, "is not 6 name(s)"),
        ("two names", "host name", None, "is not 1 name(s)"),
        (b"lab.example", "domain name", None, "is not text (bytes)"),
    ],
)
def test_dhcp_names_are_checked_before_they_reach_resolv_conf(
    value: object, what: str, names: str | None, why: str | None
) -> None:
    got, problem = dhcp_names(value, what)
    assert got == names
    if why is None:
        assert problem is None
    else:
        assert problem is not None and problem.startswith(f"the server's {what}")
        assert why in problem
        assert "\n" not in problem


def test_resolv_conf_never_carries_a_line_the_server_smuggled(tmp_path: Path) -> None:
    from archiso_hook.boot.net import Lease, write_resolv_conf  # noqa: PLC0415  (pyroute2 lazily)

    path = tmp_path / "etc" / "resolv.conf"
    dns = (IPv4Address("10.0.2.3"),)
    hostile = Lease("eth0", IPv4Address("10.0.2.15"), 24, None, dns, None, "dhcp", None,
                    "lab\nnameserver 203.0.113.9")  # fmt: skip
    assert write_resolv_conf(hostile, str(path))
    assert path.read_text().splitlines()[1:] == ["nameserver 10.0.2.3"]
    fine = attrs.evolve(hostile, domain="lab.example")
    assert write_resolv_conf(fine, str(path))
    assert path.read_text().splitlines()[1:] == ["search lab.example", "nameserver 10.0.2.3"]
