"""The reaper fails overdue machines with a machine-readable reason, and only those."""

from __future__ import annotations

import asyncio
from datetime import timedelta

from sqlmodel import select

from provisiond import lifecycle, locks
from provisiond.config import StateTimeouts
from provisiond.container import Services
from provisiond.db import Database
from provisiond.deploy.reaper import reap
from provisiond.lifecycle import Ev
from provisiond.models import Event, Machine, utcnow
from provisiond.scheduler import build_scheduler

TIMEOUTS = StateTimeouts(deploying=30, inspecting=60)


def _machine_in(db: Database, name: str, path: list[Ev]) -> int:
    with db.transaction() as session:
        machine = Machine(name=name)
        for ev in path:
            lifecycle.advance(session, machine, ev, actor="t", timeouts=TIMEOUTS)
        assert machine.id is not None
        return machine.id


DEPLOYING = [Ev.ENROLL, Ev.INSPECT, Ev.DONE, Ev.ALLOCATE, Ev.DEPLOY]


def _state(db: Database, machine_id: int) -> Machine:
    with db.read_session() as session:
        machine = session.get(Machine, machine_id)
        assert machine is not None
        return machine


def test_reaper_fails_only_overdue_unlocked_machines(db: Database) -> None:
    overdue = _machine_in(db, "overdue", DEPLOYING)
    locked = _machine_in(db, "locked", DEPLOYING)
    inspecting = _machine_in(db, "inspecting", [Ev.ENROLL, Ev.INSPECT])
    resting = _machine_in(db, "resting", [Ev.ENROLL])
    assert locks.try_acquire(db, locked, "live-op", ttl_s=600)

    soon = utcnow() + timedelta(seconds=10)
    assert reap(db, timeouts=TIMEOUTS, now=soon) == []

    later = utcnow() + timedelta(seconds=45)  # past deploying (30 s), not inspecting (60 s)
    assert reap(db, timeouts=TIMEOUTS, now=later) == ["overdue"]
    failed = _state(db, overdue)
    assert failed.state == "deploy_failed"
    assert failed.deadline is None
    assert failed.last_error is not None
    assert failed.last_error["phase"] == "deploying"
    assert failed.last_error["reason"] == "deadline passed: deploying: no OS callback within 30s"
    assert _state(db, locked).state == "deploying"
    assert _state(db, inspecting).state == "inspecting"
    assert _state(db, resting).state == "enrolled"
    # Idempotent: a second run finds nothing more.
    assert reap(db, timeouts=TIMEOUTS, now=later) == []

    with db.read_session() as session:
        ev = session.exec(
            select(Event).where(Event.machine_id == overdue, Event.event == "fail")
        ).one()
    assert ev.actor == "reaper" and ev.to_state == "deploy_failed"

    # The live operation's lock expires (its owner died): the machine is reaped next time.
    much_later = utcnow() + timedelta(seconds=700)
    assert sorted(reap(db, timeouts=TIMEOUTS, now=much_later)) == ["inspecting", "locked"]
    assert _state(db, inspecting).state == "inspect_failed"


def test_the_scheduler_runs_the_reaper(services: Services) -> None:
    """The real AsyncIOScheduler fires the reaper job on its interval."""
    services.settings.reaper_interval_s = 0.2
    services.settings.timeouts = StateTimeouts(inspecting=0.1)
    machine_id = _machine_in(services.db, "m1", [Ev.ENROLL])
    with services.db.transaction() as session:
        machine = session.get(Machine, machine_id)
        assert machine is not None
        lifecycle.advance(
            session, machine, Ev.INSPECT, actor="t", timeouts=services.settings.timeouts
        )

    async def run() -> str:
        scheduler = build_scheduler(services)
        scheduler.start()
        try:
            for _ in range(50):  # at most 5 s
                await asyncio.sleep(0.1)
                state = await asyncio.to_thread(lambda: _state(services.db, machine_id).state)
                if state != "inspecting":
                    return state
            return "inspecting"
        finally:
            scheduler.shutdown(wait=False)

    assert asyncio.run(run()) == "inspect_failed"
