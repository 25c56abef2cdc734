"""Machine locks that live in the database, so they hold across daemons.

A lock is the pair (``lock_owner``, ``lock_expires``) on the machine row, taken
by one conditional UPDATE and a rowcount check (Ironic's reservation pattern
with an expiry added). A daemon that dies loses its locks when they expire.
Each call runs in its own short transaction so other daemons see it at once.

    with machine_lock(db, machine_id, owner="deploy:host-a:1234"):
        ...  # power-cycle, wait, etc.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta

from sqlalchemy import or_, select, update
from sqlmodel import col

from provisiond.db import Database
from provisiond.errors import MachineLocked, NotFound
from provisiond.models import Machine, utcnow


def try_acquire(
    db: Database, machine_id: int, owner: str, *, ttl_s: float, now: datetime | None = None
) -> bool:
    """Take or extend the lock; False when someone else holds an unexpired lock."""
    now = now or utcnow()
    with db.transaction() as session:
        result = session.execute(
            update(Machine)
            .where(
                col(Machine.id) == machine_id,
                or_(
                    col(Machine.lock_owner).is_(None),
                    col(Machine.lock_owner) == owner,
                    col(Machine.lock_expires) < now,
                ),
            )
            .values(lock_owner=owner, lock_expires=now + timedelta(seconds=ttl_s))
            .execution_options(synchronize_session=False)
        )
        return bool(result.rowcount == 1)  # type: ignore[attr-defined]


def release(db: Database, machine_id: int, owner: str) -> bool:
    """Drop the lock if ``owner`` holds it; True when it did."""
    with db.transaction() as session:
        result = session.execute(
            update(Machine)
            .where(col(Machine.id) == machine_id, col(Machine.lock_owner) == owner)
            .values(lock_owner=None, lock_expires=None)
            .execution_options(synchronize_session=False)
        )
        return bool(result.rowcount == 1)  # type: ignore[attr-defined]


def acquire(db: Database, machine_id: int, owner: str, *, ttl_s: float) -> None:
    """Take the lock or raise MachineLocked naming the holder and when it expires."""
    if try_acquire(db, machine_id, owner, ttl_s=ttl_s):
        return
    with db.read_session() as session:
        row = session.execute(
            select(col(Machine.name), col(Machine.lock_owner), col(Machine.lock_expires)).where(
                col(Machine.id) == machine_id
            )
        ).first()
    if row is None:
        raise NotFound(f"machine {machine_id} does not exist", hint="list machines to find it")
    name, holder, expires = row
    raise MachineLocked(
        f"machine {name} is locked by {holder} until {expires:%Y-%m-%d %H:%M:%S} UTC",
        hint="wait for that operation to finish; the lock expires by itself if its owner died",
    )


@contextmanager
def machine_lock(db: Database, machine_id: int, owner: str, *, ttl_s: float) -> Iterator[None]:
    acquire(db, machine_id, owner, ttl_s=ttl_s)
    try:
        yield
    finally:
        release(db, machine_id, owner)
