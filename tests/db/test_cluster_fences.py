"""The fences a daemon in a cluster relies on, on both databases.

- a step's helpers use the lock guard the step began with, even after the daemon
  rejoined with a new epoch (a context variable that threads inherit);
- a daemon whose local lease lapsed (no recent heartbeat) takes no machine, writes
  no result, and starts no new work;
- a stopping daemon keeps the locks of machines whose step may still be running;
- PostgreSQL sessions end a transaction left idle (a paused daemon holding row locks).
"""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import text
from sqlmodel import select

from provisiond import locks
from provisiond.cluster.members import Me
from provisiond.cluster.node import ClusterNode
from provisiond.container import Services, Solo
from provisiond.deploy.engine import _STEP_GUARD, DeployEngine
from provisiond.models import Event, Machine
from tests.db.test_deploy_engine import _deploying


class Lapsed(Solo):
    """This daemon as its cluster node sees it after a pause: no recent heartbeat."""

    def current(self) -> bool:
        return False

    def accepting(self) -> bool:
        return False


def test_a_step_keeps_the_guard_it_began_with_after_a_rejoin(services: Services) -> None:
    services.cluster = Solo("host:1:t#1")
    engine = DeployEngine(services)
    first = engine.guard

    async def step() -> tuple[str, str]:
        _STEP_GUARD.set(first)  # as _drive does when the step starts
        services.cluster = Solo("host:1:t#2")  # the daemon rejoined meanwhile
        await engine.tick()  # the engine moves to the new epoch's guard...
        in_thread = await asyncio.to_thread(lambda: engine.guard.owner)
        return engine.guard.owner, in_thread

    in_task, in_thread = asyncio.run(step())
    assert in_task == in_thread == "host:1:t#1:engine"  # ...but the step keeps its own
    assert engine.guard.owner == "host:1:t#2:engine"  # new steps get the new one


def test_a_lapsed_daemon_takes_nothing_writes_nothing_and_starts_nothing(
    services: Services,
) -> None:
    machine_id = _deploying(services)
    services.cluster = Lapsed(services.instance)
    engine = DeployEngine(services)
    assert asyncio.run(engine.tick()) == []
    assert not engine.guard.take(machine_id)
    with services.db.read_session() as s:
        machine = s.get(Machine, machine_id)
        assert machine is not None and machine.lock_owner is None
    # Even a lock it still holds in the database does not let a result through.
    assert locks.try_acquire(services.db, machine_id, engine.guard.owner, ttl_s=60)
    with services.db.transaction() as s:
        assert not engine.guard.hold(s, machine_id, "phase power_cycle")
    with services.db.read_session() as s:
        discarded = s.exec(select(Event).where(Event.event == "step_discarded")).all()
    assert [e.machine_id for e in discarded] == [machine_id]


def test_a_stopping_daemon_keeps_the_locks_of_unfinished_steps(services: Services) -> None:
    busy, idle = _deploying(services, "busy"), _deploying(services, "idle")
    me = Me(id=services.instance, host="h", pid=1, version="t", schema_revision="t")
    node = ClusterNode(services.db, me, heartbeat_s=1, dead_after_s=6, leader_ttl_s=3,
                       drain_timeout_s=1)  # fmt: skip

    async def run() -> None:
        await node.start()
        for machine_id in (busy, idle):
            took = await asyncio.to_thread(
                locks.try_acquire, services.db, machine_id, node.owner("engine"), ttl_s=60
            )
            assert took
        await node.close(keep={busy})

    asyncio.run(run())
    with services.db.read_session() as s:
        owners = {m.name: m.lock_owner for m in s.exec(select(Machine)).all()}
    assert owners == {"busy": node.owner("engine"), "idle": None}


def test_postgresql_sessions_end_idle_transactions(services: Services) -> None:
    if services.db.dialect != "postgresql":
        pytest.skip("a PostgreSQL session setting")
    with services.db.read_session() as s:
        timeout = s.execute(text("SHOW idle_in_transaction_session_timeout")).scalar_one()
    assert timeout == "15s"
