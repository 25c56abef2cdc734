"""The overview page: what needs an operator's eye, on one screen.

Seven queries whatever the size of the fleet: machines by state (one GROUP BY), the
pending queue (positions by a window function, so a ci user's rows keep their place
in the whole queue), the leases, the failed machines with their newest deploy failure,
the racks over 90 % of budget, the failing NICs and the held machines. Long sections
stop at :data:`ROWS` rows; a window count in the same query says how many there are.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Generic, TypeVar
from urllib.parse import quote

from sqlalchemy import Row, func
from sqlalchemy import select as sa_select
from sqlmodel import Session, col, select

from provisiond.allocations.states import AllocationState
from provisiond.auth import Role
from provisiond.console.auth import ConsoleUser
from provisiond.console.render import STATE_COLOURS
from provisiond.lifecycle import State
from provisiond.models import Allocation, ApiToken, Deployment, Machine, Nic, Rack

#: Rows per section at most (the rest is counted, not listed).
ROWS = 25
#: The number of rows a listing query matched, before its LIMIT (a window count).
TOTAL = func.count().over().label("total")
FAILED_STATES = (State.DEPLOY_FAILED, State.INSPECT_FAILED, State.RELEASE_FAILED)
LEASE_STATES = (AllocationState.DEPLOYING, AllocationState.READY)
T = TypeVar("T")


def machine_href(name: str) -> str:
    return "/ui/machines/" + quote(name, safe="")


def _text(value: Any) -> str:
    return "" if value is None else str(value)


@dataclass(frozen=True)
class Listed(Generic[T]):
    """A section's first :data:`ROWS` rows and how many there are in all."""

    rows: list[T]
    total: int

    @property
    def more(self) -> int:
        return self.total - len(self.rows)


def _total(rows: Sequence[Row[Any]]) -> int:
    """The window count every listing query carries last (0 when there are no rows)."""
    return int(rows[0][-1]) if rows else 0


@dataclass(frozen=True)
class StateCount:
    state: str
    count: int
    colour: str

    @property
    def href(self) -> str:
        return "/ui/machines?state=" + quote(self.state, safe="")


@dataclass(frozen=True)
class Queued:
    position: int
    uuid: str
    owner: str
    wants: str
    created_at: datetime
    attempts: int


@dataclass(frozen=True)
class Lease:
    uuid: str
    state: str
    owner: str
    machine: str
    expires_at: datetime | None
    lease_s: int

    @property
    def href(self) -> str:
        return machine_href(self.machine) if self.machine else ""


@dataclass(frozen=True)
class Failed:
    name: str
    state: str
    reason: str
    phase: str
    at: datetime

    @property
    def href(self) -> str:
        return machine_href(self.name)


@dataclass(frozen=True)
class HotRack:
    name: str
    measured: int | None
    budget: int | None
    status: str
    measured_at: datetime | None

    @property
    def percent(self) -> int | None:
        if self.measured is None or not self.budget:
            return None
        return round(100 * self.measured / self.budget)

    @property
    def href(self) -> str:
        return "/ui/racks/" + quote(self.name, safe="")


@dataclass(frozen=True)
class Miscabled:
    machine: str
    nic: str
    expected: str
    seen: str
    reason: str
    note: str

    @property
    def href(self) -> str:
        return machine_href(self.machine)


@dataclass(frozen=True)
class Held:
    name: str
    state: str
    reason: str

    @property
    def href(self) -> str:
        return machine_href(self.name)


def wants(constraints: Any) -> str:
    """An allocation's constraints in a few words ("any machine" when none)."""
    if not isinstance(constraints, Mapping):
        return "any machine"
    parts: list[str] = []
    labels = (
        ("arch", "{}"),
        ("min_cpus", "\u2265{} CPUs"),
        ("min_ram_mib", "\u2265{} MiB RAM"),
        ("min_disk_gb", "\u2265{} GB disk"),
        ("rack", "rack {}"),
        ("site", "site {}"),
    )
    for key, label in labels:
        if constraints.get(key) not in (None, ""):
            parts.append(label.format(_text(constraints[key])))
    tags = constraints.get("tags")
    if isinstance(tags, list) and tags:
        parts.append("tags " + ", ".join(_text(t) for t in tags))
    names = constraints.get("names")
    if isinstance(names, list) and names:
        shown = ", ".join(_text(n) for n in names[:3])
        parts.append("one of " + shown + (f" (+{len(names) - 3})" if len(names) > 3 else ""))
    return "; ".join(parts) or "any machine"


