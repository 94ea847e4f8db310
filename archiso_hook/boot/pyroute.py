"""The parts of pyroute2 the network boot uses: rtnetlink (links, addresses, routes)
and the DHCP client, imported without running pyroute2's package __init__, which
imports every part of it (NDB and sqlite3, nftables, wireless, ...) in twice the time.
Imported only with boot/net.py, on a network boot."""

from __future__ import annotations

import importlib.util
import sys

from archiso_hook.errors import HookError


def _package_without_init() -> None:
    """pyroute2's submodules made importable with its __init__ not run."""
    if "pyroute2" in sys.modules:
        return
    spec = importlib.util.find_spec("pyroute2")
    if spec is None:
        raise HookError("pyroute2 is missing from this build of archiso-hook")
    sys.modules["pyroute2"] = importlib.util.module_from_spec(spec)  # __path__, not run


_package_without_init()

# After the package stands in for its __init__ (above): imports at the top of the module
# otherwise, so that PyInstaller's analysis sees them.
from pyroute2.dhcp import fsm  # noqa: E402
from pyroute2.dhcp.client import AsyncDHCPClient, ClientConfig  # noqa: E402
from pyroute2.dhcp.leases import Lease  # noqa: E402
from pyroute2.iproute.linux import IPRoute  # noqa: E402
from pyroute2.netlink.rtnl import ifinfmsg  # noqa: E402

__all__ = ["AsyncDHCPClient", "ClientConfig", "IPRoute", "Lease", "fsm", "ifinfmsg"]
