"""The reaper: fails machines whose transitional state outlived its deadline.

It is an idempotent reconciler: it skips machines locked by a live operation,
and a machine that another daemon already moved is simply not counted.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from sqlalchemy import or_
from sqlmodel import Session, col, select

from provisiond import lifecycle
from provisiond.config import StateTimeouts
from provisiond.db import Database
from provisiond.deploy import records as deploy
from provisiond.errors import ConcurrentChange, InvalidTransition
from provisiond.lifecycle import TRANSITIONAL, Ev
from provisiond.logging import get_logger
from provisiond.models import Machine, utcnow

log = get_logger(__name__)


def reap(
    db: Database,
    *,
    timeouts: StateTimeouts,
    actor: str = "reaper",
    now: datetime | None = None,
    fence: Callable[[Session], bool] = lambda _session: True,
) -> list[str]:
    """Fire ``fail`` on every overdue machine; returns the names of those failed.

    ``fence`` runs first in each machine's transaction: False (this daemon no longer
    holds the reaper's role) writes nothing more.
    """
    now = now or utcnow()
    with db.read_session() as session:
        overdue = session.exec(
            select(Machine.id).where(
                col(Machine.state).in_([s.value for s in TRANSITIONAL]),
                col(Machine.deadline) < now,
                or_(col(Machine.lock_owner).is_(None), col(Machine.lock_expires) < now),
            )
        ).all()
    failed: list[str] = []
    for machine_id in overdue:
        try:
            with db.transaction() as session:
                if not fence(session):
                    break
                machine = session.get(Machine, machine_id)
                if machine is None or machine.deadline is None or machine.deadline >= now:
                    continue
                limit = getattr(timeouts, machine.state)
                reason, details = deploy.deadline_reason(session, machine, limit)
                record = deploy.running_deployment(session, machine.id) if machine.id else None
                if record is not None:
                    deploy.finish(record, "failed", reason)
                    session.add(record)
                lifecycle.advance(
                    session,
                    machine,
                    Ev.FAIL,
                    actor=actor,
                    timeouts=timeouts,
                    reason=f"deadline passed: {reason}",
                    details={"deadline": machine.deadline.isoformat(), **details},
                    now=now,
                )
                failed.append(machine.name)
        except (ConcurrentChange, InvalidTransition):
            continue  # moved on meanwhile: nothing to reap
    if failed:
        log.info("reaper_failed_machines", machines=failed)
    return failed
