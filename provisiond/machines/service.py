"""Machines: create, read, update, delete, and operator lifecycle events.

A new machine enters the lifecycle through ``advance(..., Ev.ENROLL)``; later
state changes go through :func:`fire_event`, never by writing ``state``. NICs,
the BMC and rack placement are checked here so the API, inventory apply and
discovery share one set of rules.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Protocol

from pydantic import BaseModel
from sqlalchemy.orm import selectinload
from sqlmodel import Session, col, or_, select

from provisiond import lifecycle
from provisiond.config import Settings, StateTimeouts
from provisiond.crud import apply_patch, ensure_name_free
from provisiond.deploy import records as deploy
from provisiond.errors import Conflict, MachineLocked, NotFound, Problem, ValidationFailed
from provisiond.events import audit
from provisiond.inventory.placement import Placed, check_rack
from provisiond.inventory.racks import rack_contents
from provisiond.lifecycle import Ev, State
from provisiond.machines import credentials
from provisiond.models import CredentialSet, Machine, Nic, Rack, Switch, SwitchPort, utcnow
from provisiond.schemas.resources import (
    MachineEventIn,
    MachineIn,
    MachineOut,
    MachinePatch,
    NicIn,
)
from provisiond.secrets import SecretBox

#: States from which a machine may be deleted: at rest, holding no allocation.
DELETABLE: frozenset[State] = frozenset(
    {State.ENROLLED, State.AVAILABLE, State.MAINTENANCE, State.RETIRED, State.INSPECT_FAILED}
)


def find(session: Session, ident: str) -> Machine:
    """The machine named ``ident``, or whose uuid is ``ident``."""
    machine = session.exec(
        select(Machine).where(or_(col(Machine.name) == ident, col(Machine.uuid) == ident))
    ).first()
    if machine is None:
        raise NotFound(
            f"no machine named {ident!r}",
            hint="look machines up by name or uuid; 'provisiond machines list' shows them",
        )
    return machine


def list_machines(
    session: Session,
    *,
    state: str | None = None,
    rack: str | None = None,
    tag: str | None = None,
    arch: str | None = None,
) -> list[MachineOut]:
    query = select(Machine).options(
        selectinload(Machine.nics),  # type: ignore[arg-type]
        selectinload(Machine.bmc),  # type: ignore[arg-type]
    )
    if state:
        if state not in {s.value for s in State}:
            raise ValidationFailed(
                [Problem("state", f"{state!r} is not a machine state")],
                hint="states: " + ", ".join(s.value for s in State if s is not State.NEW),
            )
        query = query.where(Machine.state == state)
    if rack:
        rack_row = session.exec(select(Rack).where(Rack.name == rack)).first()
        if rack_row is None:
            raise ValidationFailed(
                [Problem("rack", f"no rack named {rack!r}")], hint="list racks to see the names"
            )
        query = query.where(Machine.rack_id == rack_row.id)
    if arch:
        query = query.where(Machine.arch == arch)
    rows = list(session.exec(query.order_by(Machine.name)))
    if tag:
        rows = [m for m in rows if tag in m.tags]
    return to_out(session, rows)


def get_machine(session: Session, ident: str) -> MachineOut:
    return to_out(session, [find(session, ident)])[0]


def create_machine(
    session: Session, box: SecretBox, spec: MachineIn, *, actor: str, request_id: str = ""
) -> MachineOut:
    ensure_name_free(session, Machine, spec.name, kind="machine")
    rack_id = place(
        session,
        kind="machine",
        name=spec.name,
        rack=spec.rack,
        u_position=spec.u_position,
        u_height=spec.u_height,
    )
    fields = spec.model_dump(exclude={"rack", "nics", "bmc"})
    machine = Machine(**fields, rack_id=rack_id)
    machine.nics = build_nics(session, spec.nics, machine=None)
    if spec.bmc is not None:
        machine.bmc = credentials.build_bmc(session, box, spec.bmc, machine=None)
    lifecycle.advance(
        session, machine, Ev.ENROLL, actor=actor, request_id=request_id, reason="created by API"
    )
    return to_out(session, [machine])[0]


def update_machine(
    session: Session,
    box: SecretBox,
    ident: str,
    patch: MachinePatch,
    *,
    actor: str,
    request_id: str = "",
) -> MachineOut:
    machine = find(session, ident)
    given = patch.model_fields_set
    if patch.name and patch.name != machine.name:
        ensure_name_free(session, Machine, patch.name, kind="machine")
    replace(session, machine, "machine", patch)
    changed = set(
        apply_patch(machine, patch, skip=frozenset({"rack", "u_position", "nics", "bmc"}))
    )
    changed |= given & {"rack", "u_position", "nics", "bmc"}
    if patch.nics is not None:
        replace_nics(session, machine, patch.nics)
    if "bmc" in given:
        credentials.patch_bmc(session, box, machine, patch.bmc)
    machine.updated_at = utcnow()
    session.add(machine)
    session.flush()
    if changed:
        fields = sorted(changed)
        audit(
            session,
            "update",
            f"changed {', '.join(fields)}",
            actor=actor,
            request_id=request_id,
            machine=machine,
            details={"fields": fields},
        )
    return to_out(session, [machine])[0]


def ensure_unlocked(machine: Machine, now: datetime | None = None) -> None:
    now = now or utcnow()
    if machine.lock_owner and machine.lock_expires and machine.lock_expires > now:
        raise MachineLocked(
            f"machine {machine.name} is locked by {machine.lock_owner} "
            f"until {machine.lock_expires:%Y-%m-%d %H:%M:%S} UTC",
            hint="wait for that operation to finish; the lock expires by itself if its owner died",
        )


def delete_machine(session: Session, ident: str, *, actor: str, request_id: str = "") -> None:
    machine = find(session, ident)
    if machine.state not in DELETABLE:
        allowed = lifecycle.allowed_events(machine.state)
        raise Conflict(
            f"machine {machine.name} is {machine.state}; only machines that are "
            f"{', '.join(sorted(DELETABLE))} can be deleted",
            hint=(
                f"retire it first: POST /api/v1/machines/{machine.name}/events "
                '{"event": "retire"}'
                if "retire" in allowed
                else f"wait for it to leave {machine.state} (allowed now: "
                f"{', '.join(allowed) or 'none'})"
            ),
        )
    ensure_unlocked(machine)
    audit(
        session,
        "delete",
        f"deleted machine {machine.name} ({machine.uuid})",
        actor=actor,
        request_id=request_id,
        machine=machine,
    )
    session.delete(machine)
    session.flush()


def fire_event(
    session: Session,
    ident: str,
    spec: MachineEventIn,
    *,
    actor: str,
    timeouts: StateTimeouts,
    request_id: str = "",
    settings: Settings | None = None,
    secrets: SecretBox | None = None,
) -> MachineOut:
    """Fire a lifecycle event; inspect and release go through the deploy service."""
    machine = find(session, ident)
    ensure_unlocked(machine)
    event = Ev(spec.event)
    if event is Ev.INSPECT and settings is not None and secrets is not None:
        # An inspection needs its record (per-boot key, phases) and a power-cycle.
        deploy.start_inspection(
            session,
            machine,
            actor=actor,
            settings=settings,
            secrets=secrets,
            reason=spec.reason or "inspection requested",
        )
    elif event is Ev.RELEASE and settings is not None:
        deploy.start_release(
            session, machine, actor=actor, reason=spec.reason or "released", settings=settings
        )
    else:
        lifecycle.advance(
            session,
            machine,
            event,
            actor=actor,
            timeouts=timeouts,
            reason=spec.reason,
            request_id=request_id,
        )
    return to_out(session, [machine])[0]


def to_out(session: Session, machines: Sequence[Machine]) -> list[MachineOut]:
    """API views of ``machines``, with names looked up in a few queries for the whole list."""
    racks = dict(session.exec(select(Rack.id, Rack.name)).all())
    creds = dict(session.exec(select(CredentialSet.id, CredentialSet.name)).all())
    port_ids = {n.switch_port_id for m in machines for n in m.nics if n.switch_port_id}
    ports = {
        pid: f"{switch}/{port}"
        for pid, switch, port in session.exec(
            select(SwitchPort.id, Switch.name, SwitchPort.name)
            .join(Switch, col(Switch.id) == col(SwitchPort.switch_id))
            .where(col(SwitchPort.id).in_(port_ids))
        )
    }
    return [
        MachineOut.model_validate(
            {
                **m.model_dump(exclude={"agent_token_hash", "id", "rack_id"}),
                "rack": racks.get(m.rack_id),
                "allowed_events": lifecycle.allowed_events(m.state),
                "nics": [
                    {**n.model_dump(), "switch_port": ports.get(n.switch_port_id)} for n in m.nics
                ],
                "bmc": m.bmc
                and {
                    **m.bmc.model_dump(exclude={"secret_encrypted"}),
                    "password_set": bool(m.bmc.secret_encrypted),
                    "credential_set": creds.get(m.bmc.credential_set_id),
                },
            }
        )
        for m in machines
    ]


# --- placement (shared with switches and PDUs) ---------------------------------


def place(
    session: Session,
    *,
    kind: str,
    name: str,
    rack: str | None,
    u_position: int | None,
    u_height: int,
    current: tuple[str, str] | None = None,
) -> int | None:
    """The id of ``rack`` after checking the item fits there; ``current`` is its old self."""
    if rack is None:
        if u_position is not None:
            raise ValidationFailed(
                [Problem("u_position", "a U position needs a rack")],
                hint="set rack as well, or leave u_position out",
            )
        return None
    row = session.exec(select(Rack).where(Rack.name == rack)).first()
    if row is None:
        raise ValidationFailed(
            [Problem("rack", f"no rack named {rack!r}")],
            hint="create the rack first (POST /api/v1/racks), or list racks to see the names",
        )
    if u_position is None or u_height < 1:
        return row.id
    item = Placed(kind, name, u_position, u_height)
    if item.units.stop - 1 > row.u_height:
        raise ValidationFailed(
            [
                Problem(
                    "u_position",
                    f"{kind} {name} at U{u_position} ({u_height}U) "
                    f"does not fit rack {rack} of {row.u_height}U",
                )
            ],
            hint=f"pick u_position from 1 to {row.u_height - u_height + 1}"
            if u_height <= row.u_height
            else f"it is taller than the whole rack ({row.u_height}U); check u_height",
        )
    others = [p for p in rack_contents(session, row) if (p.kind, p.name) != current]
    before = set(check_rack(rack, row.u_height, others))
    clashes = [p for p in check_rack(rack, row.u_height, [*others, item]) if p not in before]
    if clashes:
        taken = {u for p in others for u in p.units}
        other = next((p for p in others if set(p.units) & set(item.units)), None)
        raise Conflict(
            clashes[0].message
            if other is None
            else f"{kind} {name} at U{u_position}-U{item.units.stop - 1} overlaps {other.kind} "
            f"{other.name} at U{other.units.start}-U{other.units.stop - 1} in rack {rack}",
            hint=f"free spaces for {u_height}U in {rack}: "
            + (", ".join(_free_runs(taken, row.u_height, u_height)) or "none"),
        )
    return row.id


class Placeable(Protocol):
    name: str
    rack_id: int | None
    u_position: int | None
    u_height: int


def replace(session: Session, row: Placeable, kind: str, patch: BaseModel) -> None:
    """Apply a patch's rack, u_position, u_height (and name) to ``row`` after checking them."""
    given = patch.model_fields_set
    if not given & {"rack", "u_position", "u_height", "name"}:
        return
    values = patch.model_dump(include=given)
    rack = values["rack"] if "rack" in given else None
    if "rack" not in given and row.rack_id is not None:
        rack = session.exec(select(Rack.name).where(Rack.id == row.rack_id)).one()
    # Leaving the rack frees the slot unless a position is given (which place() refuses).
    position = values.get("u_position", row.u_position if rack is not None else None)
    row.rack_id = place(
        session,
        kind=kind,
        name=values.get("name") or row.name,
        rack=rack,
        u_position=position,
        u_height=values.get("u_height", row.u_height),
        current=(kind, row.name),
    )
    row.u_position = position


