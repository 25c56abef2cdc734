"""A boot power-cycled before a daemon restart (issue 11, defect 10), both databases.

The machine's boot reached some phases before the restart; after it, dnsmasq's log
(real lines, through the daemon's parser and :meth:`Netboot.apply_event`) shows the
machine again, or does not. The engine power-cycles it again only when nothing was
heard from it ``lost_boot_s`` after the restart.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest
from sqlmodel import select

from provisiond.container import Services
from provisiond.deploy import records as deploy
from provisiond.deploy.engine import DeployEngine
from provisiond.deploy.netboot_runtime import Netboot
from provisiond.deploy.telemetry import phase_table
from provisiond.lifecycle import Ev, advance
from provisiond.models import Event, Machine, Nic, utcnow
from provisiond.netboot.dnsmasq_log import BootLogParser

MAC, IP = "52:54:00:aa:00:01", "10.77.1.20"

PXE_ASKS_AGAIN = f"""\
dnsmasq-dhcp[25536]: 231557997 vendor class: PXEClient:Arch:00000
dnsmasq-dhcp[25536]: 231557997 DHCPDISCOVER(br0) {MAC}
dnsmasq-dhcp[25536]: 231557997 DHCPOFFER(br0) {IP} {MAC}
dnsmasq-dhcp[25536]: 231557997 sent size: 14 option: 67 bootfile-name  undionly.kpxe
dnsmasq-dhcp[25536]: 231557997 vendor class: PXEClient:Arch:00000
dnsmasq-dhcp[25536]: 231557997 DHCPREQUEST(br0) {IP} {MAC}
dnsmasq-dhcp[25536]: 231557997 DHCPACK(br0) {IP} {MAC} m1
dnsmasq-dhcp[25536]: 231557997 sent size: 14 option: 67 bootfile-name  undionly.kpxe
"""
TFTP_SENT = f"""\
dnsmasq-tftp[25536]: sent /var/lib/provisiond/dnsmasq/prov0/tftp/undionly.kpxe to {IP}
"""
OS_RENEWS_LEASE = f"""\
dnsmasq-dhcp[25536]: 1750011212 vendor class: udhcp 1.35.0
dnsmasq-dhcp[25536]: 1750011212 DHCPREQUEST(br0) {IP} {MAC}
dnsmasq-dhcp[25536]: 1750011212 DHCPACK(br0) {IP} {MAC} m1
"""


def _deploying(services: Services, **ages_s: float) -> int:
    """A deploying machine whose boot reached the phases ``ages_s`` (seconds ago)."""
    now = utcnow()
    with services.db.transaction() as s:
        m = Machine(name="m1")
        advance(s, m, Ev.ENROLL, actor="test")
        for ev in (Ev.INSPECT, Ev.DONE, Ev.ALLOCATE):
            advance(s, m, ev, actor="test")
        assert m.id is not None
        s.add(Nic(machine_id=m.id, mac=MAC, pxe=True, ip_address=IP))
        record = deploy.start_deploy(
            s,
            m,
            allocation=None,
            image_id=None,
            actor="test",
            settings=services.settings,
            secrets=services.secrets,
        )
        stamps = {k: (now - timedelta(seconds=v)).isoformat() for k, v in ages_s.items()}
        record.phases = {**record.phases, **stamps}
        s.add(record)
        return m.id


def _dnsmasq_says(services: Services, log: str) -> None:
    parser = BootLogParser()
    events = [e for line in log.splitlines() for e in parser.feed(line)] + parser.flush()
    assert events
    netboot = Netboot(services)
    for event in events:
        netboot.apply_event(event)


def _restarted(services: Services, seconds_ago: float) -> DeployEngine:
    engine = DeployEngine(services)
    engine.started_at = utcnow() - timedelta(seconds=seconds_ago)
    return engine


@pytest.mark.parametrize(
    ("reached", "log", "repower"),
    [
        # The PXE firmware asks dnsmasq again for phases it had reached: booting again.
        (("dhcp_discover", "dhcp_ack"), PXE_ASKS_AGAIN, False),
        # A phase the boot had not reached before the restart: the boot moves on.
        (("dhcp_discover", "dhcp_ack"), TFTP_SENT, False),
        # Controls: a booted OS renewing its lease says nothing about its lost
        # callback, and silence is silence.
        (("dhcp_discover", "dhcp_ack", "tftp", "os_dhcp"), OS_RENEWS_LEASE, True),
        (("dhcp_discover", "dhcp_ack"), "", True),
    ],
    ids=["pxe-asks-again", "new-phase", "os-lease-renewal", "silence"],
)
def test_a_boot_heard_from_after_the_restart_is_not_power_cycled_again(
    services: Services, reached: tuple[str, ...], log: str, repower: bool
) -> None:
    wait = services.settings.lost_boot_s
    # Power-cycled, and these phases reached, by the daemon before the restart.
    ages = {phase: wait + 50 - i for i, phase in enumerate(reached)}
    _deploying(services, power_cycle=wait + 60, **ages)
    engine = _restarted(services, wait + 10)  # restarted longer than lost_boot_s ago
    if log:
        _dnsmasq_says(services, log)
    assert [w.step for w in engine.scan()] == (["repower"] if repower else [])


def test_a_repeated_request_is_noted_without_moving_the_phase(services: Services) -> None:
    wait = services.settings.lost_boot_s
    machine_id = _deploying(services, power_cycle=wait + 60, dhcp_discover=wait + 50)
    with services.db.read_session() as s:
        before = deploy.running_deployment(s, machine_id)
        assert before is not None
    _dnsmasq_says(services, PXE_ASKS_AGAIN)
    with services.db.read_session() as s:
        after = deploy.running_deployment(s, machine_id)
        assert after is not None
    assert after.phases["dhcp_discover"] == before.phases["dhcp_discover"]
    assert after.phases[deploy.ASKED_AGAIN]["phase"] == "dhcp_discover"  # dhcp_ack is new
    assert "dhcp_ack" in after.phases
    # Not a phase: the deployment's phase table and deadline reason leave it out.
    assert deploy.ASKED_AGAIN not in [p for p, _ in phase_table(after)]


def test_the_wait_is_the_lost_boot_s_setting(services: Services) -> None:
    slow = services.settings.model_copy(update={"lost_boot_s": 600.0})
    services.settings = slow
    machine_id = _deploying(services, power_cycle=900)
    # Restarted 120 s ago, longer than the old hard-coded 90 s: still waiting.
    assert _restarted(services, 120).scan() == []
    engine = _restarted(services, 610)
    [work] = engine.scan()
    assert work.step == "repower"
    asyncio.run(engine._drive(work))
    with services.db.read_session() as s:
        record = deploy.running_deployment(s, machine_id)
        assert record is not None and record.attempt == 2
        [retry] = s.exec(select(Event).where(Event.event == "retry")).all()
    assert "600s" in retry.message
