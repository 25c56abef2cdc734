"""Boot-phase telemetry: every phase of a deploy or inspection, timed, in one place.

Phases are recorded on the machine's running :class:`~provisiond.models.Deployment`
(``phases``: name -> first time reached), as an Event (kind ``boot``) with the
seconds since the power-cycle, and in the ``provisiond_boot_phase_seconds``
histogram. Sources:

=====================  ==================================================
phase                  seen by
=====================  ==================================================
power_cycle            the deploy engine, after the BMC accepted it
dhcp_discover          dnsmasq log: DHCPDISCOVER from a PXE ROM
dhcp_ack               dnsmasq log: DHCPACK to the PXE ROM
tftp                   dnsmasq log: the iPXE binary was sent
ipxe_dhcp              dnsmasq log: DHCPACK to iPXE (option 175 / user class)
ipxe_script            ``GET /boot/{mac}.ipxe``
os_dhcp                dnsmasq log: DHCPACK to the booted OS (no PXE class)
kernel, initrd         ``GET /images/...`` of the deploy image's files
seed                   ``GET /meta/{uuid}/user-data``
os_callback            ``POST /boot/callback/{uuid}``
agent_install          the engine started the SSH install
agent_installed        the agent runs as a service
agent_heartbeat        the agent's first heartbeat (instance ready)
inventory              the agent's inventory report (inspection done)
=====================  ==================================================

A phase is recorded once per deployment (the first time), so a retried DHCP or a
second kernel fetch does not move it; the boot firmware's repeated requests (PXE
or iPXE DHCP, TFTP) are noted as ``asked_again`` instead, which tells the engine a
boot is alive after a daemon restart (:mod:`provisiond.deploy.lost_boot`). Lookups
are by MAC (DHCP, TFTP by address) or by the client address of an HTTP request,
matched against recorded NIC addresses only.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlmodel import Session, select

from provisiond import events
from provisiond.deploy.records import mark_asked_again, mark_phase, running_deployment
from provisiond.events import EventKind
from provisiond.metrics import Metrics
from provisiond.models import Deployment, Machine, Nic, utcnow

ORIGIN_PHASES = ("power_cycle", "deploy_requested", "inspect_requested")
#: Phases the boot firmware reaches by asking dnsmasq: seen again, the machine is
#: (re)booting. Not ``os_dhcp``: a running OS renews its lease whether or not its
#: callback was answered.
BOOT_REQUESTS = frozenset({"dhcp_discover", "dhcp_ack", "dhcp_proxy", "ipxe_dhcp", "tftp"})


def machine_by_mac(session: Session, mac: str) -> Machine | None:
    nic = session.exec(select(Nic).where(Nic.mac == mac.lower())).first()
    return nic.machine if nic else None


def machine_by_address(session: Session, address: str) -> Machine | None:
    if not address:
        return None
    nic = session.exec(select(Nic).where(Nic.ip_address == address)).first()
    return nic.machine if nic else None


def seconds_since_origin(deployment: Deployment, at: datetime) -> float | None:
    for origin in ORIGIN_PHASES:
        stamp = deployment.phases.get(origin)
        if isinstance(stamp, str):
            return round((at - datetime.fromisoformat(stamp)).total_seconds(), 3)
    return None


def record_phase(
    session: Session,
    machine: Machine | None,
    phase: str,
    *,
    metrics: Metrics,
    actor: str = "boot",
    at: datetime | None = None,
    deployment: Deployment | None = None,
    **details: Any,
) -> bool:
    """Record ``phase`` for the machine's running deployment; True if it was new.

    ``deployment`` names the record when the caller knows it, e.g. an agent install
    that ends after the agent's first heartbeat already closed the record.
    """
    if machine is None or machine.id is None:
        return False
    deployment = deployment or running_deployment(session, machine.id)
    if deployment is None:
        return False
    at = at or utcnow()
    if not mark_phase(deployment, phase, at):
        if phase in BOOT_REQUESTS:
            mark_asked_again(deployment, phase, at)
            session.add(deployment)
        return False
    session.add(deployment)
    elapsed = seconds_since_origin(deployment, at)
    events.record(
        session,
        EventKind.BOOT,
        phase,
        at=at,
        machine=machine,
        actor=actor,
        message=f"{deployment.kind} phase {phase}"
        + (f" at +{elapsed:.1f}s" if elapsed is not None else ""),
        details={"deployment": deployment.uuid, "seconds": elapsed, **details},
    )
    if elapsed is not None:
        metrics.boot_phase_seconds.labels(deployment.kind, phase).observe(elapsed)
    return True


def phase_table(deployment: Deployment) -> list[tuple[str, float | None]]:
    """(phase, seconds since the origin) in the order the phases were reached."""
    stamps = [(name, datetime.fromisoformat(v)) for name, v in deployment.phases.items() if _iso(v)]
    stamps.sort(key=lambda item: item[1])
    return [(name, seconds_since_origin(deployment, at)) for name, at in stamps]


def _iso(value: object) -> bool:
    if not isinstance(value, str):
        return False
    try:
        datetime.fromisoformat(value)
    except ValueError:
        return False
    return True
