"""Allocation states, the transition table, :func:`apply` and :func:`advance`.

``apply`` (in memory) is the only code that changes ``Allocation.state``, as
:func:`provisiond.lifecycle.advance` is for machines; ``advance`` applies and writes
the row. It checks the transition
against :data:`TRANSITIONS` and sets what the transition implies: the claimed
machine and the try count on ``claim``, the lease's start on ``ready``, the
reason on ``fail``, ``released_at`` on reaching a final state. The stored values
are the plain strings below, so the enum needed no migration::

    pending --claim--> deploying --ready--> ready --expire--> expired
       ^                  |   \\--fail (MAX_TRIES used)--> failed
       \\------retry-------/                  \\--fail (machine left active)--> failed
    pending | deploying | ready --release--> released, --expire--> expired

The caller holds the allocation's row lock (``SELECT ... FOR UPDATE``, or
SQLite's single writer), writes the allocation's event-log row, and commits.

    >>> advance(session, allocation, AllocEv.CLAIM, machine_id=machine.id)
"""

from __future__ import annotations

from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from sqlmodel import Session

from provisiond.db import update_loaded
from provisiond.errors import InvalidTransition
from provisiond.models import Allocation, utcnow


class AllocationState(StrEnum):
    PENDING = "pending"
    """Waiting for a machine that fits; every queue pass tries it again."""
    DEPLOYING = "deploying"
    """A machine is claimed and its deploy is under way."""
    READY = "ready"
    """The machine is active; the lease runs from here."""
    FAILED = "failed"
    """Every try failed, or the machine left ``active``. Final."""
    RELEASED = "released"
    """Handed back by its owner or an operator. Final."""
    EXPIRED = "expired"
    """The lease ended (or the request waited as long as its lease). Final."""


class AllocEv(StrEnum):
    CLAIM = "claim"
    READY = "ready"
    RETRY = "retry"
    FAIL = "fail"
    RELEASE = "release"
    EXPIRE = "expire"


A = AllocationState
#: States that hold, or wait for, a machine.
LIVE_STATES: tuple[AllocationState, ...] = (A.PENDING, A.DEPLOYING, A.READY)
#: States an allocation never leaves.
FINAL_STATES: tuple[AllocationState, ...] = (A.FAILED, A.RELEASED, A.EXPIRED)
STATES: tuple[AllocationState, ...] = LIVE_STATES + FINAL_STATES

TRANSITIONS: dict[tuple[AllocationState, AllocEv], AllocationState] = {
    (A.PENDING, AllocEv.CLAIM): A.DEPLOYING,
    (A.DEPLOYING, AllocEv.READY): A.READY,
    (A.DEPLOYING, AllocEv.RETRY): A.PENDING,
    (A.DEPLOYING, AllocEv.FAIL): A.FAILED,
    (A.READY, AllocEv.FAIL): A.FAILED,
    **{(live, AllocEv.RELEASE): A.RELEASED for live in LIVE_STATES},
    **{(live, AllocEv.EXPIRE): A.EXPIRED for live in LIVE_STATES},
}


def target_state(state: str, event: AllocEv) -> AllocationState:
    try:
        return TRANSITIONS[(AllocationState(state), event)]
    except (KeyError, ValueError):
        allowed = sorted(ev.value for (src, ev) in TRANSITIONS if src == state)
        raise InvalidTransition(
            f"cannot {event.value} an allocation that is {state}",
            hint=f"allowed from {state}: {', '.join(allowed)}"
            if allowed
            else f"{state} is final: request a new allocation",
        ) from None


def _changes(
    allocation: Allocation,
    event: AllocEv,
    machine_id: int | None,
    reason: str,
    now: datetime | None,
) -> tuple[AllocationState, dict[str, Any]]:
    """The transition's target and the column values it sets (checked, not yet set)."""
    dst = target_state(allocation.state, event)
    if event is AllocEv.CLAIM and machine_id is None:
        raise ValueError("a claim names the machine it took")
    now = now or utcnow()
    values: dict[str, Any] = {"state": dst.value, "updated_at": now}
    if event is AllocEv.CLAIM:
        values["machine_id"] = machine_id
        values["attempts"] = allocation.attempts + 1
    elif event is AllocEv.RETRY:
        values["machine_id"] = None
    elif event is AllocEv.READY:
        values["expires_at"] = now + timedelta(seconds=allocation.lease_s)
    if event is AllocEv.FAIL:
        values["failure_reason"] = reason[:4000]
    if dst in FINAL_STATES:
        values["released_at"] = now
    return dst, values


def apply(
    allocation: Allocation,
    event: AllocEv,
    *,
    machine_id: int | None = None,
    reason: str = "",
    now: datetime | None = None,
) -> AllocationState:
    """Fire ``event`` on ``allocation`` in memory; the one place its state changes.

    ``machine_id`` is the machine a ``claim`` took; ``reason`` is kept on ``fail``.
    :func:`advance` also writes the row; the request path applies a claim to an
    allocation it has not inserted yet and inserts it once.
    """
    dst, values = _changes(allocation, event, machine_id, reason, now)
    for name, value in values.items():
        setattr(allocation, name, value)
    return dst


def advance(
    session: Session,
    allocation: Allocation,
    event: AllocEv,
    *,
    machine_id: int | None = None,
    reason: str = "",
    now: datetime | None = None,
) -> AllocationState:
    """:func:`apply`, and write the row: one UPDATE of the columns the transition sets
    (the loaded ``allocation`` takes them without a re-read). Returns the new state."""
    if allocation.id is None:  # not stored yet: the ORM inserts it
        dst = apply(allocation, event, machine_id=machine_id, reason=reason, now=now)
        session.add(allocation)
        session.flush()
        return dst
    dst, values = _changes(allocation, event, machine_id, reason, now)
    update_loaded(session, allocation, values)
    return dst
