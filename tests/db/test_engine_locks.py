"""The deploy engine's machine locks across daemons (issue 11, defects 1 and 2).

Two :class:`Services` on one database stand for two daemons on one host (same host
name, and here even the same process): their engines must never hold one machine
at once. A step that outlives ``lock_ttl_s`` keeps its lock by renewing it, and a
step whose lock passed to another owner anyway writes nothing. Steps are the real
ones, driven through :meth:`DeployEngine._drive` (lock, heartbeat, release); only
where a step must last a while is it wrapped to block in the executor until the
test lets it go.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable, Iterator
from datetime import datetime, timedelta

import pytest
from sqlmodel import select

from provisiond import locks
from provisiond.config import Settings
from provisiond.container import Services
from provisiond.db import Database
from provisiond.deploy import records as deploy
from provisiond.deploy.engine import DeployEngine
from provisiond.deploy.steps import Work
from provisiond.lifecycle import Ev, State, advance
from provisiond.models import Deployment, Event, Machine, utcnow
from provisiond.secrets import SecretBox
from tests.db.test_deploy_engine import _deploying

HOST_A = "rack-a:4242:20250101T101500.000000Z"
HOST_A_OTHER = "rack-a:4343:20250101T101502.000000Z"  # a second daemon on the same host
THIEF = "rack-b:77:20250101T101500.000000Z:engine"

Step = Callable[[Work], Awaitable[None]]


def _services(settings: Settings, db: Database, instance: str) -> Services:
    secrets = SecretBox.from_key_file(settings.key_file)
    return Services(settings=settings, db=db, secrets=secrets, instance=instance)


@pytest.fixture
def daemons(settings: Settings, db: Database) -> Iterator[tuple[Services, Services]]:
    a, b = _services(settings, db, HOST_A), _services(settings, db, HOST_A_OTHER)
    yield a, b
    a.close()
    b.close()


def _blocking(engine: DeployEngine, entered: threading.Event, leave: threading.Event) -> list[str]:
    """Make the power step block in the executor until ``leave``; returns who ran it."""
    ran: list[str] = []

    async def step(item: Work) -> None:
        ran.append(engine.services.instance)
        entered.set()
        await engine.services.executor.run(leave.wait, 30, timeout=30, what="a long step")

    engine._power_step = step  # type: ignore[method-assign]
    return ran


def _lock(db: Database, machine_id: int) -> tuple[str | None, datetime | None]:
    with db.read_session() as s:
        m = s.get(Machine, machine_id)
        assert m is not None
        return m.lock_owner, m.lock_expires


def test_two_daemons_on_one_host_never_hold_one_machine(
    daemons: tuple[Services, Services],
) -> None:
    a, b = daemons
    machine_id = _deploying(a)
    engine_a, engine_b = DeployEngine(a), DeployEngine(b)
    entered, leave = threading.Event(), threading.Event()
    ran_a = _blocking(engine_a, entered, leave)
    ran_b = _blocking(engine_b, threading.Event(), leave)

    async def main() -> None:
        assert [w.step for w in await engine_a.tick()] == ["power"]
        assert await asyncio.to_thread(entered.wait, 10)
        owner, _ = await asyncio.to_thread(_lock, a.db, machine_id)
        assert owner is not None and owner.startswith(f"{HOST_A}:")
        # Daemon B on the same host sees a machine someone else holds: not its own.
        assert b.instance.split(":")[0] == a.instance.split(":")[0]
        assert await engine_b.tick() == []
        await engine_b.drain()
        leave.set()
        await engine_a.drain()
        # A released it: B may have it now.
        assert [w.step for w in await engine_b.tick()] == ["power"]
        await engine_b.drain()

    asyncio.run(main())
    assert ran_a == [HOST_A] and ran_b == [HOST_A_OTHER]


def test_a_step_longer_than_the_lock_ttl_keeps_its_lock(settings: Settings, db: Database) -> None:
    ttl = 1.5
    a = _services(settings.model_copy(update={"lock_ttl_s": ttl}), db, HOST_A)
    machine_id = _deploying(a)
    engine = DeployEngine(a)
    entered, leave = threading.Event(), threading.Event()
    _blocking(engine, entered, leave)

    async def main() -> None:
        [work] = await asyncio.to_thread(engine.scan)
        task = asyncio.create_task(engine._drive(work))
        assert await asyncio.to_thread(entered.wait, 10)
        first_expiry = utcnow() + timedelta(seconds=ttl)  # no later than this
        await asyncio.sleep((first_expiry - utcnow()).total_seconds() + 0.5)
        # Past the TTL the step still runs, and the lock is still its own, renewed.
        owner, expires = await asyncio.to_thread(_lock, db, machine_id)
        assert owner is not None and owner.startswith(f"{HOST_A}:"), owner
        assert expires is not None and expires > first_expiry
        got = await asyncio.to_thread(locks.try_acquire, db, machine_id, THIEF, ttl_s=60)
        assert not got, f"another daemon took the lock {ttl}s into a longer step"
        leave.set()
        await task
        # The heartbeat stopped with the step: no task of the engine is left running.
        assert [t for t in asyncio.all_tasks() if t is not asyncio.current_task()] == []

    asyncio.run(main())
    assert _lock(db, machine_id) == (None, None)
    a.close()


def _installing_overdue(services: Services, engine: DeployEngine) -> int:
    machine_id = _deploying(services)
    limit = services.settings.agent_heartbeat_timeout_s
    with services.db.transaction() as s:
        m = s.get(Machine, machine_id)
        record = deploy.running_deployment(s, machine_id)
        assert m is not None and record is not None
        old = (utcnow() - timedelta(seconds=limit + 60)).isoformat()
        record.phases = {**record.phases, "power_cycle": old, "agent_installed": old}
        s.add(record)
        advance(s, m, Ev.BOOTED, actor="test")
    return machine_id


def _releasing(services: Services, engine: DeployEngine) -> int:
    machine_id = _deploying(services)
    with services.db.transaction() as s:
        m = s.get(Machine, machine_id)
        assert m is not None
        deploy.fail(s, m, actor="test", reason="lease ended", settings=services.settings)
        deploy.start_release(s, m, actor="test", reason="lease ended", settings=services.settings)
    return machine_id


def _lost_boot(services: Services, engine: DeployEngine) -> int:
    machine_id = _deploying(services)
    wait = services.settings.lost_boot_s
    with services.db.transaction() as s:
        record = deploy.running_deployment(s, machine_id)
        assert record is not None
        cycled = (utcnow() - timedelta(seconds=wait + 60)).isoformat()
        record.phases = {**record.phases, "power_cycle": cycled}
        s.add(record)
    engine.started_at = utcnow() - timedelta(seconds=wait + 30)
    return machine_id


def _snapshot(db: Database, machine_id: int) -> tuple[str, list[tuple[int, str]]]:
    with db.read_session() as s:
        m = s.get(Machine, machine_id)
        assert m is not None
        records = s.exec(select(Deployment).where(Deployment.machine_id == machine_id)).all()
        return m.state, sorted((r.attempt, r.outcome) for r in records)


@pytest.mark.parametrize(
    ("setup", "step", "state"),
    [
        (_installing_overdue, "heartbeat_timeout", State.INSTALLING_AGENT),
        (_releasing, "release", State.RELEASING),
        (_lost_boot, "repower", State.DEPLOYING),
    ],
)
def test_a_step_whose_lock_was_taken_over_applies_nothing(
    services: Services, setup: Callable[[Services, DeployEngine], int], step: str, state: State
) -> None:
    engine = DeployEngine(services)
    machine_id = setup(services, engine)
    [work] = engine.scan()
    assert work.step == step
    before = _snapshot(services.db, machine_id)
    assert before[0] == state

    # The step outlives its lock (the daemon stalled past the TTL, say) and another
    # daemon takes the expired lock before the step writes its result.
    target: object = engine.releaser if step == "release" else engine
    attr = {"heartbeat_timeout": "_heartbeat_timeout", "release": "step"}.get(step, "_repower_step")
    real: Step = getattr(target, attr)

    async def taken_over(item: Work) -> None:
        later = utcnow() + timedelta(seconds=services.settings.lock_ttl_s + 1)
        stolen = await asyncio.to_thread(
            locks.try_acquire, services.db, machine_id, THIEF, ttl_s=600, now=later
        )
        assert stolen
        await real(item)

    setattr(target, attr, taken_over)
    asyncio.run(engine._drive(work))

    assert _snapshot(services.db, machine_id) == before  # nothing applied
    assert _lock(services.db, machine_id)[0] == THIEF  # and the thief's lock left alone
    with services.db.read_session() as s:
        [event] = s.exec(select(Event).where(Event.event == "step_discarded")).all()
    assert THIEF in event.message and event.machine_id == machine_id


def test_a_step_that_kept_its_lock_applies_its_result(services: Services) -> None:
    # Control for the test above: the same step, lock untouched, fails the deploy.
    engine = DeployEngine(services)
    machine_id = _installing_overdue(services, engine)
    [work] = engine.scan()
    asyncio.run(engine._drive(work))
    assert _snapshot(services.db, machine_id)[0] == State.DEPLOY_FAILED
    assert _lock(services.db, machine_id) == (None, None)
