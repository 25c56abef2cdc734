"""The daemon's side of the machine agent: its token, inventory reports and heartbeats.

The deploy engine mints a per-machine token with :func:`issue_agent_token` and writes
it to the machine over SSH; only its SHA-256 is stored. The agent then calls
``/api/v1/agent/{uuid}/inventory`` once and ``.../heartbeat`` every ``interval_s``.
Each call is authenticated by :func:`authenticate_agent`, which answers the same
401 for an unknown machine, a missing token and a wrong one.

What a report does depends on the lifecycle state, always through
:func:`provisiond.lifecycle.advance`:

- inventory while ``inspecting``: ``done`` (-> ``available``), reply ``poweroff``;
- the first heartbeat while ``installing_agent``: ``ready`` (-> ``active``, "instance
  ready"), and the running Deployment row gets its ``agent_heartbeat`` phase;
- a heartbeat in :data:`POWEROFF_STATES`: reply ``poweroff``. In those states the
  daemon believes none of its OSes runs on the machine, so an agent there is a
  leftover (a release that never powered off, a box that booted an old disk): it
  burns power and may still hold a former tenant's data on the network. Not in
  ``maintenance`` (an operator may be working on it), ``deploy_failed`` (kept up for
  debugging until released) or ``releasing`` (the deploy engine drives it).

Hardware facts (CPUs, RAM, disks, DMI) are updated from every inventory, and the LLDP
neighbours go to the cabling check (:mod:`provisiond.cabling.service`). NICs follow
:mod:`provisiond.deploy.nic_reports`: planned NICs (inventory, API) are updated only
when the report agrees with them (a reported physical MAC the machine does not have,
or a stored PXE MAC missing from the report, becomes a ``mac_mismatch`` event for an
operator and changes nothing); on a machine whose NICs nobody planned (enrolled by
its PXE boot) every reported physical NIC is recorded (a ``nics_recorded`` event),
except MACs other machines hold, which are a ``mac_mismatch``.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from typing import Any

from sqlmodel import Session, select

from provisiond import events
from provisiond.cabling import service as cabling
from provisiond.config import Settings
from provisiond.deploy import nic_reports
from provisiond.deploy import telemetry as boot_telemetry
from provisiond.deploy.records import finish, running_deployment
from provisiond.errors import Unauthorized
from provisiond.events import EventKind
from provisiond.lifecycle import Ev, State, advance
from provisiond.metrics import Metrics
from provisiond.models import Machine, utcnow
from provisiond.schemas.agent import (
    AgentReply,
    Heartbeat,
    InventoryReport,
)

#: The actor recorded on events the agent causes.
ACTOR = "agent"

POWEROFF_STATES: frozenset[str] = frozenset(
    {State.ENROLLED, State.AVAILABLE, State.INSPECT_FAILED, State.RETIRED}
)

#: DMI strings vendors leave in unprogrammed boards; they say nothing about the machine.
DMI_PLACEHOLDERS = frozenset(
    {
        "default string",
        "not specified",
        "none",
        "o.e.m.",
        "system manufacturer",
        "system product name",
        "system serial number",
        "to be filled by o.e.m.",
        "0123456789",
    }
)


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def issue_agent_token(session: Session, machine: Machine) -> str:
    """Mint the machine's agent token, replacing any earlier one; returns the clear token."""
    token = secrets.token_urlsafe(32)
    machine.agent_token_hash = _digest(token)
    session.add(machine)
    session.flush()
    return token


def authenticate_agent(session: Session, machine_uuid: str, authorization: str | None) -> Machine:
    """The machine whose agent token ``authorization`` (``Bearer <token>``) carries.

    Every failure is the same 401, so a caller learns nothing about which machines exist.
    """
    scheme, _, token = (authorization or "").partition(" ")
    machine = (
        session.exec(select(Machine).where(Machine.uuid == machine_uuid)).first()
        if len(machine_uuid) <= 36 and "\x00" not in machine_uuid
        else None
    )
    # Compare even when the machine is unknown, so the answer takes the same time.
    stored = machine.agent_token_hash if machine and machine.agent_token_hash else "0" * 64
    good = hmac.compare_digest(_digest(token.strip()), stored)
    if machine is None or not good or scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized(
            "the agent token was not accepted for this machine",
            hint="check PROVISIOND_MACHINE and PROVISIOND_AGENT_TOKEN in "
            "/etc/provisiond/agent.env; a redeploy issues a new token and voids the old one",
        )
    return machine


def _interval(settings: Settings) -> float:
    return settings.agent_heartbeat_interval_s


def _dmi(value: str) -> str:
    value = value.strip()
    return "" if value.lower() in DMI_PLACEHOLDERS else value


def _record(
    session: Session, machine: Machine, event: str, message: str, details: dict[str, Any]
) -> None:
    events.record(
        session,
        EventKind.INVENTORY,
        event,
        flush=False,
        machine=machine,
        actor=ACTOR,
        message=message,
        details=details,
    )


