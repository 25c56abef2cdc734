"""Machine lifecycle: the states, the transition table, and :func:`advance`.

``advance`` is the only code that changes ``Machine.state`` (besides
:func:`claim_available`, the allocator's atomic ``available -> deploying``). It checks the
transition against :data:`TRANSITIONS`, moves the row with a conditional UPDATE
(so two writers racing on one machine cannot both win, on SQLite or PostgreSQL),
sets or clears the state's deadline, and writes the :class:`Event` row in the
same transaction. The caller commits.

    >>> advance(session, machine, Ev.MANAGE, actor="token:ops", reason="disk swap")

Power state (on/off/unknown) is kept apart and is not a lifecycle state.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from sqlalchemy import ColumnElement, Update, bindparam, func, or_, update
from sqlmodel import Session, col, select

from provisiond import events
from provisiond.config import StateTimeouts
from provisiond.db import update_loaded
from provisiond.errors import ConcurrentChange, InvalidTransition
from provisiond.events import EventKind
from provisiond.models import Event, Machine, utcnow


class State(StrEnum):
    NEW = "new"
    """Not yet stored; only ``enroll`` leaves it."""
    ENROLLED = "enrolled"
    """Known (by discovery, PXE, inventory or API) but not yet inspected."""
    INSPECTING = "inspecting"
    """The inspection ramdisk is booting and will report hardware."""
    INSPECT_FAILED = "inspect_failed"
    """Inspection failed or timed out; ``inspect`` retries."""
    AVAILABLE = "available"
    """Inspected and free to allocate."""
    ALLOCATED = "allocated"
    """Matched to an allocation; deploy starts at once."""
    DEPLOYING = "deploying"
    """Power-cycled into PXE; waiting for the OS callback."""
    INSTALLING_AGENT = "installing_agent"
    """The OS called back; the agent is being installed over SSH."""
    ACTIVE = "active"
    """The agent heartbeats: instance ready."""
    DEPLOY_FAILED = "deploy_failed"
    """Deploy failed or timed out; ``release`` wipes and frees it."""
    RELEASING = "releasing"
    """Disks are being wiped before the machine is available again."""
    RELEASE_FAILED = "release_failed"
    """The wipe failed or timed out; ``release`` retries."""
    MAINTENANCE = "maintenance"
    """Taken out of service by an operator; ``provide`` or ``inspect`` return it."""
    RETIRED = "retired"
    """Decommissioned; ``manage`` brings it back to maintenance."""


class Ev(StrEnum):
    ENROLL = "enroll"
    INSPECT = "inspect"
    DONE = "done"
    FAIL = "fail"
    ALLOCATE = "allocate"
    DEPLOY = "deploy"
    BOOTED = "booted"
    READY = "ready"
    RELEASE = "release"
    MANAGE = "manage"
    RETIRE = "retire"
    PROVIDE = "provide"


S = State
TRANSITIONS: dict[tuple[State, Ev], State] = {
    (S.NEW, Ev.ENROLL): S.ENROLLED,
    (S.ENROLLED, Ev.INSPECT): S.INSPECTING,
    (S.INSPECT_FAILED, Ev.INSPECT): S.INSPECTING,
    (S.MAINTENANCE, Ev.INSPECT): S.INSPECTING,
    (S.INSPECTING, Ev.DONE): S.AVAILABLE,
    (S.INSPECTING, Ev.FAIL): S.INSPECT_FAILED,
    (S.AVAILABLE, Ev.ALLOCATE): S.ALLOCATED,
    # The allocator's claim: matched and deploying in one move (claim_available).
    (S.AVAILABLE, Ev.DEPLOY): S.DEPLOYING,
    (S.ALLOCATED, Ev.DEPLOY): S.DEPLOYING,
    (S.ALLOCATED, Ev.FAIL): S.DEPLOY_FAILED,
    (S.ALLOCATED, Ev.RELEASE): S.RELEASING,
    (S.DEPLOYING, Ev.BOOTED): S.INSTALLING_AGENT,
    (S.INSTALLING_AGENT, Ev.READY): S.ACTIVE,
    (S.DEPLOYING, Ev.FAIL): S.DEPLOY_FAILED,
    (S.INSTALLING_AGENT, Ev.FAIL): S.DEPLOY_FAILED,
    (S.ACTIVE, Ev.RELEASE): S.RELEASING,
    # Released while still deploying: the deploy ends and the wipe starts in one move.
    (S.DEPLOYING, Ev.RELEASE): S.RELEASING,
    (S.INSTALLING_AGENT, Ev.RELEASE): S.RELEASING,
    (S.DEPLOY_FAILED, Ev.RELEASE): S.RELEASING,
    (S.RELEASE_FAILED, Ev.RELEASE): S.RELEASING,
    (S.RELEASING, Ev.DONE): S.AVAILABLE,
    (S.RELEASING, Ev.FAIL): S.RELEASE_FAILED,
    (S.MAINTENANCE, Ev.PROVIDE): S.AVAILABLE,
}

#: States a machine can rest in indefinitely; operators may manage or retire it from these.
RESTING: frozenset[State] = frozenset(
    {
        S.ENROLLED,
        S.INSPECT_FAILED,
        S.AVAILABLE,
        S.ACTIVE,
        S.DEPLOY_FAILED,
        S.RELEASE_FAILED,
        S.MAINTENANCE,
        S.RETIRED,
    }
)
for _state in RESTING:
    if _state is not S.MAINTENANCE:
        TRANSITIONS[(_state, Ev.MANAGE)] = S.MAINTENANCE
    if _state is not S.RETIRED:
        TRANSITIONS[(_state, Ev.RETIRE)] = S.RETIRED

#: States that must be left before a deadline; the reaper fires ``fail`` when it passes.
TRANSITIONAL: frozenset[State] = frozenset(
    {S.ALLOCATED, S.INSPECTING, S.DEPLOYING, S.INSTALLING_AGENT, S.RELEASING}
)


def allowed_events(state: str) -> list[str]:
    return sorted(ev.value for (src, ev) in TRANSITIONS if src == state)


def target_state(state: str, event: Ev) -> State:
    try:
        return TRANSITIONS[(State(state), event)]
    except (KeyError, ValueError):
        allowed = allowed_events(state)
        raise InvalidTransition(
            f"cannot {event.value} a machine that is {state}",
            hint=(
                f"allowed from {state}: {', '.join(allowed)}"
                if allowed
                else f"no event is allowed from {state}"
            ),
        ) from None


def advance(
    session: Session,
    machine: Machine,
    event: Ev,
    *,
    actor: str,
    timeouts: StateTimeouts | None = None,
    reason: str = "",
    details: dict[str, Any] | None = None,
    request_id: str = "",
    phase_timings: dict[str, float] | None = None,
    now: datetime | None = None,
    batch: events.Batch | None = None,
) -> Event | None:
    """Fire ``event`` on ``machine``; the one place lifecycle state changes.

    One conditional UPDATE moves the row; the loaded ``machine`` takes the new values
    without a re-read. The transition's Event is written at once and returned, or
    added to ``batch`` (the caller's one multi-row INSERT for a whole request).
    """
    now = now or utcnow()
    src = machine.state
    dst = target_state(src, event)
    limits = timeouts or StateTimeouts()
    deadline = now + timedelta(seconds=getattr(limits, dst.value)) if dst in TRANSITIONAL else None
    details = dict(details or {})
    values: dict[str, Any] = {
        "state": dst.value,
        "state_changed_at": now,
        "deadline": deadline,
        "maintenance_reason": reason if dst is S.MAINTENANCE else "",
        "updated_at": now,
    }
    if event is Ev.FAIL:
        values["last_error"] = {"phase": src, "reason": reason or "unspecified failure", **details}
    elif dst in (S.AVAILABLE, S.ACTIVE, S.RETIRED):
        values["last_error"] = None

    if src == S.NEW:
        for name, value in values.items():
            setattr(machine, name, value)
        session.add(machine)
        session.flush()
    else:
        if machine.id is None:
            raise ValueError("advance() on a machine that was never stored")
        if not update_loaded(session, machine, values, state=src):  # no SELECT after it
            session.expire(machine)
            raise ConcurrentChange(
                f"machine {machine.name} changed state while {event.value} was being applied",
                hint="read the machine again and retry if the event still applies",
            )

    fields: dict[str, Any] = {
        "at": now,
        "machine": machine,
        "from_state": None if src == S.NEW else src,
        "to_state": dst.value,
        "actor": actor,
        "message": reason,
        "details": details,
        "request_id": request_id,
        "phase_timings": phase_timings,
    }
    if batch is not None:
        batch.add(EventKind.TRANSITION, event.value, **fields)
        return None
    return events.record(session, EventKind.TRANSITION, event.value, **fields)


#: Built claim statements by the caller's cache key (oldest dropped past the size).
_CLAIMS: dict[Hashable, Update] = {}
CLAIM_CACHE_SIZE = 256


def _claim_statement(conditions: Sequence[ColumnElement[bool]]) -> Update:
    # Never a machine whose DB lock someone holds (an outlet cut by ``pdus verify``, a
    # power action): it would be deployed while that work runs (provisiond.locks).
    unlocked = or_(col(Machine.lock_owner).is_(None), col(Machine.lock_expires) < bindparam("now"))
    pick = (
        select(col(Machine.id))
        .where(col(Machine.state) == S.AVAILABLE.value, unlocked, *conditions)
        .order_by(
            func.coalesce(col(Machine.cpus), 0),
            func.coalesce(col(Machine.ram_mib), 0),
            col(Machine.id),
        )
        .limit(1)
        .with_for_update(skip_locked=True)
        .scalar_subquery()
    )
    return (
        update(Machine)
        .where(col(Machine.id) == pick, col(Machine.state) == S.AVAILABLE.value)
        .values(
            state=S.DEPLOYING.value,
            state_changed_at=bindparam("now"),
            deadline=bindparam("deadline"),
            maintenance_reason="",
            updated_at=bindparam("now"),
        )
        .returning(col(Machine.id), col(Machine.name), col(Machine.uuid))
        .execution_options(synchronize_session=False)
    )


@dataclass(frozen=True)
class Claimed:
    """The machine :func:`claim_available` took (the columns the claim returned)."""

    id: int
    name: str
    uuid: str


def claim_available(
    session: Session,
    conditions: Callable[[], Sequence[ColumnElement[bool]]],
    *,
    actor: str,
    allocation_uuid: str,
    batch: events.Batch,
    timeouts: StateTimeouts | None = None,
    request_id: str = "",
    details: dict[str, Any] | None = None,
    now: datetime | None = None,
    cache_key: Hashable | None = None,
) -> Claimed | None:
    """Atomically move one ``available`` machine matching ``conditions()`` to ``deploying``.

    One statement does the pick and the move, so two claimers can never get the
    same machine: ``UPDATE machine ... WHERE id = (SELECT id ... LIMIT 1 FOR UPDATE
    SKIP LOCKED) AND state = 'available' RETURNING id, name, uuid``. PostgreSQL skips
    rows other claimers hold; SQLite (which ignores FOR UPDATE) runs writers one at a
    time under ``BEGIN IMMEDIATE``, and the outer state check keeps the UPDATE
    conditional there too. The smallest machine that fits wins (best fit), leaving big
    ones for big requests. A machine under someone's unexpired DB lock is passed over
    (a later pass of the queue takes it). The ``deploy`` transition Event goes into
    ``batch``; the caller writes it and commits. Returns None when nothing matches.

    ``cache_key`` names the shape and values of the conditions (the same key, the same
    conditions): the built statement is kept and reused, and ``conditions`` is called
    only to build a new one, as a request path sends the same constraints again and
    again and building them costs more than running the statement.
    """
    now = now or utcnow()
    limits = timeouts or StateTimeouts()
    statement = _CLAIMS.get(cache_key) if cache_key is not None else None
    if statement is None:
        statement = _claim_statement(conditions())
        if cache_key is not None:
            if len(_CLAIMS) >= CLAIM_CACHE_SIZE:
                _CLAIMS.pop(next(iter(_CLAIMS)))  # the oldest shape goes
            _CLAIMS[cache_key] = statement
    claimed = session.execute(
        statement, {"now": now, "deadline": now + timedelta(seconds=limits.deploying)}
    ).first()
    if claimed is None:
        return None
    machine = Claimed(id=claimed[0], name=claimed[1], uuid=claimed[2])
    batch.add(
        EventKind.TRANSITION,
        Ev.DEPLOY.value,
        at=now,
        machine_id=machine.id,
        machine_name=machine.name,
        from_state=S.AVAILABLE.value,
        to_state=S.DEPLOYING.value,
        actor=actor,
        message=f"allocated to {allocation_uuid}; deploy requested",
        details={"allocation": allocation_uuid, **(details or {})},
        request_id=request_id,
    )
    return machine
