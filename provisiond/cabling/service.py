"""The cabling check as the daemon runs it: after each inventory report, and on demand.

:func:`record_report` stores the neighbour each NIC saw (``Nic.lldp``, ``lldp_seen_at``)
from an agent's inventory report, then checks that machine. :func:`run` checks a rack
or every machine from the stored neighbours. Both write each NIC's verdict
(``Nic.cabling``, ``cabling_detail``); a verdict that changes is an event
(kind ``cabling``), with the expected and the actual neighbour in its details.

A report is the machine's view at that moment: a NIC it lists no neighbour for has
its stored neighbour cleared (an unplugged cable must not keep passing).

Policy (``Settings.cabling_policy``): ``warn`` records only. ``hold`` also holds a
machine whose PXE NIC fails out of allocation: ``Machine.hold_reason`` gets
``"cabling: eth0 expected sw1/swp1, saw sw1/swp2 (swapped with vm2 eth0)"``, and a
later check that does not fail clears it. Only holds this check set (the
``cabling:`` prefix) are ever changed here.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import ColumnElement, func
from sqlmodel import Session, col, select

from provisiond import events
from provisiond.cabling import lldp
from provisiond.cabling.check import FAIL, PASS, Outcome, Result, check
from provisiond.cabling.load import Fabric, Row, fabric, nics, others
from provisiond.crud import get_by_name
from provisiond.events import EventKind
from provisiond.metrics import Metrics
from provisiond.models import Machine, Nic, Rack, utcnow

#: Every hold this check sets starts with it; no other hold is touched.
HOLD_PREFIX = "cabling: "
HOLD_MAX = 512
#: Refused LLDP entries named in one event, at most.
MAX_REFUSED_SHOWN = 20
EVENT_OF = {"pass": "cabling_pass", "fail": "cabling_fail", "n/a": "cabling_unverified"}


def record_report(
    session: Session,
    machine: Machine,
    entries: Sequence[Any],
    interfaces: dict[str, str],
    *,
    policy: str,
    metrics: Metrics,
    actor: str,
) -> Outcome:
    """Store the neighbours of an inventory report (``interfaces``: reported NIC name ->
    MAC, for agents that name only the interface) and check the machine."""
    now = utcnow()
    by_mac: dict[str, dict[str, Any]] = {}
    refused: list[dict[str, Any]] = []
    names = {n.name: n.mac for n in machine.nics if n.name}
    for index, entry in enumerate(entries):
        try:
            seen = lldp.normalise(entry)
        except lldp.Refused as exc:
            refused.append({"index": index, "reason": str(exc)})
            continue
        mac = seen["mac"] or interfaces.get(seen["interface"]) or names.get(seen["interface"], "")
        if mac and mac not in by_mac:  # a second neighbour on one NIC: the first is kept
            by_mac[mac] = {**seen, "mac": mac}
    if refused:
        events.record(
            session,
            EventKind.CABLING,
            "lldp_refused",
            flush=False,
            machine=machine,
            actor=actor,
            message=f"{len(refused)} LLDP entries of the inventory report were not taken: "
            + "; ".join(f"#{r['index']}: {r['reason']}" for r in refused[:3]),
            details={"refused": refused[:MAX_REFUSED_SHOWN], "count": len(refused)},
        )
    for nic in machine.nics:
        found = by_mac.get(nic.mac)
        if found is not None:
            nic.lldp, nic.lldp_seen_at = found, now
        elif nic.lldp or nic.lldp_seen_at is not None:
            nic.lldp, nic.lldp_seen_at = {}, None
        session.add(nic)
    session.flush()
    assert machine.id is not None
    return _check(
        session, col(Machine.id) == machine.id, policy=policy, metrics=metrics, actor=actor
    )


def rack_condition(session: Session, rack: str | None) -> ColumnElement[bool] | None:
    """The machines of ``rack`` (404 for an unknown rack), or None for all."""
    if not rack:
        return None
    found = get_by_name(session, Rack, rack, kind="rack")
    return col(Machine.rack_id) == found.id


def run(
    session: Session,
    rack: str | None,
    *,
    policy: str,
    metrics: Metrics,
    actor: str,
    request_id: str = "",
) -> tuple[Outcome, list[Row]]:
    """Check the machines of ``rack`` (all when None) from their stored neighbours and
    record the verdicts; returns the outcome and the rows of that rack."""
    where = rack_condition(session, rack)
    net = fabric(session)
    rows = nics(session, where, net)
    outcome = _check_rows(
        session, rows, net, policy=policy, metrics=metrics, actor=actor, request_id=request_id
    )
    return outcome, rows


def check_machines(
    session: Session, ids: Sequence[int], *, policy: str, metrics: Metrics, actor: str
) -> Outcome:
    """Check the machines ``ids`` (after their planned ports changed)."""
    return _check(
        session, col(Machine.id).in_(list(ids)), policy=policy, metrics=metrics, actor=actor
    )


def _check(
    session: Session,
    where: ColumnElement[bool],
    *,
    policy: str,
    metrics: Metrics,
    actor: str,
) -> Outcome:
    net = fabric(session)
    rows = nics(session, where, net)
    return _check_rows(session, rows, net, policy=policy, metrics=metrics, actor=actor)


def _check_rows(
    session: Session,
    rows: list[Row],
    net: Fabric,
    *,
    policy: str,
    metrics: Metrics,
    actor: str,
    request_id: str = "",
) -> Outcome:
    extra = others(session, rows, net)
    everything = rows + (nics(session, col(Machine.id).in_(extra), net) if extra else [])
    outcome = check([r.planned for r in everything], net.switches)
    batch = events.Batch()
    pxe: dict[int, list[Result]] = {}  # the checked PXE NICs' results, per machine
    for row, result in zip(everything, outcome.results, strict=True):
        _write(row, result, batch, actor=actor, request_id=request_id)
        session.add(row.nic)
        pxe.setdefault(row.machine.id or 0, [])
        if result.result and row.nic.pxe:
            pxe[row.machine.id or 0].append(result)
    machines = {row.machine.id: row.machine for row in everything}
    for mid, results in pxe.items():
        _hold(machines[mid], results, policy, batch, actor=actor, request_id=request_id)
        session.add(machines[mid])
    session.flush()
    batch.write(session)
    refresh_metrics(session, metrics)
    return outcome


def _signature(result: str, detail: dict[str, Any]) -> tuple[str, str]:
    return result, str(detail.get("reason", "")) if result else ""


def _write(row: Row, result: Result, batch: events.Batch, *, actor: str, request_id: str) -> None:
    nic, detail = row.nic, (result.detail if result.result else {})
    before = _signature(nic.cabling, nic.cabling_detail or {})
    if nic.cabling == result.result and (nic.cabling_detail or {}) == detail:
        return
    nic.cabling, nic.cabling_detail = result.result, detail
    if before == _signature(result.result, detail):
        return  # the same verdict for the same reason (a later seen_at, say): no event
    label = result.nic.nic or result.nic.mac
    batch.add(
        EventKind.CABLING,
        EVENT_OF.get(result.result, "cabling_unchecked"),
        machine=row.machine,
        actor=actor,
        request_id=request_id,
        message=f"{label}: {result.result or 'not checked'} "
        f"({detail.get('reason', 'no planned port')})",
        details={
            "nic": result.nic.nic,
            "mac": result.nic.mac,
            "from": before[0],
            "to": result.result,
            "expected": detail.get("expected"),
            "actual": detail.get("actual"),
            "swapped_with": detail.get("swapped_with"),
            "reason": detail.get("reason", ""),
        },
    )


def _hold(
    machine: Machine,
    pxe: list[Result],
    policy: str,
    batch: events.Batch,
    *,
    actor: str,
    request_id: str,
) -> None:
    """Set, change or clear the machine's cabling hold from its PXE NICs' results: a
    fail holds it (policy "hold"); only a pass clears the hold (``n/a``, a pulled cable
    or a switch that says nothing, proves nothing); policy "warn" holds nothing."""
    current = machine.hold_reason or ""
    if current and not current.startswith(HOLD_PREFIX):
        return  # another check's hold: not ours to change
    failing = [r for r in pxe if r.result == FAIL]
    wanted = ""
    if policy == "hold" and failing:
        parts = [f"{r.nic.nic or r.nic.mac} {r.detail.get('reason', '')}" for r in failing]
        wanted = (HOLD_PREFIX + "; ".join(parts))[:HOLD_MAX]
    elif policy == "hold" and current and not (pxe and all(r.result == PASS for r in pxe)):
        return  # held until the PXE NIC passes
    if wanted == current:
        return
    machine.hold_reason = wanted
    batch.add(
        EventKind.CABLING,
        "hold_set" if wanted else "hold_cleared",
        machine=machine,
        actor=actor,
        request_id=request_id,
        message=f"held out of allocation: {wanted}" if wanted else f"hold cleared (was: {current})",
        details={"hold_reason": wanted, "was": current, "policy": policy},
    )


def refresh_metrics(session: Session, metrics: Metrics) -> dict[str, int]:
    """Set the cabling gauges from the stored verdicts (one grouped count)."""
    counts = dict.fromkeys(("pass", "fail", "n/a"), 0)
    for result, count in session.execute(
        select(col(Nic.cabling), func.count())
        .where(col(Nic.cabling) != "")
        .group_by(col(Nic.cabling))
    ):
        counts[result] = count
    for result, count in counts.items():
        metrics.cabling_ports.labels(result).set(count)
    metrics.cabling_failing_ports.set(counts["fail"])
    return counts
