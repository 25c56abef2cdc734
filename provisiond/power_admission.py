"""The power-on check against a rack's budget (:mod:`provisiond.power_budget` says how
a rack's draw is counted).

Powering on a machine that is not on adds its expected draw, the larger of its declared
``power_watts`` and its last reading, to its rack's. When that would pass the budget,
the power-on is refused (:class:`~provisiond.power_budget.OverBudget`, 409) unless an
admin forces it. The admission is one conditional UPDATE that also adds the draw to
``Rack.measured_watts``, so two power-ons racing for the last headroom cannot both
pass; the admitted draw is also reserved on the machine's row (``measured_source``
``reserved``, ``measured_at`` now), which :func:`power_budget.rack_draws` counts, even
while the machine still reads off, until a reading of it on replaces it or it is
:func:`power_budget.fresh_s` old: a recompute (``update_racks``) while the BMC is still
powering it on does not hand its headroom to another power-on.
"""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import case, func, or_, update
from sqlmodel import col, select

from provisiond import events
from provisiond.container import Services
from provisiond.events import EventKind
from provisiond.models import Machine, Rack, utcnow
from provisiond.power_budget import RESERVED, OverBudget, RackDraw, fresh_s, rack_draws


def admit_power_on(
    services: Services,
    ident: str,
    *,
    force: bool,
    actor: str,
    request_id: str = "",
    read_state: str = "",
) -> str:
    """Admit powering on machine ``ident`` (name or uuid) against its rack's budget.

    Returns a note ("" when there is nothing to say); raises :class:`OverBudget` when
    the rack would pass its budget and ``force`` is not set. A machine already on (as
    ``read_state`` says when the caller just read it from the BMC, else as recorded),
    or in a rack without a budget, is always admitted.

    An admitted machine's draw is reserved on its row (``measured_source`` ``reserved``,
    ``measured_at`` now): :func:`rack_draws` counts it, even while the machine still
    reads off, until a reading of it on replaces it or it is :func:`fresh_s` old. So a
    recompute during the BMC call does not hand its headroom to another power-on.
    """
    now = utcnow()
    since = now - timedelta(seconds=fresh_s(services))
    with services.db.transaction() as session:
        named = or_(col(Machine.name) == ident, col(Machine.uuid) == ident)
        machine = session.exec(select(Machine).where(named)).first()
        state = read_state or (machine.power_state if machine is not None else "")
        if machine is None or machine.rack_id is None or state == "on":
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
        if won:
            session.execute(
                update(Machine)
                .where(col(Machine.id) == machine_id)
                .values(measured_watts=adds, measured_source=RESERVED, measured_at=now)
                .execution_options(synchronize_session=False)
            )
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
