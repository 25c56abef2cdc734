"""The supervised dnsmasq against real peers (busybox udhcpc, a second dnsmasq as site
DHCP, a DHCP probe), all inside namespaces these tests create and delete.

The supervisor runs on an asyncio loop in a background thread, as it would in the
daemon; the blocking DHCP clients run in the test thread.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import threading
import time
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from provisiond.netboot.dnsmasq import DnsmasqService
from provisiond.netboot.dnsmasq_conf import HostChange
from provisiond.netboot.dnsmasq_log import BootEvent, DhcpEvent, TftpEvent
from provisiond.networks import ProvisioningNetwork
from provisiond.templates import Templates
from tests.support.netns import SUBNET, Lab

T = TypeVar("T")
PXE_BIOS = ("0x5d:0000",)  # option 93 client arch 0 (x86 BIOS)
USER_CLASS_IPXE = "0x4d:69505845"  # option 77 "iPXE"
MAC = "52:54:00:aa:00:01"
NO_ADDRESS = "0.0.0.0"  # noqa: S104  (a DHCP yiaddr, not a bind)
URL = f"http://{SUBNET}.1:8080/boot/ipxe"


class LoopThread:
    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 30) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


@pytest.fixture
def loop() -> Iterator[LoopThread]:
    thread = LoopThread()
    try:
        yield thread
    finally:
        thread.close()


class Running:
    def __init__(self, service: DnsmasqService, loop: LoopThread, events: list[BootEvent]) -> None:
        self.service, self.loop, self.events = service, loop, events

    @property
    def pid(self) -> int | None:
        return self.service.supervisor.pid

    def dhcp(self, mac: str, kind: str) -> list[DhcpEvent]:
        return [
            e for e in self.events if isinstance(e, DhcpEvent) and e.mac == mac and e.kind == kind
        ]


def start_service(
    lab: Lab, loop: LoopThread, net: ProvisioningNetwork, request: pytest.FixtureRequest
) -> Running:
    events: list[BootEvent] = []
    service = DnsmasqService(
        net, lab.tmp / "data", Templates(), on_event=events.append, backoff=(0.2, 0.5, 1.0)
    )
    # Registered before start so a failed start still stops the child (by PID).
    request.addfinalizer(lambda: loop.run(service.stop()))
    loop.run(service.start())
    assert service.supervisor.healthy, service.supervisor.reason
    assert service.supervisor.pid is not None
    lab.pids.append(service.supervisor.pid)  # belt and braces: lab kills it too
    return Running(service, loop, events)


def full_net(ns: str, **extra: Any) -> ProvisioningNetwork:
    return ProvisioningNetwork(
        name="t",
        interface="br0",
        subnet=f"{SUBNET}.0/24",
        boot_address=f"{SUBNET}.1",
        dhcp_mode="full",
        range_start=f"{SUBNET}.100",
        range_end=f"{SUBNET}.150",
        netns=ns,
        dnsmasq_user="root",
        **extra,
    )


def wait_for(predicate: Any, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return bool(predicate())


def test_full_mode_pxe_ipxe_tftp_and_events(
    lab: Lab, loop: LoopThread, request: pytest.FixtureRequest
) -> None:
    server, client = lab.pair(client_mac=MAC, ipv6=True)
    run = start_service(
        lab, loop, full_net(server, ipv6_ra=True, ipv6_prefix="fd77:1::/64"), request
    )

    pxe = lab.udhcpc(client, vendor_class="PXEClient:Arch:00000", options=PXE_BIOS)
    assert pxe["serverid"] == f"{SUBNET}.1"
    assert pxe["bootfile"] == "undionly.kpxe"
    assert pxe["siaddr"] == f"{SUBNET}.1"
    leased = pxe["ip"]
    assert 100 <= int(leased.rsplit(".", 1)[1]) <= 150

    ipxe = lab.udhcpc(client, options=(USER_CLASS_IPXE,))
    assert ipxe["bootfile"] == URL

    # Plain PXE then fetches the iPXE binary over TFTP; nothing outside the root.
    subprocess.run(["ip", "-n", client, "addr", "add", f"{leased}/24", "dev", "c0"], check=True)
    got = lab.tmp / "undionly.kpxe"
    tftp = ["timeout", "10", "ip", "netns", "exec", client, "busybox", "tftp", "-g"]
    ok = subprocess.run(
        [*tftp, "-r", "undionly.kpxe", "-l", str(got), f"{SUBNET}.1"], capture_output=True
    )
    assert ok.returncode == 0, ok.stderr
    assert got.read_bytes() == Path("/usr/lib/ipxe/undionly.kpxe").read_bytes()
    for hostile in ("../dnsmasq.conf", "/etc/passwd", "../leases"):
        bad = subprocess.run(
            [*tftp, "-r", hostile, "-l", str(lab.tmp / "x"), f"{SUBNET}.1"], capture_output=True
        )
        assert bad.returncode != 0, hostile

    assert wait_for(lambda: any(isinstance(e, TftpEvent) and e.ok for e in run.events))
    sent = [e for e in run.events if isinstance(e, TftpEvent) and e.ok]
    assert sent[0].file == "undionly.kpxe"
    assert sent[0].ip == leased
    assert not any(
        isinstance(e, TftpEvent) and e.ok and e.file != "undionly.kpxe" for e in run.events
    )

    # Boot-phase events for the client's MAC: the whole DORA, twice.
    assert wait_for(lambda: len(run.dhcp(MAC, "ack")) == 2)
    for kind in ("discover", "offer", "request", "ack"):
        assert run.dhcp(MAC, kind), kind
    first_ack, second_ack = run.dhcp(MAC, "ack")
    assert first_ack.ip == leased
    assert first_ack.is_pxe and first_ack.boot_file == "undionly.kpxe"
    assert second_ack.is_ipxe and second_ack.boot_file == URL


def test_adding_machine_writes_one_file_and_no_restart(
    lab: Lab, loop: LoopThread, request: pytest.FixtureRequest
) -> None:
    server, client = lab.pair(client_mac=MAC)
    run = start_service(lab, loop, full_net(server), request)
    pid = run.pid
    hosts = run.service.paths.hosts
    assert list(hosts.iterdir()) == []

    change = run.service.apply_host("web-01", [MAC], f"{SUBNET}.20")
    assert change is HostChange.ADDED
    assert [p.name for p in hosts.iterdir()] == ["web-01"]
    assert (hosts / "web-01").read_text() == f"{MAC},{SUBNET}.20,set:provisiond,web-01\n"
    assert wait_for(lambda: any("web-01" in line for line in run.service.supervisor.tail))

    lease = lab.udhcpc(client, vendor_class="PXEClient:Arch:00000", options=PXE_BIOS)
    assert lease["ip"] == f"{SUBNET}.20"
    assert lease["hostname"] == "web-01"
    assert run.pid == pid  # picked up by inotify: no restart

    # A changed address: the rewritten file is re-read, its newer record wins, same PID.
    assert run.service.apply_host("web-01", [MAC], f"{SUBNET}.21") is HostChange.CHANGED
    assert run.service.apply_host("web-01", [MAC], f"{SUBNET}.21") is HostChange.UNCHANGED
    assert wait_for(lambda: sum("web-01" in line for line in run.service.supervisor.tail) >= 2)
    subprocess.run(["ip", "-n", client, "link", "set", "c0", "down"], check=True)
    subprocess.run(["ip", "-n", client, "link", "set", "c0", "up"], check=True)
    lease = lab.udhcpc(client, vendor_class="PXEClient:Arch:00000", options=PXE_BIOS)
    assert lease["ip"] == f"{SUBNET}.21"
    assert run.pid == pid


def test_killed_dnsmasq_is_restarted(
    lab: Lab, loop: LoopThread, request: pytest.FixtureRequest
) -> None:
    server, client = lab.pair(client_mac=MAC)
    run = start_service(lab, loop, full_net(server), request)
    supervisor = run.service.supervisor
    old = run.pid
    assert old is not None
    os.kill(old, signal.SIGKILL)
    assert wait_for(lambda: not supervisor.healthy, 5)
    assert "exited" in supervisor.reason
    assert wait_for(lambda: supervisor.healthy and supervisor.pid not in (None, old), 10)
    assert supervisor.restarts == 1
    lab.pids.append(supervisor.pid or 0)
    assert lab.udhcpc(client, vendor_class="PXEClient:Arch:00000", options=PXE_BIOS)["ip"]


def test_unstartable_dnsmasq_reports_unhealthy(
    lab: Lab, loop: LoopThread, request: pytest.FixtureRequest
) -> None:
    server, _client = lab.pair()
    net = full_net(server).model_copy(update={"interface": "nosuch0"})
    service = DnsmasqService(net, lab.tmp / "data", Templates(), backoff=(0.2,))
    request.addfinalizer(lambda: loop.run(service.stop()))
    loop.run(service.start(), timeout=30)
    sup = service.supervisor
    assert wait_for(lambda: sup.restarts >= 2, 5)
    assert not sup.healthy
    assert "nosuch0" in sup.reason


SITE_CONF = f"""port=0
bind-interfaces
interface=e0
keep-in-foreground
log-facility=-
pid-file=
user=root
dhcp-range={SUBNET}.50,{SUBNET}.60,255.255.255.0,600s
dhcp-leasefile={{leases}}
no-ping
"""


def test_proxy_mode_beside_site_dhcp(
    lab: Lab, loop: LoopThread, request: pytest.FixtureRequest
) -> None:
    site, ours, client = lab.proxy_layout(client_mac=MAC)
    conf = lab.tmp / "site.conf"
    conf.write_text(SITE_CONF.format(leases=lab.tmp / "site.leases"))
    lab.spawn(site, "dnsmasq", f"--conf-file={conf}", log=lab.tmp / "site.log")
    net = ProvisioningNetwork(
        name="prx",
        interface="e0",
        subnet=f"{SUBNET}.0/24",
        boot_address=f"{SUBNET}.1",
        dhcp_mode="proxy",
        netns=ours,
        dnsmasq_user="root",
    )
    run = start_service(lab, loop, net, request)
    assert wait_for(lambda: "started" in (lab.tmp / "site.log").read_text())

    # The address comes from the site server (our reply is delayed)...
    lease = lab.udhcpc(client, vendor_class="PXEClient:Arch:00000", options=PXE_BIOS)
    assert lease["serverid"] == f"{SUBNET}.2"
    assert 50 <= int(lease["ip"].rsplit(".", 1)[1]) <= 60

    # ...and the boot data from ours: an address-less offer from SUBNET.1.
    offers = lab.dhcp_probe(client, "c0", MAC, ipxe=False)
    site_offer = [o for o in offers if o.get("serverid") == f"{SUBNET}.2"]
    proxy_offer = [o for o in offers if o.get("serverid") == f"{SUBNET}.1"]
    assert site_offer and site_offer[0]["yiaddr"] != NO_ADDRESS
    assert proxy_offer, offers
    assert proxy_offer[0]["yiaddr"] == NO_ADDRESS
    assert proxy_offer[0]["vendor_class"] == "PXEClient"
    assert "pxe_options" in proxy_offer[0]  # PXE menu -> undionly.kpxe on SUBNET.1

    offers = lab.dhcp_probe(client, "c0", MAC, ipxe=True)
    proxy_offer = [o for o in offers if o.get("serverid") == f"{SUBNET}.1"]
    assert proxy_offer, offers
    assert proxy_offer[0]["file"] == URL
    assert proxy_offer[0]["siaddr"] == f"{SUBNET}.1"
    assert wait_for(lambda: any(e.boot_file == URL for e in run.dhcp(MAC, "proxy")))
    assert run.dhcp(MAC, "proxy")[0].is_pxe
