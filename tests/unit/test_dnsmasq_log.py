"""The dnsmasq log parser on lines captured from real runs (tests/integration/test_dnsmasq.py)."""

from __future__ import annotations

from provisiond.netboot.dnsmasq_log import (
    BootLogParser,
    ClientClass,
    DhcpEvent,
    TftpEvent,
    parse_line,
)

FULL = """\
dnsmasq[25536]: started, version 2.90 DNS disabled
dnsmasq-dhcp[25536]: read /tmp/pvd-netns-f8qepix4/dm/hosts/m1
dnsmasq-dhcp[25536]: 231557997 available DHCP range: 10.77.1.100 -- 10.77.1.150
dnsmasq-dhcp[25536]: 231557997 vendor class: PXEClient:Arch:00000
dnsmasq-dhcp[25536]: 231557997 DHCPDISCOVER(br0) 52:54:00:aa:00:01
dnsmasq-dhcp[25536]: 231557997 tags: provisiond, known, bios, br0
dnsmasq-dhcp[25536]: 231557997 DHCPOFFER(br0) 10.77.1.20 52:54:00:aa:00:01
dnsmasq-dhcp[25536]: 231557997 requested options: 67:bootfile-name
dnsmasq-dhcp[25536]: 231557997 next server: 10.77.1.1
dnsmasq-dhcp[25536]: 231557997 sent size:  1 option: 53 message-type  2
dnsmasq-dhcp[25536]: 231557997 sent size: 14 option: 67 bootfile-name  undionly.kpxe
dnsmasq-dhcp[25536]: 231557997 available DHCP range: 10.77.1.100 -- 10.77.1.150
dnsmasq-dhcp[25536]: 231557997 vendor class: PXEClient:Arch:00000
dnsmasq-dhcp[25536]: 231557997 DHCPREQUEST(br0) 10.77.1.20 52:54:00:aa:00:01
dnsmasq-dhcp[25536]: 231557997 DHCPACK(br0) 10.77.1.20 52:54:00:aa:00:01 m1
dnsmasq-dhcp[25536]: 231557997 sent size: 14 option: 67 bootfile-name  undionly.kpxe
dnsmasq-dhcp[25536]: 1750011212 vendor class: udhcp 1.35.0
dnsmasq-dhcp[25536]: 1750011212 user class: iPXE
dnsmasq-dhcp[25536]: 1750011212 DHCPDISCOVER(br0) 52:54:00:aa:00:01
dnsmasq-dhcp[25536]: 1750011212 DHCPOFFER(br0) 10.77.1.20 52:54:00:aa:00:01
dnsmasq-dhcp[25536]: 1750011212 sent size: 32 option: 67 bootfile-name  http://10.77.1.1:8080/boot/ipxe
dnsmasq-tftp[25536]: sent /tmp/pvd-netns-x/data/dnsmasq/t/tftp/undionly.kpxe to 10.77.1.120
dnsmasq-tftp[25536]: file /tmp/pvd-netns-x/data/dnsmasq/t/tftp/nosuch not found for 10.77.1.120
dnsmasq-dhcp[25536]: RTR-ADVERT(br0) fd77:1::
"""

PROXY = """\
dnsmasq-dhcp[27093]: DHCP, proxy on subnet 10.77.1.0
dnsmasq-dhcp[27093]: 4266403771 available DHCP subnet: 10.77.1.0/255.255.255.0
dnsmasq-dhcp[27093]: 4266403771 vendor class: PXEClient:Arch:00000
dnsmasq-dhcp[27093]: 4266403771 user class: iPXE
dnsmasq-dhcp[27093]: 4266403771 PXE(e0) 52:54:00:aa:00:01 proxy
dnsmasq-dhcp[27093]: 4266403771 tags: ipxe, bios, e0
dnsmasq-dhcp[27093]: 4266403771 reply delay: 1
dnsmasq-dhcp[27093]: 4266403771 bootfile name: http://10.77.1.1:8080/boot/ipxe
dnsmasq-dhcp[27093]: 4266403771 next server: 10.77.1.1
"""


def run(text: str) -> list[DhcpEvent | TftpEvent]:
    parser = BootLogParser()
    out: list[DhcpEvent | TftpEvent] = []
    for line in text.splitlines():
        out.extend(parser.feed(line))
    return out + parser.flush()


def test_single_lines() -> None:
    ev = parse_line("dnsmasq-dhcp[1]: 7 DHCPACK(br0) 10.77.1.20 52:54:00:aa:00:01 m1")
    assert ev == DhcpEvent("ack", "52:54:00:aa:00:01", "10.77.1.20", "br0", 7, hostname="m1")
    ev = parse_line("dnsmasq-dhcp[1]: 7 DHCPDISCOVER(br0) 52:54:00:aa:00:01 ")
    assert isinstance(ev, DhcpEvent) and ev.ip is None and ev.kind == "discover"
    assert parse_line("dnsmasq-dhcp[1]: 7 user class: iPXE") == ClientClass(7, "user", "iPXE")
    assert parse_line("dnsmasq[1]: started, version 2.90 DNS disabled") is None
    assert parse_line("garbage") is None
    assert parse_line("") is None
    assert parse_line("dnsmasq-dhcp[1]: 7 DHCPACK(br0) not-a-mac") is None


def test_full_mode_sequence() -> None:
    events = run(FULL)
    kinds = [(e.kind, e.ip) for e in events if isinstance(e, DhcpEvent)]
    assert kinds == [
        ("discover", None),
        ("offer", "10.77.1.20"),
        ("request", "10.77.1.20"),
        ("ack", "10.77.1.20"),
        ("discover", None),
        ("offer", "10.77.1.20"),
    ]
    dhcp = [e for e in events if isinstance(e, DhcpEvent)]
    assert all(e.mac == "52:54:00:aa:00:01" for e in dhcp)
    assert dhcp[1].boot_file == "undionly.kpxe" and dhcp[1].is_pxe
    assert dhcp[3].hostname == "m1" and dhcp[3].boot_file == "undionly.kpxe"
    assert dhcp[4].is_ipxe and not dhcp[4].is_pxe
    assert dhcp[5].boot_file == "http://10.77.1.1:8080/boot/ipxe"
    tftp = [e for e in events if isinstance(e, TftpEvent)]
    assert tftp[0] == TftpEvent("undionly.kpxe", "10.77.1.120", ok=True)
    assert not tftp[1].ok and tftp[1].file == "nosuch" and "not found" in tftp[1].error


def test_proxy_sequence() -> None:
    (event,) = run(PROXY)
    assert isinstance(event, DhcpEvent)
    assert event.kind == "proxy" and event.interface == "e0"
    assert event.boot_file == "http://10.77.1.1:8080/boot/ipxe"
    assert event.is_pxe and event.is_ipxe


def test_memory_is_bounded() -> None:
    parser = BootLogParser(max_xids=10)
    for xid in range(1000):
        parser.feed(f"dnsmasq-dhcp[1]: {xid} vendor class: PXEClient:Arch:00000")
    assert len(parser._classes) == 10
