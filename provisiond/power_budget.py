"""Rack power budgets: each rack's draw against its budget, and the power-on check.

**A rack's draw** is the sum, over its machines, of one figure each:

==========  ================================================================
source      the figure
==========  ================================================================
``pdu``     the machine's PDU outlets (summed: a machine may have two PSUs),
            when their PDU was read within :func:`fresh_s`; an outlet meters
            everything behind it, so it wins over the BMC's own estimate
``bmc``     the BMC's last reading (DCMI or Redfish, stored by the power sync)
``off``     no reading, and the machine is known to be off: 0 W
``declared``  no reading: the declared ``Machine.power_watts`` (0 W when none
            is declared; :class:`MachineDraw` says which)
==========  ================================================================

The nameplate (``declared_watts``) is the sum of every machine's declared
``power_watts``, whatever it draws now. A rack's verdict is ``ok``, ``over_90``
(draw above 90 % of the budget) or ``over_100``; "" when it has no budget.
:func:`update_racks` recomputes every rack after each power sync, stores
``Rack.measured_watts`` / ``measured_at`` / ``budget_status``, records one event
per verdict that changed and sets the metrics.

**Powering on** a machine that is not on (:func:`admit_power_on`) adds its
expected draw, the larger of its declared ``power_watts`` and its last reading,
to its rack's. When that would pass the budget, the power-on is refused
(:class:`OverBudget`, 409) unless an admin forces it. The admission is one
conditional UPDATE that also adds the draw to ``Rack.measured_watts``, so two
power-ons racing for the last headroom cannot both pass; the reservation lasts
until the next recompute replaces it with what the meters then read. The deploy
engine's power step goes through the same check: a deploy whose power-on is
refused fails with that reason (allocation itself does not look at budgets).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import Any

from prometheus_client import Gauge
from sqlalchemy import case, func, or_, update
from sqlalchemy import select as sa_select
from sqlmodel import Session, col, select

from provisiond import events
from provisiond.container import Services
from provisiond.errors import Conflict, NotFound
from provisiond.events import EventKind
from provisiond.metrics import Metrics
from provisiond.models import Machine, Outlet, Pdu, Rack, utcnow

OVER_90 = 0.9
#: The machine fields every draw figure is made from, in this order.
_COLUMNS = [
    col(Machine.id),
    col(Machine.name),
    col(Machine.rack_id),
    col(Machine.power_state),
    col(Machine.power_watts),
    col(Machine.measured_watts),
    col(Machine.measured_source),
    col(Machine.measured_at),
]


class OverBudget(Conflict):
    code = "rack_over_budget"


def fresh_s(services: Services) -> float:
    """How old a PDU reading may be and still win: three power syncs."""
    return 3 * services.settings.power_sync_interval_s


def status_for(draw: int, budget: int | None) -> str:
    if budget is None:
        return ""
    if draw > budget:
        return "over_100"
    return "over_90" if draw > OVER_90 * budget else "ok"


@dataclass
class MachineDraw:
    name: str
    power_state: str
    watts: int
    #: pdu | bmc | off | declared (see the module docstring)
    source: str
    declared_watts: int | None
    measured_at: datetime | None


@dataclass
class RackDraw:
    rack: str
    budget_watts: int | None
    measured_watts: int = 0
    declared_watts: int = 0
    #: How many machines each source counted (e.g. {"bmc": 30, "declared": 2}).
    counted: dict[str, int] = field(default_factory=dict)
    machines: list[MachineDraw] = field(default_factory=list)

    @property
    def budget_status(self) -> str:
        return status_for(self.measured_watts, self.budget_watts)

    def add(self, machine: MachineDraw) -> None:
        self.measured_watts += machine.watts
        self.declared_watts += machine.declared_watts or 0
        self.counted[machine.source] = self.counted.get(machine.source, 0) + 1
        self.machines.append(machine)

    def to_dict(self) -> dict[str, Any]:
        body = asdict(self)
        body["budget_status"] = self.budget_status
        body["headroom_watts"] = (
            None if self.budget_watts is None else self.budget_watts - self.measured_watts
        )
        return body


def outlet_readings(session: Session, since: datetime) -> dict[int, tuple[int, datetime]]:
    """machine id -> (watts over its metered outlets, when read), of PDUs read since ``since``."""
    rows = session.exec(
        select(Outlet.machine_id, func.sum(Outlet.power_watts), func.min(Pdu.power_read_at))
        .join(Pdu, col(Pdu.id) == col(Outlet.pdu_id))
        .where(col(Outlet.machine_id).is_not(None), col(Outlet.power_watts).is_not(None))
        .where(col(Pdu.power_read_at) >= since)
        .group_by(col(Outlet.machine_id))
    ).all()
    return {
        int(mid): (int(watts), at)
        for mid, watts, at in rows
        if mid is not None and watts is not None and at is not None
    }


def _draw(row: Any, outlet: tuple[int, datetime] | None) -> MachineDraw:
    _, name, _, power_state, declared, measured, source, at = row
    if outlet is not None:
        return MachineDraw(name, power_state, outlet[0], "pdu", declared, outlet[1])
    if measured is not None:
        return MachineDraw(name, power_state, measured, source or "bmc", declared, at)
    if power_state == "off":
        return MachineDraw(name, power_state, 0, "off", declared, None)
    return MachineDraw(name, power_state, declared or 0, "declared", declared, None)


def rack_draws(session: Session, since: datetime, rack_id: int | None = None) -> list[RackDraw]:
    """Every rack's draw now (or only ``rack_id``'s), from the machine rows and outlets."""
    query = select(Rack).order_by(col(Rack.name))
    machines = sa_select(*_COLUMNS).where(col(Machine.rack_id).is_not(None))
    if rack_id is not None:
        query = query.where(col(Rack.id) == rack_id)
        machines = machines.where(col(Machine.rack_id) == rack_id)
    racks = {rack.id: RackDraw(rack.name, rack.power_budget_watts) for rack in session.exec(query)}
    outlets = outlet_readings(session, since)
    for row in session.execute(machines.order_by(col(Machine.name))).all():
        if row[2] in racks:
            racks[row[2]].add(_draw(row, outlets.get(row[0])))
    return list(racks.values())


def update_racks(services: Services, now: datetime | None = None) -> list[RackDraw]:
    """Recompute and store every rack's draw and verdict; an event per changed verdict."""
    now = now or utcnow()
    since = now - timedelta(seconds=fresh_s(services))
    with services.db.transaction() as session:
        outlets = outlet_readings(session, since)
        _store_outlet_readings(session, outlets)
        before = {
            rack_id: (name, status)
            for rack_id, name, status in session.exec(
                select(Rack.id, Rack.name, Rack.budget_status)
            ).all()
        }
        draws = rack_draws(session, since)
        by_name = {name: rack_id for rack_id, (name, _) in before.items()}
        noted = []
        for draw in draws:
            rack_id = by_name[draw.rack]
            session.execute(
                update(Rack)
                .where(col(Rack.id) == rack_id)
                .values(
                    measured_watts=draw.measured_watts,
                    measured_at=now,
                    budget_status=draw.budget_status,
                )
                .execution_options(synchronize_session=False)
            )
            old = before[rack_id][1]
            if draw.budget_status != old:
                noted.append(_status_event(draw, old))
        events.record_many(session, noted)
    publish(services.metrics, draws)
    return draws


