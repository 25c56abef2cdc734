"""Rendering dnsmasq.conf per DHCP mode, the network model's checks, host files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from provisiond.errors import ConfigError
from provisiond.netboot.dnsmasq_conf import (
    DnsmasqPaths,
    HostChange,
    HostEntry,
    HostsDir,
    ProvisioningNetwork,
    host_line,
    prepare_tftp_root,
    render_config,
)
from provisiond.templates import Templates

BASE: dict[str, Any] = {
    "name": "prov0",
    "interface": "br0",
    "subnet": "10.77.1.0/24",
    "boot_address": "10.77.1.1",
}


def lines(mode: str, **extra: Any) -> list[str]:
    net = ProvisioningNetwork(**BASE, dhcp_mode=mode, **extra)
    text = render_config(Templates(), net, DnsmasqPaths(Path("/srv/pvd")))
    return [ln for ln in text.splitlines() if ln and not ln.startswith("#")]


def test_full_mode() -> None:
    conf = lines("full", range_start="10.77.1.100", range_end="10.77.1.200", lease_time_s=600)
    for expected in (
        "port=0",
        "bind-interfaces",
        "interface=br0",
        "log-dhcp",
        "log-facility=-",
        "keep-in-foreground",
        "no-ping",
        "dhcp-range=10.77.1.100,10.77.1.200,255.255.255.0,600s",
        "dhcp-hostsdir=/srv/pvd/hosts",
        "enable-tftp",
        "tftp-root=/srv/pvd/tftp",
        "tftp-secure",
        "dhcp-match=set:ipxe,175",
        "dhcp-userclass=set:ipxe,iPXE",
        "dhcp-option=encap:175,176,1",
        "dhcp-boot=tag:ipxe,http://10.77.1.1:8080/boot/ipxe",
        "dhcp-boot=tag:!ipxe,tag:!efi64,undionly.kpxe,,10.77.1.1",
        "dhcp-boot=tag:!ipxe,tag:efi64,snponly.efi,,10.77.1.1",
    ):
        assert expected in conf
    assert not any(ln.startswith(("pxe-service", "enable-ra", "user=")) for ln in conf)


def test_proxy_mode() -> None:
    conf = lines("proxy", http_port=9000)
    assert "dhcp-range=10.77.1.0,proxy" in conf
    assert "dhcp-reply-delay=1" in conf
    assert "dhcp-boot=tag:ipxe,http://10.77.1.1:9000/boot/ipxe,,10.77.1.1" in conf
    assert any(
        ln.startswith("pxe-service=tag:!ipxe,x86PC,") and "undionly.kpxe" in ln for ln in conf
    )
    assert any(
        ln.startswith("pxe-service=tag:!ipxe,x86-64_EFI,") and "snponly.efi" in ln for ln in conf
    )
    assert "no-ping" not in conf
    assert "dhcp-option=encap:175,176,1" not in conf


def test_off_mode_is_tftp_only() -> None:
    conf = lines("off")
    assert not any(ln.startswith("dhcp-") for ln in conf)
    assert "enable-tftp" in conf


def test_ipv6_ra() -> None:
    conf = lines("off", ipv6_ra=True, ipv6_prefix="fd77:1::/64", dnsmasq_user="root")
    assert "enable-ra" in conf
    assert "dhcp-range=fd77:1::,ra-only,64" in conf
    assert "user=root" in conf


@pytest.mark.parametrize(
    "bad",
    [
        {"dhcp_mode": "full"},  # no range
        {"dhcp_mode": "full", "range_start": "10.77.2.1", "range_end": "10.77.2.9"},
        {"dhcp_mode": "full", "range_start": "10.77.1.9", "range_end": "10.77.1.1"},
        {"boot_address": "10.9.9.9"},
        {"ipv6_ra": True},
        {"ipv6_prefix": "fd77::/48"},
        {"dhcp_mode": "dhcp"},
        {"interface": "br0\nuser=root"},
        {"name": "Bad Name"},
        {"netns": "a b"},
        {"unknown": 1},
    ],
)
def test_invalid_networks(bad: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        ProvisioningNetwork(**{**BASE, **bad})


def test_host_files(tmp_path: Path) -> None:
    hosts = HostsDir(tmp_path)
    assert hosts.write_host("web-01", ["52-54-00-AA-00-01"], "10.77.1.20") is HostChange.ADDED
    assert (
        tmp_path / "web-01"
    ).read_text() == "52:54:00:aa:00:01,10.77.1.20,set:provisiond,web-01\n"
    assert hosts.write_host("web-01", ["52:54:00:aa:00:01"], "10.77.1.20") is HostChange.UNCHANGED
    assert hosts.write_host("web-01", ["52:54:00:aa:00:01"], None) is HostChange.CHANGED
    assert hosts.write_host("../evil", ["52:54:00:aa:00:02"]) is HostChange.ADDED
    assert sorted(p.name for p in tmp_path.iterdir()) == ["_evil", "web-01"]
    assert hosts.remove_host("web-01") is HostChange.REMOVED
    assert hosts.remove_host("web-01") is HostChange.UNCHANGED
    counts = hosts.sync([HostEntry("a", ("52:54:00:00:00:0a",), "10.77.1.5")])
    assert counts[HostChange.ADDED] == 1 and counts[HostChange.REMOVED] == 1
    assert hosts.names() == {"a"}
    with pytest.raises(ValueError):
        host_line("x", ["nope"], None)
    with pytest.raises(ValueError):
        host_line("x", [], None)
    with pytest.raises(ValueError):
        host_line("x", ["52:54:00:00:00:0a"], "10.77.1.5,set:evil")
    assert host_line("Web_01.example", ["52:54:00:00:00:0a"], None).endswith(",web-01-example\n")


def test_tftp_root_holds_only_ipxe(tmp_path: Path) -> None:
    src = tmp_path / "ipxe"
    src.mkdir()
    for name in ("undionly.kpxe", "ipxe.efi", "snponly.efi", "ipxe.iso"):
        (src / name).write_bytes(name.encode())
    root = tmp_path / "tftp"
    root.mkdir()
    (root / "stray.cfg").write_text("x")
    files = prepare_tftp_root(root, src)
    assert sorted(p.name for p in root.iterdir()) == ["ipxe.efi", "snponly.efi", "undionly.kpxe"]
    assert all(p.stat().st_mode & 0o004 for p in files)
    with pytest.raises(ConfigError, match="iPXE binaries missing") as err:
        prepare_tftp_root(root, tmp_path / "missing")
    assert err.value.hint == "apt-get install ipxe"
