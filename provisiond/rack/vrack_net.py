"""The virtual rack's network: a namespace with a bridge and one tap per guest.

:func:`build_network` runs ``ip`` (iproute2) for :mod:`provisiond.rack.vrack`:
namespace ``rack.netns`` with ``lo`` up, bridge :data:`BRIDGE` with the boot address
and the IPv6 address (DAD off first, so both are usable at once), and a tap per guest
enslaved to the bridge. Nothing here listens or sends; the namespace is removed whole
by :func:`delete_netns`, which takes the bridge and taps with it. Each ``ip`` call is
bounded by a timeout and fails with a hint naming what the rack needs.
"""

from __future__ import annotations

import ipaddress
import subprocess
from pathlib import Path

from provisiond.errors import ProvisiondError
from provisiond.rack.vrack_files import RackState

BRIDGE = "br0"
_CMD_S = 15.0


def _run(*cmd: str) -> str:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=_CMD_S, check=False)
    except subprocess.TimeoutExpired:
        raise ProvisiondError(
            f"{' '.join(cmd)} timed out", hint="is the host overloaded?"
        ) from None
    if proc.returncode != 0:
        raise ProvisiondError(
            f"{' '.join(cmd)} failed: {proc.stderr.strip() or proc.returncode}",
            hint="the rack needs root, iproute2 and /dev/net/tun",
            code="rack_failed",
        )
    return proc.stdout


def netns_exists(netns: str) -> bool:
    return Path("/run/netns", netns).exists()


def netns_pids(netns: str) -> list[str]:
    """The PIDs of the processes running in the namespace."""
    return _run("ip", "netns", "pids", netns).split()


def delete_netns(netns: str) -> None:
    _run("ip", "netns", "del", netns)


def build_network(rack: RackState) -> None:
    ns = rack.netns
    _run("ip", "netns", "add", ns)
    _run("ip", "-n", ns, "link", "set", "lo", "up")
    _run("ip", "-n", ns, "link", "add", BRIDGE, "type", "bridge", "forward_delay", "0")
    # DAD off before any address (the link-local one included, which RAs come from).
    _run("ip", "netns", "exec", ns, "sysctl", "-qw", f"net.ipv6.conf.{BRIDGE}.accept_dad=0")
    prefix = ipaddress.IPv4Network(rack.subnet).prefixlen
    _run("ip", "-n", ns, "addr", "add", f"{rack.boot_address}/{prefix}", "dev", BRIDGE)
    _run("ip", "-n", ns, "addr", "add", f"{rack.ipv6_address}/64", "dev", BRIDGE, "nodad")
    _run("ip", "-n", ns, "link", "set", BRIDGE, "up")
    for guest in rack.guests:
        _run("ip", "-n", ns, "tuntap", "add", guest.tap, "mode", "tap")
        _run("ip", "-n", ns, "link", "set", guest.tap, "master", BRIDGE, "up")