def _store_outlet_readings(session: Session, outlets: dict[int, tuple[int, datetime]]) -> None:
    """Outlet readings become the machines' readings (source ``pdu``), where they differ."""
    if not outlets:
        return
    current = session.exec(
        select(
            Machine.id, Machine.measured_watts, Machine.measured_source, Machine.measured_at
        ).where(col(Machine.id).in_(list(outlets)))
    ).all()
    for mid, watts, source, at in current:
        new_watts, new_at = outlets[mid or 0]
        if (watts, source, at) != (new_watts, "pdu", new_at):
            session.execute(
                update(Machine)
                .where(col(Machine.id) == mid)
                .values(measured_watts=new_watts, measured_source="pdu", measured_at=new_at)
                .execution_options(synchronize_session=False)
            )


def _status_event(draw: RackDraw, old: str) -> tuple[EventKind, str, dict[str, Any]]:
    budget = draw.budget_watts
    words = {"ok": "within budget", "over_90": "over 90% of budget", "over_100": "over budget"}
    verdict = words.get(draw.budget_status, "without a budget")
    message = f"rack {draw.rack} {verdict}: {draw.measured_watts} W" + (
        f" of {budget} W" if budget is not None else ""
    )
    details = {
        "rack": draw.rack,
        "from": old,
        "to": draw.budget_status,
        "measured_watts": draw.measured_watts,
        "budget_watts": budget,
        "counted": draw.counted,
    }
    fields = {"actor": "power_sync", "message": message, "details": details}
    return EventKind.POWER, "rack_budget_status", fields


def publish(metrics: Metrics, draws: list[RackDraw]) -> None:
    """Per-rack gauges (stale racks removed), racks over 90/100 %, per-machine histogram."""
    names = {draw.rack for draw in draws}
    for gauge in (metrics.rack_measured_watts, metrics.rack_budget_watts):
        for gone in _labels(gauge) - names:  # a rack deleted or renamed
            gauge.remove(gone)
    for draw in draws:
        metrics.rack_measured_watts.labels(draw.rack).set(draw.measured_watts)
        if draw.budget_watts is not None:
            metrics.rack_budget_watts.labels(draw.rack).set(draw.budget_watts)
        elif draw.rack in _labels(metrics.rack_budget_watts):
            metrics.rack_budget_watts.remove(draw.rack)
        for machine in draw.machines:
            if machine.source in ("bmc", "pdu"):
                metrics.machine_measured_watts.observe(machine.watts)
    for level in ("over_90", "over_100"):
        over = sum(1 for draw in draws if draw.budget_status == level)
        metrics.racks_over_budget.labels(level).set(over)


