"""The deploy engine's decisions from DB state alone (both databases).

The engine's real work (BMC, PXE, SSH) is proven on QEMU guests in tests/e2e; here
the rules that pick a step from the stored state, and the restart paths, are driven
directly on SQLite and PostgreSQL.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

from sqlmodel import col, select

from provisiond.container import Services
from provisiond.deploy import records as deploy
from provisiond.deploy.engine import DeployEngine
from provisiond.lifecycle import Ev, State, advance
from provisiond.models import Deployment, Event, Machine, utcnow


def _deploying(services: Services, name: str = "m1") -> int:
    with services.db.transaction() as s:
        m = Machine(name=name)
        advance(s, m, Ev.ENROLL, actor="test")
        for ev in (Ev.INSPECT, Ev.DONE, Ev.ALLOCATE):
            advance(s, m, ev, actor="test")
        deploy.start_deploy(
            s,
            m,
            allocation=None,
            image_id=None,
            actor="test",
            settings=services.settings,
            secrets=services.secrets,
        )
        assert m.id is not None
        return m.id


def _record(services: Services, machine_id: int) -> Deployment:
    with services.db.read_session() as s:
        record = deploy.running_deployment(s, machine_id)
        assert record is not None
        return record


def _set_phases(services: Services, machine_id: int, **ages_s: float) -> None:
    now = utcnow()
    with services.db.transaction() as s:
        record = deploy.running_deployment(s, machine_id)
        assert record is not None
        record.phases = {
            **record.phases,
            **{k: (now - timedelta(seconds=v)).isoformat() for k, v in ages_s.items()},
        }
        s.add(record)


def test_a_new_deploy_needs_a_power_cycle_and_keys_are_per_deploy(services: Services) -> None:
    machine_id = _deploying(services)
    engine = DeployEngine(services)
    assert [w.step for w in engine.scan()] == ["power"]
    record = _record(services, machine_id)
    assert record.ssh_public_key.startswith("ssh-ed25519 ")
    private = services.secrets.decrypt(record.ssh_private_key_encrypted)
    assert "OPENSSH PRIVATE KEY" in private and private not in record.ssh_private_key_encrypted
    # The callback token is per deployment and not the uuid itself.
    token = deploy.callback_token(services.secrets, record.uuid)
    assert len(token) == 64 and record.uuid not in token


def test_locked_machines_are_left_alone(services: Services) -> None:
    from provisiond import locks

    machine_id = _deploying(services)
    assert locks.try_acquire(services.db, machine_id, "someone-else", ttl_s=60)
    assert DeployEngine(services).scan() == []


def test_installing_agent_installs_then_times_out_without_heartbeat(services: Services) -> None:
    machine_id = _deploying(services)
    _set_phases(services, machine_id, power_cycle=30)
    with services.db.transaction() as s:
        m = s.get(Machine, machine_id)
        assert m is not None
        advance(s, m, Ev.BOOTED, actor="test")
    engine = DeployEngine(services)
    assert [w.step for w in engine.scan()] == ["install"]
    _set_phases(services, machine_id, agent_installed=5)
    assert engine.scan() == []
    limit = services.settings.agent_heartbeat_timeout_s
    _set_phases(services, machine_id, agent_installed=limit + 5)
    [work] = engine.scan()
    assert work.step == "heartbeat_timeout"
    asyncio.run(engine._drive(work))
    with services.db.read_session() as s:
        m = s.get(Machine, machine_id)
        assert m is not None and m.state == State.DEPLOY_FAILED
        assert m.last_error is not None
        assert m.last_error["reason"] == f"no agent heartbeat {limit:.0f} s after install"
        record = s.exec(select(Deployment)).one()
        assert record.outcome == "failed" and record.finished_at is not None


def test_a_boot_lost_across_a_restart_is_retried_from_power_cycle(services: Services) -> None:
    machine_id = _deploying(services)
    wait = services.settings.lost_boot_s
    _set_phases(services, machine_id, power_cycle=wait + 60)
    engine = DeployEngine(services)
    engine.started_at = utcnow() - timedelta(seconds=wait + 90)
    assert engine.scan() == []  # the power-cycle came after this engine started: just wait
    engine.started_at = utcnow() - timedelta(seconds=wait - 10)
    assert engine.scan() == []  # restarted after the power-cycle: wait lost_boot_s first
    engine.started_at = utcnow() - timedelta(seconds=wait + 10)
    attempts = services.settings.deploy_max_attempts
    for attempt in range(2, attempts + 1):
        [work] = engine.scan()
        assert work.step == "repower"
        asyncio.run(engine._drive(work))
        record = _record(services, machine_id)
        assert record.attempt == attempt and "power_cycle" not in record.phases
        assert [w.step for w in engine.scan()] == ["power"]
        _set_phases(services, machine_id, power_cycle=wait + 60)
    [work] = engine.scan()
    asyncio.run(engine._drive(work))
    with services.db.read_session() as s:
        m = s.get(Machine, machine_id)
        assert m is not None and m.state == State.DEPLOY_FAILED
        assert m.last_error is not None
        assert f"gave up after {attempts} attempts" in m.last_error["reason"]
        outcomes = [
            r.outcome for r in s.exec(select(Deployment).order_by(col(Deployment.id))).all()
        ]
        assert outcomes == ["superseded"] * (attempts - 1) + ["failed"]
        retries = s.exec(select(Event).where(Event.event == "retry")).all()
        assert len(retries) == attempts - 1


def test_releasing_machines_are_released(services: Services) -> None:
    machine_id = _deploying(services)
    with services.db.transaction() as s:
        m = s.get(Machine, machine_id)
        assert m is not None
        deploy.fail(s, m, actor="test", reason="lease ended", settings=services.settings)
        deploy.start_release(s, m, actor="test", reason="lease ended", settings=services.settings)
    engine = DeployEngine(services)
    [work] = engine.scan()
    assert work.step == "release"
    # No OS with our key ran and no BMC: the wipe is skipped (with an event) and the
    # machine is available again.
    asyncio.run(engine._drive(work))
    with services.db.read_session() as s:
        m = s.get(Machine, machine_id)
        assert m is not None and m.state == State.AVAILABLE
        skipped = s.exec(select(Event).where(Event.event == "wipe_skipped")).all()
        assert len(skipped) == 1


def test_a_step_that_raises_backs_off_instead_of_spinning(services: Services) -> None:
    """A bug in a step (here a power step whose BMC lookup raises) must not be retried
    in a tight loop: the engine waits 2, 4 ... 60 s before trying that machine again."""
    _deploying(services)
    engine = DeployEngine(services)
    calls = 0

    async def broken(item: object) -> None:
        nonlocal calls
        calls += 1
        raise RuntimeError("a bug in the step")

    engine._power_step = broken  # type: ignore[method-assign]

    async def run() -> None:
        for _ in range(20):
            await engine.tick()
            await engine.drain(timeout=5)

    asyncio.run(run())
    assert calls == 1
    machine_id = next(iter(engine._backoff))
    failed, until = engine._backoff[machine_id]
    assert failed == 1 and until > 0
    engine._backoff[machine_id] = (failed, 0.0)  # the wait is over
    asyncio.run(run())
    assert calls == 2 and engine._backoff[machine_id][0] == 2
    with services.db.read_session() as s:  # the lock went back each time
        assert s.get(Machine, machine_id).lock_owner is None  # type: ignore[union-attr]
