"""Switches and their ports, placed in racks; NICs name ports as ``"switch/port"``."""

from __future__ import annotations

from collections.abc import Sequence

from sqlmodel import Session, col, select

from provisiond.crud import apply_patch, ensure_name_free, get_by_name
from provisiond.errors import Conflict
from provisiond.events import audit
from provisiond.inventory.rack_units import place, replace
from provisiond.models import Machine, Nic, Rack, Switch, SwitchPort
from provisiond.schemas.resources import PortIn, SwitchIn, SwitchOut, SwitchPatch


def _find(session: Session, name: str) -> Switch:
    return get_by_name(session, Switch, name, kind="switch")


def _wiring(session: Session, switches: Sequence[Switch]) -> dict[int | None, tuple[str, str]]:
    """Port id -> (machine name, MAC) of the NIC wired to it."""
    port_ids = [p.id for s in switches for p in s.ports]
    rows = session.exec(
        select(Nic.switch_port_id, Machine.name, Nic.mac)
        .join(Machine, col(Machine.id) == col(Nic.machine_id))
        .where(col(Nic.switch_port_id).in_(port_ids))
    )
    return {port_id: (machine, mac) for port_id, machine, mac in rows}


def to_out(session: Session, switches: Sequence[Switch]) -> list[SwitchOut]:
    racks = dict(session.exec(select(Rack.id, Rack.name)).all())
    wired = _wiring(session, switches)
    return [
        SwitchOut.model_validate(
            {
                **s.model_dump(exclude={"id", "rack_id"}),
                "rack": racks.get(s.rack_id),
                "ports": [
                    {
                        **p.model_dump(),
                        "machine": wired.get(p.id, (None, None))[0],
                        "mac": wired.get(p.id, (None, None))[1],
                    }
                    for p in s.ports
                ],
            }
        )
        for s in switches
    ]


def list_switches(session: Session) -> list[SwitchOut]:
    return to_out(session, list(session.exec(select(Switch).order_by(Switch.name))))


def get_switch(session: Session, name: str) -> SwitchOut:
    return to_out(session, [_find(session, name)])[0]


def create_switch(
    session: Session, spec: SwitchIn, *, actor: str, request_id: str = ""
) -> SwitchOut:
    ensure_name_free(session, Switch, spec.name, kind="switch")
    rack_id = place(
        session,
        kind="switch",
        name=spec.name,
        rack=spec.rack,
        u_position=spec.u_position,
        u_height=spec.u_height,
    )
    switch = Switch(**spec.model_dump(exclude={"rack", "ports"}), rack_id=rack_id)
    switch.ports = [SwitchPort(**p.model_dump()) for p in spec.ports]
    session.add(switch)
    session.flush()
    audit(
        session,
        "switch_create",
        f"created switch {switch.name}",
        actor=actor,
        request_id=request_id,
    )
    return to_out(session, [switch])[0]


def _replace_ports(session: Session, switch: Switch, specs: list[PortIn]) -> None:
    """Keep ports that are named again (and their wiring), drop the rest unless wired."""
    wanted = {p.name: p for p in specs}
    wired = _wiring(session, [switch])
    dropped = [p for p in switch.ports if p.name not in wanted and p.id in wired]
    if dropped:
        port = dropped[0]
        machine, mac = wired[port.id]
        raise Conflict(
            f"port {switch.name}/{port.name} is wired to machine {machine} (NIC {mac}) "
            "and would be removed",
            hint=f"keep the port in the list, or unwire it first by PATCHing machine {machine}",
        )
    kept: list[SwitchPort] = []
    existing = {p.name: p for p in switch.ports}
    for spec in specs:
        port = existing.get(spec.name) or SwitchPort(name=spec.name, switch_id=switch.id or 0)
        port.vlan, port.description = spec.vlan, spec.description
        kept.append(port)
    switch.ports = kept


def update_switch(
    session: Session, name: str, patch: SwitchPatch, *, actor: str, request_id: str = ""
) -> SwitchOut:
    switch = _find(session, name)
    given = patch.model_fields_set
    if patch.name and patch.name != switch.name:
        ensure_name_free(session, Switch, patch.name, kind="switch")
    replace(session, switch, "switch", patch)
    apply_patch(switch, patch, skip=frozenset({"rack", "u_position", "ports"}))
    if patch.ports is not None:
        _replace_ports(session, switch, patch.ports)
    session.add(switch)
    session.flush()
    fields = sorted(given)
    audit(
        session,
        "switch_update",
        f"changed switch {switch.name}: {', '.join(fields)}",
        actor=actor,
        request_id=request_id,
        details={"fields": fields},
    )
    return to_out(session, [switch])[0]


def delete_switch(session: Session, name: str, *, actor: str, request_id: str = "") -> None:
    switch = _find(session, name)
    wired = _wiring(session, [switch])
    if wired:
        machines = sorted({machine for machine, _ in wired.values()})
        raise Conflict(
            f"switch {name} has {len(wired)} port(s) wired to machines: {', '.join(machines[:5])}",
            hint="unwire those NICs first (PATCH the machines' nics without these switch_port)",
        )
    audit(session, "switch_delete", f"deleted switch {name}", actor=actor, request_id=request_id)
    session.delete(switch)
    session.flush()