def _nics(session: Session, machine: Machine, report: InventoryReport) -> dict[str, Any]:
    """Check and take the reported NICs (see :mod:`~provisiond.deploy.nic_reports`);
    returns the mismatch, empty when there is none."""
    planned = nic_reports.planned(session, machine)
    mismatch = nic_reports.mismatch(session, machine, report.nics, is_planned=planned)
    if mismatch:
        outcome = "NICs left unchanged" if planned else "those MACs not recorded on this machine"
        _record(
            session,
            machine,
            "mac_mismatch",
            f"unknown MACs {mismatch['unknown']}, missing PXE MACs {mismatch['missing_pxe']}; "
            + outcome,
            {**mismatch, "lldp": report.lldp},
        )
    if planned:
        if not mismatch:
            nic_reports.update(machine, report.nics)
        return mismatch
    added = nic_reports.learn(machine, report.nics, skip=set(mismatch.get("unknown", ())))
    if added:
        _record(
            session,
            machine,
            nic_reports.LEARNT,
            f"recorded {len(added)} reported NICs (none were planned): "
            + ", ".join(f"{n['name'] or '?'} {n['mac']}" for n in added),
            {"added": added, "planned": False},
        )
    return mismatch


def record_inventory(
    session: Session,
    machine: Machine,
    report: InventoryReport,
    *,
    settings: Settings,
    metrics: Metrics,
) -> AgentReply:
    """Store what the agent found; an ``inspecting`` machine becomes ``available``."""
    now = utcnow()
    machine.cpus = report.cpus
    machine.ram_mib = report.ram_mib
    machine.disks = [d.model_dump() for d in report.disks]
    for field, value in (
        ("vendor", report.dmi.sys_vendor),
        ("model", report.dmi.product_name),
        ("serial", report.dmi.product_serial),
    ):
        if _dmi(value):
            setattr(machine, field, _dmi(value))
    if report.agent_version:
        machine.agent_version = report.agent_version
    machine.updated_at = now
    mismatch = _nics(session, machine, report)
    machine.firmware = report.firmware if report.firmware in ("bios", "uefi") else ""
    session.add(machine)
    total = sum(d.size_bytes for d in report.disks)
    _record(
        session,
        machine,
        "inventory_reported",
        f"{report.cpus} CPUs, {report.ram_mib} MiB RAM, {len(report.disks)} disks "
        f"({total // 10**9} GB), {len(report.nics)} NICs",
        {
            "hostname": report.hostname,
            "kernel": report.kernel,
            "arch": report.arch,
            "firmware": report.firmware,
            "cpu_model": report.cpu_model,
            "agent_version": report.agent_version,
            "nics": [n.model_dump() for n in report.nics],
            "lldp": report.lldp,
            "mac_mismatch": bool(mismatch),
        },
    )
    session.flush()
    named = {n.name: n.mac for n in report.nics if n.name}  # for agents that send no MAC
    cabling.record_report(session, machine, report.lldp, named,
                          policy=settings.cabling_policy, metrics=metrics, actor=ACTOR)  # fmt: skip
    action = None
    if machine.state == State.INSPECTING:
        boot_telemetry.record_phase(session, machine, "inventory", metrics=metrics, actor=ACTOR)
        record = running_deployment(session, machine.id) if machine.id else None
        if record is not None:
            finish(record, "available")
            session.add(record)
        advance(
            session,
            machine,
            Ev.DONE,
            actor=ACTOR,
            timeouts=settings.timeouts,
            reason="inspection report",
            now=now,
        )
        action = "poweroff"
    return AgentReply(action=action, interval_s=_interval(settings), state=machine.state)


def record_heartbeat(
    session: Session,
    machine: Machine,
    hb: Heartbeat,
    *,
    settings: Settings,
    metrics: Metrics,
) -> AgentReply:
    """Note that the agent lives; the first heartbeat after install makes the machine active."""
    now = utcnow()
    machine.last_heartbeat_at = now
    if hb.agent_version:
        machine.agent_version = hb.agent_version
    session.add(machine)
    session.flush()
    if machine.state == State.INSTALLING_AGENT:
        deployment = running_deployment(session, machine.id) if machine.id else None
        boot_telemetry.record_phase(
            session,
            machine,
            "agent_heartbeat",
            metrics=metrics,
            actor=ACTOR,
            at=now,
            deployment=deployment,
        )
        timings: dict[str, float] = {}
        if deployment is not None:
            finish(deployment, "active", at=now)
            timings["deploy_total_s"] = round((now - deployment.started_at).total_seconds(), 3)
            session.add(deployment)
            if metrics is not None:
                metrics.deploy_seconds.labels(deployment.kind, "active").observe(
                    timings["deploy_total_s"]
                )
        advance(
            session,
            machine,
            Ev.READY,
            actor=ACTOR,
            timeouts=settings.timeouts,
            reason="first agent heartbeat",
            details={"deployment": deployment.uuid} if deployment else {},
            phase_timings=timings,
            now=now,
        )
    action = "poweroff" if machine.state in POWEROFF_STATES else None
    return AgentReply(action=action, interval_s=_interval(settings), state=machine.state)
