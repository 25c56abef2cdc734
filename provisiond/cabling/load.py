"""What the cabling check reads: the switches with their ports, and NICs with their plan.

A check of some machines also reads the machines on the other end of what they saw:
the owner of each port one of their NICs was seen on (so a swap with a machine outside
the set is still recognised and both sides get their verdict), and the machine a NIC
was last found swapped with (so that side is told when the swap is mended).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import ColumnElement, or_
from sqlmodel import Session, col, select

from provisiond.cabling.check import PlannedNic, SwitchIndex, SwitchInfo, identify
from provisiond.models import Machine, Nic, Switch, SwitchPort


@dataclass
class Fabric:
    """Every switch by name, and every port id as (switch, port) and back."""

    switches: dict[str, SwitchInfo]
    port_ref: dict[int, tuple[str, str]]
    port_id: dict[tuple[str, str], int]


def fabric(session: Session) -> Fabric:
    rows = session.execute(
        select(col(Switch.id), col(Switch.name), col(Switch.chassis_mac), col(Switch.mgmt_address))
    ).all()
    ports: dict[int, dict[str, str]] = {sid: {} for sid, *_ in rows}
    port_ref: dict[int, tuple[str, str]] = {}
    name_of = {sid: name for sid, name, *_ in rows}
    for pid, sid, name, description in session.execute(
        select(
            col(SwitchPort.id),
            col(SwitchPort.switch_id),
            col(SwitchPort.name),
            col(SwitchPort.description),
        )
    ):
        ports[sid][name] = description
        port_ref[pid] = (name_of[sid], name)
    switches = {
        name: SwitchInfo(name, chassis or "", mgmt or "", ports[sid])
        for sid, name, chassis, mgmt in rows
    }
    return Fabric(switches, port_ref, {ref: pid for pid, ref in port_ref.items()})


@dataclass
class Row:
    """A NIC as checked: the ORM rows (written back) and the check's view of it."""

    nic: Nic
    machine: Machine
    planned: PlannedNic


def nics(session: Session, where: ColumnElement[bool] | None, net: Fabric) -> list[Row]:
    """The NICs of the machines ``where`` selects (all when None), in machine, NIC order."""
    query = select(Nic, Machine).join(Machine, col(Machine.id) == col(Nic.machine_id))
    if where is not None:
        query = query.where(where)
    out = []
    for nic, machine in session.exec(query.order_by(col(Machine.name), col(Nic.id))).all():
        switch, port = net.port_ref.get(nic.switch_port_id or -1, (None, None))
        planned = PlannedNic(
            machine=machine.name,
            nic=nic.name,
            mac=nic.mac,
            switch=switch,
            port=port,
            seen=dict(nic.lldp or {}),
            pxe=nic.pxe,
        )
        out.append(Row(nic, machine, planned))
    return out


def others(session: Session, rows: Sequence[Row], net: Fabric) -> list[int]:
    """Ids of the machines outside ``rows`` on the other end of what their NICs saw."""
    ports: set[int] = set()
    macs: set[str] = set()
    index = SwitchIndex(net.switches)
    for row in rows:
        if row.planned.seen:
            switch, _, port = identify(row.planned.seen, index)
            if switch is not None and port is not None:
                ports.add(net.port_id[(switch.name, port)])
        swapped = (row.nic.cabling_detail or {}).get("swapped_with_mac")
        if isinstance(swapped, str):
            macs.add(swapped)
    if not ports and not macs:
        return []
    inside = {row.machine.id for row in rows}
    found = session.execute(
        select(col(Nic.machine_id))
        .where(or_(col(Nic.switch_port_id).in_(ports), col(Nic.mac).in_(macs)))
        .distinct()
    ).scalars()
    return sorted(mid for mid in found if mid not in inside)
