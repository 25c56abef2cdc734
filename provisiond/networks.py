"""A provisioning network: one L2 network that machines PXE-boot on, as configured.

A settings model (``[[networks]]`` in the TOML file). The dnsmasq adapter
(:mod:`provisiond.netboot.dnsmasq_conf`) renders it; the config imports it from here,
so settings never depend on an adapter.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence
from ipaddress import IPv4Address, IPv4Network, IPv6Network
from typing import Literal

from pydantic import BaseModel, Field, model_validator

_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,31}$")


class ProvisioningNetwork(BaseModel):
    """One L2 network that machines PXE-boot on; one dnsmasq serves it.

    TOML::

        [[networks]]
        name = "prov0"
        interface = "br-prov"
        subnet = "10.77.1.0/24"
        boot_address = "10.77.1.1"
        dhcp_mode = "full"            # full | proxy | off
        range_start = "10.77.1.100"
        range_end = "10.77.1.200"
        lease_time_s = 3600
        ipv6_ra = true
        ipv6_prefix = "fd77:1::/64"
    """

    model_config = {"extra": "forbid"}

    #: Short id, used for the state folder and logs.
    name: str = Field(min_length=1, max_length=32)
    #: The interface (usually a bridge) dnsmasq binds to.
    interface: str = Field(min_length=1, max_length=15, pattern=r"^[A-Za-z0-9_.:-]+$")
    #: The IPv4 network on that interface.
    subnet: IPv4Network
    #: The daemon's address on this network: boot HTTP and TFTP next-server.
    boot_address: IPv4Address
    #: The port of the boot HTTP routes at boot_address.
    http_port: int = Field(default=8080, ge=1, le=65535)
    dhcp_mode: Literal["full", "proxy", "off"] = "full"
    range_start: IPv4Address | None = None
    range_end: IPv4Address | None = None
    lease_time_s: int = Field(default=3600, ge=120, le=86400 * 30)
    #: proxy mode: seconds to hold back our reply so the site server's offer wins.
    proxy_reply_delay_s: int = Field(default=1, ge=0, le=5)
    ipv6_ra: bool = False
    ipv6_prefix: IPv6Network | None = None
    #: Run dnsmasq inside this network namespace (``ip netns exec``).
    netns: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    #: dnsmasq's ``user=``; None keeps dnsmasq's default (it drops to ``nobody``),
    #: so the state folder must then be readable by that user.
    dnsmasq_user: str | None = Field(default=None, pattern=r"^[a-z_][a-z0-9_-]{0,31}$")

    @model_validator(mode="after")
    def _consistent(self) -> ProvisioningNetwork:
        if not _NAME.match(self.name):
            raise ValueError("name must be lower-case letters, digits and '-' (max 32)")
        if self.boot_address not in self.subnet:
            raise ValueError(f"boot_address {self.boot_address} is outside subnet {self.subnet}")
        if self.dhcp_mode == "full":
            if self.range_start is None or self.range_end is None:
                raise ValueError("dhcp_mode 'full' needs range_start and range_end")
            for ip in (self.range_start, self.range_end):
                if ip not in self.subnet:
                    raise ValueError(f"range address {ip} is outside subnet {self.subnet}")
            if int(self.range_start) > int(self.range_end):
                raise ValueError("range_start is after range_end")
        if self.ipv6_ra and self.ipv6_prefix is None:
            raise ValueError("ipv6_ra needs ipv6_prefix (a /64 also set on the interface)")
        if self.ipv6_prefix is not None and self.ipv6_prefix.prefixlen != 64:
            raise ValueError("ipv6_prefix must be a /64 (router advertisements use /64)")
        return self

    @property
    def netmask(self) -> str:
        return str(self.subnet.netmask)

    @property
    def subnet_address(self) -> str:
        return str(self.subnet.network_address)

    @property
    def boot_url(self) -> str:
        return f"http://{self.boot_address}:{self.http_port}/boot/ipxe"


def netns_of(networks: Sequence[ProvisioningNetwork], address: str) -> str | None:
    """The namespace of the provisioning network that holds ``address``, if any."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return None
    for net in networks:
        if isinstance(ip, ipaddress.IPv4Address) and ip in net.subnet:
            return net.netns
    return None