def failure_text(last_error: Any, deploy_reason: str | None) -> tuple[str, str]:
    """(reason, phase) of a failed machine: ``last_error``'s message or reason as
    :func:`provisiond.lifecycle.advance` wrote it, else the newest deploy's."""
    if isinstance(last_error, Mapping):
        for key in ("message", "reason"):
            text = _text(last_error.get(key)).strip()
            if text:
                return text, _text(last_error.get("phase"))
        phase = _text(last_error.get("phase"))
    else:
        phase = ""
        if isinstance(last_error, str) and last_error.strip():
            return last_error.strip(), phase
    return (deploy_reason or "").strip() or "no reason recorded", phase


def _neighbour(side: Any, keys: tuple[str, ...]) -> str:
    if not isinstance(side, Mapping):
        return ""
    return next((_text(side.get(k)) for k in keys if side.get(k)), "")


def cabling_text(detail: Any) -> tuple[str, str, str, str]:
    """(expected, seen, reason, note) of a NIC's cabling verdict (the detail
    :mod:`provisiond.cabling.check` writes); the note names a swap's other NIC."""
    if not isinstance(detail, Mapping):
        return "", "", "", ""
    expected_side, actual = detail.get("expected"), detail.get("actual")
    expected = ""
    if isinstance(expected_side, Mapping) and expected_side.get("switch"):
        expected = f"{_text(expected_side.get('switch'))}/{_text(expected_side.get('port'))}"
    seen = ""
    if isinstance(actual, Mapping):
        switch = _neighbour(actual, ("switch", "system_name", "chassis_id")) or "?"
        port = _neighbour(actual, ("port", "port_id", "port_description")) or "?"
        seen = f"{switch}/{port}"
    note = ""
    if detail.get("swapped_with"):
        note = f"swapped with {_text(detail['swapped_with'])}"
    elif detail.get("planned_for"):
        note = f"on the port planned for {_text(detail['planned_for'])}"
    return expected, seen, _text(detail.get("reason")), note


def _states(session: Session) -> list[StateCount]:
    counts = dict(
        session.exec(select(Machine.state, func.count()).group_by(col(Machine.state))).all()
    )
    order = [s.value for s in State if s is not State.NEW or counts.get(s.value)]
    order += sorted(set(counts) - set(order))
    return [StateCount(s, int(counts.get(s, 0)), STATE_COLOURS.get(s, "#cfd8dc")) for s in order]


def _queue(session: Session, user: ConsoleUser) -> Listed[Queued]:
    """Pending allocations oldest first (the order the queue matches them in), each with
    its place in the whole queue; a ci user gets only its own."""
    position = func.row_number().over(order_by=(col(Allocation.created_at), col(Allocation.id)))
    ranked = (
        select(col(Allocation.id).label("id"), position.label("position"))
        .where(Allocation.state == AllocationState.PENDING.value)
        .subquery()
    )
    query = (
        sa_select(
            ranked.c.position,
            col(Allocation.uuid),
            col(ApiToken.name),
            col(Allocation.constraints),
            col(Allocation.created_at),
            col(Allocation.attempts),
            TOTAL,
        )
        .select_from(ranked)
        .join(Allocation, col(Allocation.id) == ranked.c.id)
        .join(ApiToken, col(ApiToken.id) == col(Allocation.owner_token_id))
        .order_by(ranked.c.position)
        .limit(ROWS)
    )
    if user.role == Role.ci:
        query = query.where(col(Allocation.owner_token_id) == user.token.id)
    rows = session.execute(query).all()
    return Listed(
        [Queued(int(p), u, o, wants(c), at, n) for p, u, o, c, at, n, _ in rows], _total(rows)
    )


