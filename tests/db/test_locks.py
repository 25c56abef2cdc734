"""DB machine locks: races, expiry, ownership, renewal, takeover (SQLite and PostgreSQL)."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path

import pytest

from provisiond import lifecycle, locks
from provisiond.container import daemon_id
from provisiond.db import Database
from provisiond.deploy.succession import Succession
from provisiond.errors import MachineLocked
from provisiond.lifecycle import Ev
from provisiond.models import Machine, utcnow

SECOND = timedelta(seconds=1)


def _machine(db: Database, name: str = "m1") -> int:
    with db.transaction() as session:
        machine = Machine(name=name)
        lifecycle.advance(session, machine, Ev.ENROLL, actor="t")
        assert machine.id is not None
        return machine.id


@pytest.mark.parametrize("racers", [2, 8])
def test_racing_sessions_exactly_one_wins(db: Database, racers: int) -> None:
    machine_id = _machine(db)
    for round_no in range(10):
        barrier = threading.Barrier(racers)

        def race(n: int, r: int = round_no, b: threading.Barrier = barrier) -> bool:
            b.wait(timeout=10)
            return locks.try_acquire(db, machine_id, f"owner-{r}-{n}", ttl_s=60)

        with ThreadPoolExecutor(racers) as pool:
            results = list(pool.map(race, range(racers)))
        assert results.count(True) == 1, results
        winner = results.index(True)
        assert locks.release(db, machine_id, f"owner-{round_no}-{winner}")


def test_lock_holder_expiry_and_release(db: Database) -> None:
    machine_id = _machine(db)
    assert locks.try_acquire(db, machine_id, "a", ttl_s=60)
    assert locks.try_acquire(db, machine_id, "a", ttl_s=60)  # re-entrant for its owner
    assert not locks.try_acquire(db, machine_id, "b", ttl_s=60)
    with pytest.raises(MachineLocked, match="locked by a until") as exc:
        locks.acquire(db, machine_id, "b", ttl_s=60)
    assert "expires" in exc.value.hint
    assert not locks.release(db, machine_id, "b")  # not the owner: no effect
    # A dead owner's lock expires: b takes it once the clock passes the expiry.
    later = utcnow() + timedelta(seconds=61)
    assert locks.try_acquire(db, machine_id, "b", ttl_s=60, now=later)
    assert not locks.release(db, machine_id, "a")
    assert locks.release(db, machine_id, "b")
    assert locks.try_acquire(db, machine_id, "c", ttl_s=60)


def test_context_manager_releases_on_error(db: Database) -> None:
    machine_id = _machine(db)
    with pytest.raises(RuntimeError), locks.machine_lock(db, machine_id, "op", ttl_s=60):
        raise RuntimeError("boom")
    assert locks.try_acquire(db, machine_id, "other", ttl_s=60)


def test_lock_on_one_machine_leaves_others_free(db: Database) -> None:
    a, b = _machine(db, "a"), _machine(db, "b")
    assert locks.try_acquire(db, a, "x", ttl_s=60)
    assert locks.try_acquire(db, b, "y", ttl_s=60)


def test_daemon_ids_differ_for_two_daemons_and_a_restart_on_one_host() -> None:
    started = utcnow()
    first = daemon_id("rack-a", 4242, started)
    assert first == f"rack-a:4242:{started:%Y%m%dT%H%M%S.%fZ}"
    assert daemon_id("rack-a", 4343, started) != first  # a second daemon
    assert daemon_id("rack-a", 4242, started + timedelta(seconds=5)) != first  # pid reused
    assert len(daemon_id("h" * 300, 4242, started) + ":engine") <= 128  # fits lock_owner


def test_a_restarted_daemon_waits_for_its_predecessors_locks_to_expire(db: Database) -> None:
    machine_id = _machine(db)
    start = utcnow()
    before, after = daemon_id("rack-a", 4242, start), daemon_id("rack-a", 4242, start + SECOND)
    assert locks.try_acquire(db, machine_id, f"{before}:engine", ttl_s=60)
    assert not locks.try_acquire(db, machine_id, f"{after}:engine", ttl_s=60)
    later = utcnow() + timedelta(seconds=61)
    assert locks.try_acquire(db, machine_id, f"{after}:engine", ttl_s=60, now=later)


def test_renew_extends_only_its_own_lock_and_never_takes_a_free_one(db: Database) -> None:
    machine_id = _machine(db)
    assert not locks.renew(db, machine_id, "a", ttl_s=60)  # free: a heartbeat takes nothing
    assert locks.try_acquire(db, machine_id, "a", ttl_s=1)
    assert locks.renew(db, machine_id, "a", ttl_s=60)
    assert not locks.try_acquire(db, machine_id, "b", ttl_s=60, now=utcnow() + 2 * SECOND)
    assert not locks.renew(db, machine_id, "b", ttl_s=60)
    # Expired but untaken: still a's, and a's renewal brings it back.
    assert locks.renew(db, machine_id, "a", ttl_s=60, now=utcnow() + timedelta(seconds=120))
    assert locks.release(db, machine_id, "a")
    assert not locks.renew(db, machine_id, "a", ttl_s=60)


def test_hold_fences_a_write_in_the_same_transaction(db: Database) -> None:
    machine_id = _machine(db)
    assert locks.try_acquire(db, machine_id, "a", ttl_s=60)
    with db.transaction() as session:
        assert locks.hold(session, machine_id, "a", ttl_s=60)
    later = utcnow() + timedelta(seconds=61)
    assert locks.try_acquire(db, machine_id, "b", ttl_s=60, now=later)
    with db.transaction() as session:
        assert not locks.hold(session, machine_id, "a", ttl_s=60)
    assert locks.release(db, machine_id, "b")


def test_a_successor_on_the_same_data_dir_takes_over_at_once(db: Database, tmp_path: Path) -> None:
    a, b = _machine(db, "a"), _machine(db, "b")
    start = utcnow()
    dead, other, heir = (daemon_id("rack-a", pid, start) for pid in (1, 2, 3))
    data_dir, elsewhere = tmp_path / "data", tmp_path / "other"
    first = Succession(data_dir, dead)
    assert first.take_over(db) == []  # nobody ran from this data dir before
    assert locks.try_acquire(db, a, f"{dead}:engine", ttl_s=600)
    assert locks.try_acquire(db, b, f"{other}:engine", ttl_s=600)  # another data dir's
    # While the first daemon lives, a second one on its data dir takes nothing.
    second = Succession(data_dir, heir)
    assert second.take_over(db) == []
    first.close()  # the first daemon dies: the kernel drops its flock
    stranger = Succession(elsewhere, heir)
    assert stranger.take_over(db) == []
    stranger.close()
    assert second.take_over(db) == ["a"]
    assert locks.try_acquire(db, a, f"{heir}:engine", ttl_s=600)
    assert not locks.try_acquire(db, b, f"{heir}:engine", ttl_s=600)
    second.close()