def _free_runs(taken: set[int], rack_height: int, need: int) -> list[str]:
    runs, start = [], None
    for u in range(1, rack_height + 2):
        if u <= rack_height and u not in taken:
            start = u if start is None else start
        elif start is not None:
            if u - start >= need:
                runs.append(f"U{start}-U{u - 1}")
            start = None
    return runs


# --- NICs --------------------------------------------------------------------


def _port_id(session: Session, ref: str, where: str, machine: Machine | None) -> int:
    """The id of switch port ``"switch/port"``, refused when another machine's NIC holds it."""
    switch, _, port = ref.partition("/")
    row = session.exec(
        select(SwitchPort)
        .join(Switch, col(Switch.id) == col(SwitchPort.switch_id))
        .where(Switch.name == switch, SwitchPort.name == port)
    ).first()
    if row is None or row.id is None:
        known = session.exec(select(Switch.id).where(Switch.name == switch)).first()
        raise ValidationFailed(
            [
                Problem(
                    where,
                    f"switch {switch!r} has no port {port!r}"
                    if known
                    else f"no switch named {switch!r}",
                )
            ],
            hint="add the port to the switch first (PATCH /api/v1/switches/NAME with ports)"
            if known
            else "create the switch first (POST /api/v1/switches)",
        )
    holder = session.exec(
        select(Machine.name, Nic.mac)
        .join(Machine, col(Machine.id) == col(Nic.machine_id))
        .where(Nic.switch_port_id == row.id, Nic.machine_id != (machine.id if machine else None))
    ).first()
    if holder is not None:
        raise Conflict(
            f"switch port {ref} is already wired to machine {holder[0]} (NIC {holder[1]})",
            hint=f"unwire it first: PATCH machine {holder[0]} with nics that leave it out",
        )
    return row.id


