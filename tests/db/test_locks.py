"""DB machine locks: racing sessions, expiry, ownership (SQLite and PostgreSQL)."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import pytest

from provisiond import lifecycle, locks
from provisiond.db import Database
from provisiond.errors import MachineLocked
from provisiond.lifecycle import Ev
from provisiond.models import Machine, utcnow


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
