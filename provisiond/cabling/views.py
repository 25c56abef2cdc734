"""The API's view of the check: one row per NIC port, the swaps, and counts."""

from __future__ import annotations

from collections.abc import Sequence

from sqlmodel import Session, col

from provisiond.cabling.check import Outcome, Result, check
from provisiond.cabling.load import Row, fabric, nics, others
from provisiond.cabling.service import rack_condition
from provisiond.models import Machine
from provisiond.schemas.cabling import CablingOut, CablingPort


def current(session: Session, rack: str | None, *, policy: str) -> CablingOut:
    """The verdicts the plan and the stored neighbours give now (nothing is written)."""
    where = rack_condition(session, rack)
    net = fabric(session)
    rows = nics(session, where, net)
    extra = others(session, rows, net)
    everything = rows + (nics(session, col(Machine.id).in_(extra), net) if extra else [])
    outcome = check([r.planned for r in everything], net.switches)
    return to_out(rows, outcome, policy=policy)


def _port(row: Row, result: Result) -> CablingPort:
    seen, detail = row.planned.seen, result.detail
    actual = detail.get("actual") or {}
    return CablingPort(
        machine=row.machine.name,
        nic=row.nic.name,
        mac=row.nic.mac,
        pxe=row.nic.pxe,
        expected_switch=row.planned.switch,
        expected_port=row.planned.port,
        seen_system_name=str(seen.get("system_name", "")),
        seen_chassis_id=str(seen.get("chassis_id", "")),
        seen_port_id=str(seen.get("port_id", "")),
        seen_port_description=str(seen.get("port_description", "")),
        actual_switch=actual.get("switch"),
        actual_port=actual.get("port"),
        result=result.result,
        reason=str(detail.get("reason", "")),
        swapped_with=detail.get("swapped_with"),
        planned_for=detail.get("planned_for"),
        seen_at=row.nic.lldp_seen_at,
        hold_reason=row.machine.hold_reason,
    )


def to_out(rows: Sequence[Row], outcome: Outcome, *, policy: str) -> CablingOut:
    """Rows of ``rows`` (not of machines read only for their side of a swap) that have
    a planned port or a neighbour, with the swaps that involve them."""
    ports = [
        _port(row, result)
        for row, result in zip(rows, outcome.results, strict=False)
        if row.planned.switch is not None or row.planned.seen
    ]
    labels = {f"{p.machine} {p.nic or p.mac}" for p in ports}
    findings = [f for f in outcome.findings if labels.intersection(f["nics"])]
    counts = dict.fromkeys(("pass", "fail", "n/a"), 0)
    for port in ports:
        if port.result:
            counts[port.result] += 1
    return CablingOut(ports=ports, findings=findings, counts=counts, policy=policy)