def build_nics(session: Session, specs: list[NicIn], *, machine: Machine | None) -> list[Nic]:
    macs = [n.mac for n in specs]
    if macs:
        taken = session.exec(
            select(Nic.mac, Machine.name)
            .join(Machine, col(Machine.id) == col(Nic.machine_id))
            .where(col(Nic.mac).in_(macs), Nic.machine_id != (machine.id if machine else None))
        ).first()
        if taken is not None:
            raise Conflict(
                f"MAC {taken[0]} belongs to machine {taken[1]}",
                hint=f"remove the NIC from {taken[1]} first, or check the MAC",
            )
    nics = []
    for i, spec in enumerate(specs):
        port = (
            _port_id(session, spec.switch_port, f"nics.{i}.switch_port", machine)
            if (spec.switch_port)
            else None
        )
        nics.append(Nic(**spec.model_dump(exclude={"switch_port"}), switch_port_id=port))
    return nics


def replace_nics(session: Session, machine: Machine, specs: list[NicIn]) -> None:
    old_ips = {n.mac: n.ip_address for n in machine.nics}
    new = build_nics(session, specs, machine=machine)
    for nic, spec in zip(new, specs, strict=True):
        if "ip_address" not in spec.model_fields_set:
            nic.ip_address = old_ips.get(nic.mac, "")
    # Delete first: the unit of work would insert before deleting and trip the MAC index.
    machine.nics = []
    session.flush()
    machine.nics = new
