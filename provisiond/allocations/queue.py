"""The allocation queue: follow deploys, expire leases, and match pending requests.

One pass (:func:`run_queue`) does three things, each an idempotent reconciler
that reads the database, acts per allocation in its own short transaction, and
skips whatever another daemon changed first:

1. **Progress.** A ``deploying`` allocation whose machine is ``active`` becomes
   ``ready`` and its lease starts. One whose machine failed (``deploy_failed``,
   or moved away) excludes that machine, sends it to be wiped and made available
   again, and goes back to ``pending`` for another machine, up to
   :data:`~provisiond.allocations.leases.MAX_TRIES` tries; then ``failed``
   with every try's reason. A ``ready`` allocation whose machine left ``active``
   (an operator released it) fails with the reason.
2. **Expiry.** A live allocation past ``expires_at`` releases its machine and
   becomes ``expired``, with an event. Nothing is held in memory, so a restart
   in the middle changes nothing.
3. **Matching.** Pending requests, oldest first, each claim the best-fitting
   machine they can take now (see :mod:`provisiond.allocations.service`).

:class:`AllocationQueue` runs a pass on the daemon's reconciler loop
(:func:`provisiond.reconciler.run_loop`): at start, every :data:`INTERVAL_S`, and at
once when the API queues a request (``services.wake_allocator()``). Passes never
overlap, and a wake-up during a pass makes one more pass right after it.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, and_, or_
from sqlmodel import Session, col, select

from provisiond.allocations.leases import (
    MAX_TRIES,
    free_machine,
    hub_for,
    owns_machine,
    record,
)
from provisiond.allocations.service import DEPLOYING, MAX_WALK, start
from provisiond.allocations.states import LIVE_STATES, AllocationState, AllocEv, advance
from provisiond.container import Services
from provisiond.errors import ConcurrentChange, InvalidTransition
from provisiond.lifecycle import State
from provisiond.logging import get_logger
from provisiond.models import Allocation, Machine, utcnow
from provisiond.reconciler import run_loop

log = get_logger(__name__)

#: Seconds between queue passes when nothing wakes the queue.
INTERVAL_S = 1.0
#: The queue runs on one daemon at a time: the holder of this role.
ROLE = "allocation_queue"
ACTOR = "allocator"


@dataclass
class QueueReport:
    """What one pass changed, by allocation id."""

    ready: list[str] = field(default_factory=list)
    retried: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    expired: list[str] = field(default_factory=list)
    matched: list[str] = field(default_factory=list)

    @property
    def changed(self) -> list[str]:
        return [*self.ready, *self.retried, *self.failed, *self.expired, *self.matched]


def _retry_or_fail(
    session: Session,
    services: Services,
    allocation: Allocation,
    machine: Machine | None,
    report: QueueReport,
) -> None:
    if machine is None:
        reason, name = "the machine was deleted", "?"
    else:
        name = machine.name
        if machine.state == State.DEPLOY_FAILED:
            reason = (machine.last_error or {}).get("reason", "deploy failed")
        else:
            reason = f"the machine left the deploy (now {machine.state})"
        allocation.excluded_machine_ids = [*allocation.excluded_machine_ids, machine.id or 0]
        if machine.state == State.DEPLOY_FAILED:
            free_machine(
                session,
                allocation,
                machine,
                actor=ACTOR,
                reason=f"deploy for allocation {allocation.uuid} failed: {reason}",
                settings=services.settings,
            )
    allocation.failure_reason = (
        f"{allocation.failure_reason}try {allocation.attempts} on {name}: {reason}; "
    )
    if allocation.attempts >= MAX_TRIES:
        advance(session, allocation, AllocEv.FAIL, reason=allocation.failure_reason.rstrip("; "))
        record(session, allocation, "fail", allocation.failure_reason, actor=ACTOR, machine=machine)
        report.failed.append(allocation.uuid)
        return
    advance(session, allocation, AllocEv.RETRY)
    record(
        session,
        allocation,
        "retry",
        f"try {allocation.attempts} of {MAX_TRIES} failed on {name}: {reason}; matching another",
        actor=ACTOR,
        machine=machine,
    )
    report.retried.append(allocation.uuid)


def _progress_one(
    session: Session, services: Services, allocation: Allocation, report: QueueReport
) -> None:
    machine = session.get(Machine, allocation.machine_id) if allocation.machine_id else None
    if allocation.state == AllocationState.DEPLOYING:
        if machine is not None and machine.state in DEPLOYING:
            return
        if (
            machine is not None
            and machine.state == State.ACTIVE
            and (owns_machine(session, allocation, machine))
        ):
            advance(session, allocation, AllocEv.READY)
            record(session, allocation, "ready", f"{machine.name} is ready", actor=ACTOR,
                   machine=machine)  # fmt: skip
            report.ready.append(allocation.uuid)
            return
        _retry_or_fail(session, services, allocation, machine, report)
    elif allocation.state == AllocationState.READY and (
        machine is None or machine.state != State.ACTIVE
    ):
        where = f"now {machine.state}" if machine else "deleted"
        reason = f"the machine {machine.name if machine else ''} left active ({where})"
        advance(session, allocation, AllocEv.FAIL, reason=reason)
        record(session, allocation, "fail", reason, actor=ACTOR, machine=machine)
        report.failed.append(allocation.uuid)


def _needs_progress() -> ColumnElement[bool]:
    machine_state = col(Machine.state)
    return or_(
        and_(
            col(Allocation.state) == AllocationState.DEPLOYING.value,
            or_(col(Machine.id).is_(None), machine_state.not_in([s.value for s in DEPLOYING])),
        ),
        and_(
            col(Allocation.state) == AllocationState.READY.value,
            or_(col(Machine.id).is_(None), machine_state != State.ACTIVE.value),
        ),
    )


def _each(services: Services, ids: list[int], act: Any) -> None:
    """Run ``act(session, allocation)`` for each id in its own transaction.

    Each transaction first checks that this daemon still holds the queue's role (the
    fence, provisiond.cluster): a daemon that lost it mid-pass writes nothing more.
    """
    for allocation_id in ids:
        try:
            with services.db.transaction() as session:
                if not services.cluster.fence(session, ROLE):
                    return
                allocation = session.get(Allocation, allocation_id, with_for_update=True)
                if allocation is not None:
                    act(session, allocation)
        except (ConcurrentChange, InvalidTransition) as exc:
            log.info("allocation_skipped", allocation_id=allocation_id, reason=str(exc))


def run_queue(services: Services, *, now: datetime | None = None) -> QueueReport:
    """One pass: progress, expiry, matching. Safe to run twice, or on two daemons at once."""
    now = now or utcnow()
    report = QueueReport()
    with services.db.read_session() as session:
        to_progress = list(
            session.exec(
                select(Allocation.id)
                .outerjoin(Machine, col(Machine.id) == Allocation.machine_id)
                .where(_needs_progress())
            ).all()
        )
        to_expire = list(
            session.exec(
                select(Allocation.id).where(
                    col(Allocation.state).in_([s.value for s in LIVE_STATES]),
                    col(Allocation.expires_at) < now,
                )
            ).all()
        )
    _each(services, [i for i in to_progress if i is not None],
          lambda s, a: _progress_one(s, services, a, report))  # fmt: skip

    def expire(session: Session, allocation: Allocation) -> None:
        if allocation.state not in LIVE_STATES:
            return
        if allocation.expires_at is None or allocation.expires_at >= now:
            return
        machine = session.get(Machine, allocation.machine_id) if allocation.machine_id else None
        reason = (
            f"the lease of allocation {allocation.uuid} ended at {allocation.expires_at:%H:%M:%SZ}"
        )
        free_machine(session, allocation, machine, actor=ACTOR, reason=reason,
                     settings=services.settings)  # fmt: skip
        advance(session, allocation, AllocEv.EXPIRE, now=now)
        record(session, allocation, "expire", reason, actor=ACTOR, machine=machine)
        report.expired.append(allocation.uuid)

    _each(services, [i for i in to_expire if i is not None], expire)
    _match(services, report)
    if report.changed:
        hub_for(services.db).notify(*report.changed)
    if report.matched or report.retried or report.expired:
        services.wake_deployer()
    return report


def _match(services: Services, report: QueueReport) -> None:
    with services.db.read_session() as session:
        pending = [
            i
            for i in session.exec(
                select(Allocation.id)
                .where(Allocation.state == AllocationState.PENDING.value)
                .order_by(col(Allocation.created_at), col(Allocation.id))
                .limit(MAX_WALK)
            ).all()
            if i is not None
        ]
        if not pending:
            return
        free = session.exec(select(Machine.id).where(Machine.state == State.AVAILABLE)).all()
    budget = len(free)

    def match(session: Session, allocation: Allocation) -> None:
        nonlocal budget
        if budget <= 0 or allocation.state != AllocationState.PENDING:
            return
        if start(session, services, allocation, actor=ACTOR, request_id=""):
            budget -= 1
            report.matched.append(allocation.uuid)

    _each(services, pending, match)


class AllocationQueue:
    """The queue as a reconciler: the daemon runs :meth:`run` as a task next to the engine.

    >>> queue_task = asyncio.create_task(AllocationQueue(services).run(stop))
    """

    def __init__(self, services: Services, *, interval_s: float = INTERVAL_S) -> None:
        self.services = services
        self.interval_s = interval_s

    async def pass_once(self) -> QueueReport:
        """One :func:`run_queue` pass in a worker thread (it does blocking DB work).

        Only on the daemon that holds the queue's role (provisiond.cluster).
        """
        if not self.services.cluster.leads(ROLE):
            return QueueReport()
        report = await asyncio.to_thread(run_queue, self.services)
        if report.changed:
            log.info("allocation_queue", **{k: len(v) for k, v in vars(report).items()})
        return report

    async def run(self, stop: asyncio.Event) -> None:
        """Passes until ``stop`` is set; a failed pass is logged as ``allocation_queue_failed``."""
        await run_loop(
            self.pass_once,
            wakeup=self.services.allocation_wakeup,
            interval_s=self.interval_s,
            stop=stop,
            name="allocation_queue",
        )
