"""The overview page: what needs an operator's eye, on one screen.

Eight queries whatever the size of the fleet: machines by state (one GROUP BY), the
pending queue (positions by a window function, so a ci user's rows keep their place
in the whole queue), the leases, the failed machines with their newest deploy failure,
the racks over 90 % of budget, the failing NICs and the held machines. Long sections
stop at :data:`ROWS` rows; a window count in the same query says how many there are.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Generic, TypeVar
from urllib.parse import quote

from sqlalchemy import Row, func
from sqlalchemy import select as sa_select
from sqlmodel import Session, col, select

from provisiond.allocations.states import AllocationState
from provisiond.auth import Role
from provisiond.console.auth import ConsoleUser
from provisiond.console.render import STATE_COLOURS
from provisiond.console.views.texts import cabling_text, failure_text, wants
from provisiond.lifecycle import State
from provisiond.models import Allocation, ApiToken, Deployment, Machine, Nic, Rack, utcnow

#: Rows per section at most (the rest is counted, not listed).
ROWS = 25
#: How far back the failures of machines that have since moved on are shown.
RECENT = timedelta(hours=24)
#: The number of rows a listing query matched, before its LIMIT (a window count).
TOTAL = func.count().over().label("total")
FAILED_STATES = (State.DEPLOY_FAILED, State.INSPECT_FAILED, State.RELEASE_FAILED)
LEASE_STATES = (AllocationState.DEPLOYING, AllocationState.READY)
T = TypeVar("T")


def machine_href(name: str) -> str:
    return "/ui/machines/" + quote(name, safe="")


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
    #: The machine's state now, when it has moved on (a failed deploy already released).
    now: str = ""

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


def _failed(session: Session, now: datetime) -> Listed[Failed]:
    """Machines in a failed state, and deploys, inspections and releases that failed in
    the last :data:`RECENT` (their machine may have been released since): newest first.
    Two queries whatever the fleet's size."""
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
    recent = session.execute(
        sa_select(
            col(Machine.name),
            col(Machine.state),
            col(Deployment.kind),
            col(Deployment.failure_reason),
            col(Deployment.finished_at),
            TOTAL,
        )
        .join(Machine, col(Machine.id) == col(Deployment.machine_id))
        .where(
            col(Deployment.outcome) == "failed",
            col(Deployment.finished_at) >= now - RECENT,
            col(Machine.state).not_in([s.value for s in FAILED_STATES]),
        )
        .order_by(col(Deployment.finished_at).desc(), col(Deployment.id).desc())
        .limit(ROWS)
    ).all()
    for name, state, kind, reason, at, _ in recent:
        failed_state = f"{'deploy' if kind not in ('inspect', 'release') else kind}_failed"
        text = (reason or "").strip() or "no reason recorded"
        out.append(Failed(name, failed_state, text, "", at, now=state))
    out.sort(key=lambda f: f.at, reverse=True)
    return Listed(out[:ROWS], _total(rows) + _total(recent))


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
        "failed": _failed(session, utcnow()),
        "hot_racks": _hot_racks(session),
        "miscabled": _miscabled(session),
        "held": _held(session),
    }
