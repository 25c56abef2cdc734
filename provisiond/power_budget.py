"""Rack power budgets: each rack's draw against its budget.

**A rack's draw** is the sum, over its machines, of one figure each:

============  ==============================================================
source        the figure, the first that applies
============  ==============================================================
``reserved``  a power-on admitted within :func:`fresh_s` and not yet read on:
              the draw it reserved, whatever the machine reads
``off``       the machine is known to be off: 0 W, whatever it drew before
``pdu``       the machine's PDU outlets (summed: a machine may have two PSUs),
              when *every* outlet of it on a PDU with a driver was read within
              :func:`fresh_s` and metered; an outlet meters everything behind
              it, so it wins over the BMC's own estimate
``bmc``       the BMC's last reading (DCMI or Redfish, stored by the power
              sync), when taken within :func:`fresh_s`
``declared``  no usable reading: the declared ``Machine.power_watts`` (0 W
              when none is declared; :class:`MachineDraw` says which)
============  ==============================================================

The nameplate (``declared_watts``) is the sum of every machine's declared
``power_watts``, whatever it draws now. A rack's verdict is ``ok``, ``over_90``
(draw above 90 % of the budget) or ``over_100``; "" when it has no budget.
:func:`update_racks` recomputes every rack after each power sync, stores
``Rack.measured_watts`` / ``measured_at`` / ``budget_status``, records one event
per verdict that changed and sets the metrics.

**Powering on** a machine is checked against its rack's budget by
:mod:`provisiond.power_admission`; the draw it admits counts as ``reserved`` (above).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import Any

from prometheus_client import Gauge
from sqlalchemy import and_, case, func, update
from sqlalchemy import select as sa_select
from sqlmodel import Session, col, select

from provisiond import events
from provisiond.container import Services
from provisiond.errors import Conflict, NotFound
from provisiond.events import EventKind
from provisiond.metrics import Metrics
from provisiond.models import Machine, Outlet, Pdu, Rack, utcnow

OVER_90 = 0.9
#: ``Machine.measured_source`` of a power-on's reserved draw (see admit_power_on).
RESERVED = "reserved"
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
    """How old a reading (or a reservation) may be and still count: three power syncs."""
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
    #: reserved | off | pdu | bmc | declared (see the module docstring)
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
    """machine id -> (watts over its outlets, when read), for machines whose every outlet
    on a PDU with a driver was read since ``since`` and metered.

    A machine with two PSUs on two PDUs, one of them down (or one outlet unmetered), has
    no figure here: half its draw is not its draw (it counts by its BMC, or as declared).
    """
    metered = and_(col(Outlet.power_watts).is_not(None), col(Pdu.power_read_at) >= since)
    rows = session.exec(
        select(
            Outlet.machine_id,
            func.sum(Outlet.power_watts),
            func.min(Pdu.power_read_at),
        )
        .join(Pdu, col(Pdu.id) == col(Outlet.pdu_id))
        .where(col(Outlet.machine_id).is_not(None), col(Pdu.driver) != "")
        .group_by(col(Outlet.machine_id))
        .having(func.count() == func.sum(case((metered, 1), else_=0)))
    ).all()
    return {
        int(mid): (int(watts), at)
        for mid, watts, at in rows
        if mid is not None and watts is not None and at is not None
    }


def _draw(row: Any, outlet: tuple[int, datetime] | None, since: datetime) -> MachineDraw:
    """One machine's figure: a live power-on reservation; off (0 W); its PDU outlets; its
    reading if fresh (a copied outlet reading only while its outlets still all read);
    else what it declares. A reading older than ``since`` says nothing about now."""
    _, name, _, power_state, declared, measured, source, at = row
    fresh = measured is not None and at is not None and at >= since
    if fresh and source == RESERVED:  # counts while the power-on is on its way
        return MachineDraw(name, power_state, measured, RESERVED, declared, at)
    if power_state == "off":
        return MachineDraw(name, power_state, 0, "off", declared, None)
    if outlet is not None:
        return MachineDraw(name, power_state, outlet[0], "pdu", declared, outlet[1])
    if fresh and source not in ("pdu", RESERVED):
        return MachineDraw(name, power_state, measured, source or "bmc", declared, at)
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
            racks[row[2]].add(_draw(row, outlets.get(row[0]), since))
    return list(racks.values())


def update_racks(services: Services, now: datetime | None = None) -> list[RackDraw]:
    """Recompute and store every rack's draw and verdict; an event per changed verdict."""
    now = now or utcnow()
    since = now - timedelta(seconds=fresh_s(services))
    with services.db.transaction() as session:
        outlets = outlet_readings(session, since)
        _store_outlet_readings(session, outlets, since)
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


def _store_outlet_readings(
    session: Session, outlets: dict[int, tuple[int, datetime]], since: datetime
) -> None:
    """Outlet readings become the machines' readings (source ``pdu``), where they differ.

    A live reservation stays until the machine is on and its outlets were read after it.
    """
    if not outlets:
        return
    current = session.execute(
        sa_select(
            col(Machine.id),
            col(Machine.power_state),
            col(Machine.measured_watts),
            col(Machine.measured_source),
            col(Machine.measured_at),
        ).where(col(Machine.id).in_(list(outlets)))
    ).all()
    for mid, power_state, watts, source, at in current:
        new_watts, new_at = outlets[mid or 0]
        live = source == RESERVED and at is not None and at >= since
        if live and (power_state != "on" or new_at < at):
            continue
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
