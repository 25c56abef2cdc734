"""The racks page: every rack side by side (or one), each as a front elevation.

Five queries whatever the number of racks and machines: the racks, their machines,
switches and PDUs, and the live allocations of those machines with their owners'
names. :mod:`provisiond.console.elevation` places and draws each rack.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import quote

from markupsafe import Markup
from sqlalchemy import ColumnElement
from sqlalchemy import select as sa_select
from sqlmodel import Session, col, select

from provisiond.allocations.states import LIVE_STATES
from provisiond.auth import Role
from provisiond.console import elevation
from provisiond.console.auth import ConsoleUser
from provisiond.console.elevation import Device, Layout, Placed, Power
from provisiond.errors import NotFound
from provisiond.lifecycle import State
from provisiond.models import Allocation, ApiToken, Machine, Pdu, Rack, Switch

#: What a ci user sees for a machine another token holds.
LEASED = "leased"
STATUS_WORDS = {"ok": "within budget", "over_90": "over 90% of budget", "over_100": "over budget"}


@dataclass(frozen=True)
class LegendItem:
    label: str
    colour: str
    count: int


@dataclass(frozen=True)
class RackView:
    name: str
    site: str
    u_height: int
    svg: Markup
    plan: Layout
    power: Power
    bar: Markup | None
    status: str
    measured_at: datetime | None
    legend: list[LegendItem]

    @property
    def href(self) -> str:
        return "/ui/racks/" + quote(self.name, safe="")

    @property
    def zero_u(self) -> list[Device]:
        return self.plan.zero_u

    @property
    def unplaced(self) -> list[Placed]:
        return self.plan.unplaced

    @property
    def conflicts(self) -> list[Placed]:
        return self.plan.conflicts

    @property
    def used_u(self) -> int:
        return len(self.plan.occupied)


def _owners(session: Session, user: ConsoleUser, in_racks: ColumnElement[bool]) -> dict[int, str]:
    """machine id -> its live allocation's owner, as ``user`` may see it (one query)."""
    rows = session.exec(
        select(Allocation.machine_id, Allocation.owner_token_id, ApiToken.name)
        .join(ApiToken, col(ApiToken.id) == col(Allocation.owner_token_id))
        .join(Machine, col(Machine.id) == col(Allocation.machine_id))
        .where(col(Allocation.state).in_(LIVE_STATES), in_racks)
        .order_by(col(Allocation.id))
    ).all()
    ci = user.role == Role.ci
    owners: dict[int, str] = {}
    for machine_id, owner_id, owner_name in rows:
        if machine_id is None:
            continue
        owners[machine_id] = LEASED if ci and owner_id != user.token.id else owner_name
    return owners


def _legend(plan: Layout) -> list[LegendItem]:
    """The states (and device kinds) drawn in this rack, in lifecycle order, counted."""
    states = Counter(d.state for d in plan.drawn if d.kind == "machine")
    kinds = Counter(d.kind for d in plan.drawn if d.kind != "machine")
    order = [s.value for s in State] + sorted(set(states) - {s.value for s in State})
    items = [
        LegendItem(state, elevation.fill_of("machine", state), states[state])
        for state in order
        if states[state]
    ]
    items += [
        LegendItem(kind, elevation.fill_of(kind, ""), kinds[kind])
        for kind in ("switch", "pdu")
        if kinds[kind]
    ]
    return items


def build(session: Session, user: ConsoleUser, name: str | None) -> dict[str, Any]:
    query = select(Rack).order_by(col(Rack.name))
    if name is not None:
        query = query.where(Rack.name == name)
    racks = session.exec(query).all()
    if name is not None and not racks:
        raise NotFound(
            f"no rack named {name[:64]!r}",
            hint="see /ui/racks for every rack; racks come from `provisiond inventory apply`",
        )
    if not racks:
        return {"racks": [], "single": None}
    ids = [rack.id for rack in racks]
    machine_rack = (
        col(Machine.rack_id).in_(ids) if name is not None else col(Machine.rack_id).is_not(None)
    )
    devices: dict[int | None, list[Device]] = {rack_id: [] for rack_id in ids}
    owners = _owners(session, user, machine_rack)
    for mid, m_name, rack_id, u, height, state, power in session.execute(
        sa_select(
            col(Machine.id),
            col(Machine.name),
            col(Machine.rack_id),
            col(Machine.u_position),
            col(Machine.u_height),
            col(Machine.state),
            col(Machine.power_state),
        ).where(machine_rack)
    ).all():
        owner = owners.get(mid or 0, "")
        devices.setdefault(rack_id, []).append(
            Device("machine", m_name, u, height, state=state, power=power, owner=owner)
        )
    for kind, model in (("switch", Switch), ("pdu", Pdu)):
        rack_col = col(model.rack_id)
        for d_name, rack_id, u, height in session.exec(
            select(model.name, model.rack_id, model.u_position, model.u_height).where(
                rack_col.in_(ids) if name is not None else rack_col.is_not(None)
            )
        ).all():
            devices.setdefault(rack_id, []).append(Device(kind, d_name, u, height))
    views = []
    for rack in racks:
        plan = elevation.layout(rack.u_height, devices.get(rack.id, []))
        power = Power.of(rack.measured_watts, rack.power_budget_watts)
        views.append(
            RackView(
                name=rack.name,
                site=rack.site,
                u_height=rack.u_height,
                svg=elevation.rack_svg(rack.name, plan),
                plan=plan,
                power=power,
                bar=elevation.power_bar(power),
                status=STATUS_WORDS.get(rack.budget_status, rack.budget_status),
                measured_at=rack.measured_at,
                legend=_legend(plan),
            )
        )
    return {"racks": views, "single": views[0] if name is not None else None}