def _labels(gauge: Gauge) -> set[str]:
    return {sample.labels["rack"] for metric in gauge.collect() for sample in metric.samples}


# --- the power-on check -----------------------------------------------------------


def admit_power_on(
    services: Services, ident: str, *, force: bool, actor: str, request_id: str = ""
) -> str:
    """Admit powering on machine ``ident`` (name or uuid) against its rack's budget.

    Returns a note ("" when there is nothing to say); raises :class:`OverBudget` when
    the rack would pass its budget and ``force`` is not set. A machine already on, or
    in a rack without a budget, is always admitted.
    """
    now = utcnow()
    since = now - timedelta(seconds=fresh_s(services))
    with services.db.transaction() as session:
        named = or_(col(Machine.name) == ident, col(Machine.uuid) == ident)
        machine = session.exec(select(Machine).where(named)).first()
        if machine is None or machine.rack_id is None or machine.power_state == "on":
            return ""
        rack = session.get(Rack, machine.rack_id)
        if rack is None or rack.power_budget_watts is None:
            return ""
        budget, rack_name, name = rack.power_budget_watts, rack.name, machine.name
        machine_id = machine.id
        draw = rack_draws(session, since, rack.id)[0]
        own = next(m for m in draw.machines if m.name == name)
        adds = max(machine.power_watts or 0, machine.measured_watts or 0)
        extra = max(0, adds - own.watts)
        live = draw.measured_watts
        stored = func.coalesce(col(Rack.measured_watts), 0)
        base = case((stored > live, stored), else_=live)
        reserve = update(Rack).where(col(Rack.id) == rack.id)
        if not force:  # checked and reserved in one statement: racing power-ons queue here
            reserve = reserve.where(base + extra <= col(Rack.power_budget_watts))
        admitted = session.execute(
            reserve.values(measured_watts=base + extra, measured_at=now).execution_options(
                synchronize_session=False
            )
        )
        projected = max(live, rack.measured_watts or 0) + extra
        why = _reason(rack_name, budget, projected, draw, name, adds, machine.power_watts)
        won = admitted.rowcount == 1  # type: ignore[attr-defined]
        if won and projected <= budget:
            return ""
        if won:  # forced
            events.record(
                session,
                EventKind.POWER,
                "power_on_over_budget_forced",
                machine=machine,
                actor=actor,
                request_id=request_id,
                message=f"forced: {why}",
                details={"rack": rack_name, "projected_watts": projected, "budget_watts": budget},
            )
            return f"forced over the rack budget: {why}"
    with services.db.transaction() as session:
        events.record(
            session,
            EventKind.POWER,
            "power_on_refused_over_budget",
            machine_id=machine_id,
            machine_name=name,
            actor=actor,
            request_id=request_id,
            message=why,
            details={"rack": rack_name, "projected_watts": projected, "budget_watts": budget},
        )
    raise OverBudget(
        f"power-on refused: {why}",
        hint=f"power off something in rack {rack_name}, or raise its power_budget_watts; "
        f"an admin can force it with force=true (CLI: machines power {name} on --force)",
    )


def _reason(
    rack: str,
    budget: int,
    projected: int,
    draw: RackDraw,
    machine: str,
    adds: int,
    declared: int | None,
) -> str:
    counted = ", ".join(f"{n} {source}" for source, n in sorted(draw.counted.items()))
    how = (
        "its declared power_watts"
        if declared is not None and adds == declared
        else ("its last reading" if adds else "no declared power_watts or reading: 0 W")
    )
    return (
        f"rack {rack} would draw {projected} W of its {budget} W budget "
        f"(now {draw.measured_watts} W: machines counted {counted}; "
        f"{machine} adds {adds} W, {how})"
    )


# --- views ------------------------------------------------------------------------


def rack_power(services: Services, session: Session, name: str) -> dict[str, Any]:
    rack = session.exec(select(Rack).where(col(Rack.name) == name)).first()
    if rack is None:
        raise NotFound(f"no rack named {name!r}", hint="list racks with: provisiond racks list")
    since = utcnow() - timedelta(seconds=fresh_s(services))
    body = rack_draws(session, since, rack.id)[0].to_dict()
    body["stored_watts"], body["stored_at"] = rack.measured_watts, rack.measured_at
    return body


def declared_by_rack(session: Session) -> dict[int, int]:
    rows = session.exec(
        select(Machine.rack_id, func.coalesce(func.sum(Machine.power_watts), 0))
        .where(col(Machine.rack_id).is_not(None))
        .group_by(col(Machine.rack_id))
    ).all()
    return {int(rack_id): int(total or 0) for rack_id, total in rows if rack_id is not None}
