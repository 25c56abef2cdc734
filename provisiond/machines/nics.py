"""A machine's NICs: built from the API's or the inventory's spec, with their switch ports."""

from __future__ import annotations

from sqlmodel import Session, col, select

from provisiond.errors import Conflict, Problem, ValidationFailed
from provisiond.models import Machine, Nic, Switch, SwitchPort
from provisiond.schemas.resources import NicIn


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