def _leases(session: Session, user: ConsoleUser) -> Listed[Lease]:
    """Deploying and ready allocations: the soonest to expire first, then the deploying."""
    query = (
        sa_select(
            col(Allocation.uuid),
            col(Allocation.state),
            col(ApiToken.name),
            col(Machine.name),
            col(Allocation.expires_at),
            col(Allocation.lease_s),
            TOTAL,
        )
        .join(ApiToken, col(ApiToken.id) == col(Allocation.owner_token_id))
        .outerjoin(Machine, col(Machine.id) == col(Allocation.machine_id))
        .where(col(Allocation.state).in_([s.value for s in LEASE_STATES]))
        .order_by(
            col(Allocation.expires_at).is_(None),
            col(Allocation.expires_at),
            col(Allocation.created_at),
            col(Allocation.id),
        )
        .limit(ROWS)
    )
    if user.role == Role.ci:
        query = query.where(col(Allocation.owner_token_id) == user.token.id)
    rows = session.execute(query).all()
    return Listed([Lease(u, s, o, m or "", e, n) for u, s, o, m, e, n, _ in rows], _total(rows))


def _failed(session: Session) -> Listed[Failed]:
    """Failed machines, the latest failure first, each with its newest deploy failure."""
    newest = (
        select(func.max(Deployment.id))
        .where(col(Deployment.machine_id) == col(Machine.id), Deployment.failure_reason != "")
        .correlate(Machine)
        .scalar_subquery()
    )
    rows = session.execute(
        sa_select(
            col(Machine.name),
            col(Machine.state),
            col(Machine.last_error),
            col(Machine.state_changed_at),
            col(Deployment.failure_reason),
            TOTAL,
        )
        .outerjoin(Deployment, col(Deployment.id) == newest)
        .where(col(Machine.state).in_([s.value for s in FAILED_STATES]))
        .order_by(col(Machine.state_changed_at).desc(), col(Machine.name))
        .limit(ROWS)
    ).all()
    out = []
    for name, state, last_error, at, deploy_reason, _ in rows:
        reason, phase = failure_text(last_error, deploy_reason)
        out.append(Failed(name, state, reason, phase, at))
    return Listed(out, _total(rows))


def _hot_racks(session: Session) -> list[HotRack]:
    rows = session.exec(
        select(Rack)
        .where(col(Rack.budget_status).in_(("over_90", "over_100")))
        .order_by(col(Rack.budget_status), col(Rack.name))  # over_100 sorts first
    ).all()
    return [
        HotRack(r.name, r.measured_watts, r.power_budget_watts, r.budget_status, r.measured_at)
        for r in rows
    ]


def _miscabled(session: Session) -> Listed[Miscabled]:
    rows = session.execute(
        sa_select(col(Machine.name), col(Nic.name), col(Nic.mac), col(Nic.cabling_detail), TOTAL)
        .join(Machine, col(Machine.id) == col(Nic.machine_id))
        .where(col(Nic.cabling) == "fail")
        .order_by(col(Machine.name), col(Nic.name), col(Nic.mac))
        .limit(ROWS)
    ).all()
    out = []
    for machine, nic, mac, detail, _ in rows:
        expected, seen, reason, note = cabling_text(detail)
        out.append(Miscabled(machine, nic or mac, expected, seen, reason, note))
    return Listed(out, _total(rows))


def _held(session: Session) -> Listed[Held]:
    rows = session.execute(
        sa_select(col(Machine.name), col(Machine.state), col(Machine.hold_reason), TOTAL)
        .where(col(Machine.hold_reason) != "")
        .order_by(col(Machine.name))
        .limit(ROWS)
    ).all()
    return Listed([Held(n, s, r) for n, s, r, _ in rows], _total(rows))


def build(session: Session, user: ConsoleUser) -> dict[str, Any]:
    states = _states(session)
    return {
        "states": states,
        "total": sum(c.count for c in states),
        "own_only": user.role == Role.ci,
        "queue": _queue(session, user),
        "leases": _leases(session, user),
        "failed": _failed(session),
        "hot_racks": _hot_racks(session),
        "miscabled": _miscabled(session),
        "held": _held(session),
    }
