"""One machine's page: identity, hardware, NICs and cabling, BMC, allocation, the last
deployment as a timeline, the last deployments and the newest events.

Six reads whatever the machine has (1 NIC or 6, 5 events or 50): the machine with its
rack's name, its NICs with their planned switch ports, its BMC (named columns: the
password's ciphertext is never read), the allocation holding it with owner and image,
its last deployments with their images (the newest one's view finds its image in the
session, so :func:`~provisiond.deploy.deployments.to_view` reads nothing more), and
its newest events (by machine id: the indexed column).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, TypeGuard
from urllib.parse import quote

from sqlalchemy import select
from sqlmodel import Session, col

from provisiond.allocations.leases import role_rank
from provisiond.allocations.states import LIVE_STATES
from provisiond.auth import Role
from provisiond.console import timeline
from provisiond.console.actions import ACTIONS, Action
from provisiond.console.auth import ConsoleUser
from provisiond.console.views.lists import human_bytes
from provisiond.console.views.texts import as_text
from provisiond.deploy.deployments import to_view
from provisiond.errors import NotFound
from provisiond.lifecycle import RESTING, State
from provisiond.models import (
    Allocation,
    ApiToken,
    Bmc,
    Deployment,
    Event,
    Image,
    Machine,
    Nic,
    Rack,
    Switch,
    SwitchPort,
)

EVENTS = 50
DEPLOYMENTS = 5
INSPECTABLE = {State.ENROLLED, State.INSPECT_FAILED, State.MAINTENANCE}
RELEASABLE = {
    State.ACTIVE,
    State.DEPLOYING,
    State.INSTALLING_AGENT,
    State.DEPLOY_FAILED,
    State.RELEASE_FAILED,
    State.ALLOCATED,
}
MAINTAINABLE = set(RESTING) - {State.MAINTENANCE, State.RETIRED}


def _missing(name: str) -> NotFound:
    return NotFound(
        f"no machine named {name[:64]!r}",
        hint="the machine list at /ui/machines shows every machine's name",
    )


def ensure_exists(session: Session, name: str) -> None:
    if session.execute(select(col(Machine.id)).where(col(Machine.name) == name)).first() is None:
        raise _missing(name)


def actions_for(state: str, has_bmc: bool) -> list[Action]:
    """The console actions that make sense for a machine in ``state``."""
    names = []
    if has_bmc:
        names += ["power-on", "power-off", "power-cycle"]
    if state in INSPECTABLE:
        names.append("inspect")
    if state in RELEASABLE:
        names.append("release")
    if state in MAINTAINABLE:
        names.append("maintenance-on")
    if state == State.MAINTENANCE:
        names.append("maintenance-off")
    return [ACTIONS[n] for n in names if n in ACTIONS]


def _number(value: Any) -> TypeGuard[int | float]:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _disks(disks: Any) -> list[dict[str, str]]:
    """The inspected disks as text: name, size, model, serial, SSD or HDD."""
    out = []
    for disk in disks if isinstance(disks, list) else []:
        if not isinstance(disk, dict):
            continue
        size = disk.get("size_bytes")
        if not _number(size) and _number(disk.get("size_gb")):
            size = disk["size_gb"] * 1e9  # GB as allocations match them (10^9 bytes)
        rotational = disk.get("rotational")
        out.append(
            {
                "name": as_text(disk.get("name")),
                "size": human_bytes(size) if _number(size) else "",
                "model": as_text(disk.get("model")),
                "serial": as_text(disk.get("serial")),
                "kind": {True: "HDD", False: "SSD"}.get(rotational, "")
                if isinstance(rotational, bool)
                else "",
            }
        )
    return out


def _nics(session: Session, machine_id: int) -> list[dict[str, Any]]:
    rows = session.execute(
        select(Nic, col(Switch.name), col(SwitchPort.name))
        .outerjoin(SwitchPort, col(SwitchPort.id) == col(Nic.switch_port_id))
        .outerjoin(Switch, col(Switch.id) == col(SwitchPort.switch_id))
        .where(col(Nic.machine_id) == machine_id)
        .order_by(col(Nic.id))
    ).all()
    out = []
    for nic, switch, port in rows:
        lldp = nic.lldp if isinstance(nic.lldp, dict) else {}
        detail = nic.cabling_detail if isinstance(nic.cabling_detail, dict) else {}
        out.append(
            {
                "mac": nic.mac,
                "name": nic.name,
                "pxe": nic.pxe,
                "ip": nic.ip_address,
                "planned": f"{switch}/{port}" if switch is not None and port is not None else "",
                "lldp_system": as_text(lldp.get("system_name")),
                "lldp_port": as_text(lldp.get("port_id")),
                "lldp_chassis": as_text(lldp.get("chassis_id")),
                "lldp_port_description": as_text(lldp.get("port_description")),
                "lldp_seen_at": nic.lldp_seen_at,
                "cabling": nic.cabling,
                "cabling_detail": {str(k): as_text(v) for k, v in detail.items()},
            }
        )
    return out


def _bmc(session: Session, machine_id: int) -> dict[str, Any] | None:
    # named columns only: secret_encrypted is never read for a page
    row = session.execute(
        select(
            col(Bmc.driver),
            col(Bmc.address),
            col(Bmc.port),
            col(Bmc.username),
            col(Bmc.unreachable_reason),
            col(Bmc.power_failures),
            col(Bmc.tls_verify),
            col(Bmc.cert_fingerprint),
        ).where(col(Bmc.machine_id) == machine_id)
    ).first()
    if row is None:
        return None
    driver, address, port, username, unreachable, failures, tls, fingerprint = row
    return {
        "driver": driver,
        "address": address,
        "port": port,
        "username": username,
        "unreachable_reason": unreachable,
        "power_failures": failures,
        "tls_verify": tls if driver == "redfish" else "",
        "cert_fingerprint": fingerprint,
    }


def _allocation(session: Session, user: ConsoleUser, machine_id: int) -> dict[str, Any] | None:
    row = session.execute(
        select(Allocation, col(ApiToken.name), col(Image.name))
        .join(ApiToken, col(ApiToken.id) == col(Allocation.owner_token_id))
        .outerjoin(Image, col(Image.id) == col(Allocation.image_id))
        .where(col(Allocation.machine_id) == machine_id, col(Allocation.state).in_(LIVE_STATES))
        .order_by(col(Allocation.id).desc())
        .limit(1)
    ).first()
    if row is None:
        return None
    allocation, owner, image = row
    if role_rank(user.token.role) < Role.operator and allocation.owner_token_id != user.token.id:
        return {"visible": False}
    return {
        "visible": True,
        "uuid": allocation.uuid,
        "state": allocation.state,
        "owner": owner,
        "image": image or "",
        "created_at": allocation.created_at,
        "expires_at": allocation.expires_at,
        "lease_s": allocation.lease_s,
        "attempts": allocation.attempts,
        "ssh_user": allocation.ssh_user,
    }


def _root_disk(found: Any) -> str:
    """``"sda (480.1 GB): the smallest disk that fits"`` from ``phases["root_disk"]``."""
    if not isinstance(found, dict):
        return ""
    text = as_text(found.get("disk")) or "?"
    if _number(found.get("size_bytes")):
        text += f" ({human_bytes(found['size_bytes'])})"
    why = as_text(found.get("why"))
    return text + (f": {why}" if why else "")


def _image_write(figures: Any) -> str:
    """``"2.1 GB in 14.2 s (150.3 MB/s), resumed"`` from ``phases["image_write"]``."""
    if not isinstance(figures, dict):
        return ""
    size, seconds, rate = figures.get("bytes"), figures.get("seconds"), figures.get("mb_s")
    text = human_bytes(size) if _number(size) else "? bytes"
    if _number(seconds):
        text += f" in {seconds:.1f} s"
    if _number(rate):
        text += f" ({rate:.1f} MB/s)"
    return text + (", resumed" if figures.get("resumed") is True else "")


def _deployments(
    session: Session, machine_id: int, now: datetime
) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    rows = session.execute(
        select(Deployment, Image)
        .outerjoin(Image, col(Image.id) == col(Deployment.image_id))
        .where(col(Deployment.machine_id) == machine_id)
        .order_by(col(Deployment.id).desc())
        .limit(DEPLOYMENTS)
    ).all()
    recent = []
    for record, image in rows:
        end = record.finished_at or now
        recent.append(
            {
                "uuid": record.uuid,
                "outcome": timeline.outcome(record.outcome),
                "kind": record.kind,
                "image": image.name if image is not None else "",
                "attempt": record.attempt,
                "started_at": record.started_at,
                "finished_at": record.finished_at,
                "seconds": max(0.0, (end - record.started_at).total_seconds()),
                "failure_reason": record.failure_reason,
            }
        )
    if not rows:
        return None, recent
    newest = rows[0][0]
    view = timeline.with_end(to_view(session, newest), newest, now)  # its image is loaded
    last = {
        **recent[0],
        "raw_outcome": view["outcome"],
        "svg": timeline.deploy_timeline(view),
        "root_disk": _root_disk(view.get("root_disk")),
        "image_write": _image_write(view.get("image_write")),
    }
    return last, recent


def _events(session: Session, machine: Machine) -> list[dict[str, Any]]:
    rows = session.execute(
        select(
            col(Event.at),
            col(Event.kind),
            col(Event.event),
            col(Event.from_state),
            col(Event.to_state),
            col(Event.actor),
            col(Event.message),
        )
        .where(col(Event.machine_id) == machine.id, col(Event.at) >= machine.created_at)
        .order_by(col(Event.at).desc(), col(Event.id).desc())
        .limit(EVENTS)
    ).all()
    keys = ("at", "kind", "event", "from_state", "to_state", "actor", "message")
    return [dict(zip(keys, row, strict=True)) for row in rows]


def build(session: Session, user: ConsoleUser, name: str) -> dict[str, Any]:
    found = session.execute(
        select(Machine, col(Rack.name))
        .outerjoin(Rack, col(Rack.id) == col(Machine.rack_id))
        .where(col(Machine.name) == name)
    ).first()
    if found is None:
        raise _missing(name)
    machine, rack = found
    assert machine.id is not None
    now = datetime.now(UTC)
    bmc = _bmc(session, machine.id)
    last, recent = _deployments(session, machine.id, now)
    error = machine.last_error if isinstance(machine.last_error, dict) else None
    return {
        "machine": machine,
        "href": "/ui/machines/" + quote(machine.name, safe=""),
        "rack": rack or "",
        "rack_href": "/ui/racks/" + quote(rack, safe="") if rack else "",
        "last_error": {str(k): as_text(v) for k, v in error.items()} if error else {},
        "disks": _disks(machine.disks),
        "tags": [str(t) for t in machine.tags] if isinstance(machine.tags, list) else [],
        "nics": _nics(session, machine.id),
        "bmc": bmc,
        "allocation": _allocation(session, user, machine.id),
        "last_deploy": last,
        "deployments": recent,
        "events": _events(session, machine),
        "actions": actions_for(machine.state, bmc is not None) if user.can_act else [],
        "show_actions": user.can_act,
    }
