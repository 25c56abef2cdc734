"""Machine locks that live in the database, so they hold across daemons.

A lock is the pair (``lock_owner``, ``lock_expires``) on the machine row, taken
by one conditional UPDATE and a rowcount check (Ironic's reservation pattern
with an expiry added). Each call runs in its own short transaction so other
daemons see it at once, except :func:`hold`, which runs in the caller's.

    with machine_lock(db, machine_id, owner="host-a:1234:20250101T101500.000000Z:power"):
        ...  # power-cycle, wait, etc.

Owners are per process. An owner starts with the daemon id (``host:pid:start``,
:func:`provisiond.container.daemon_id`), so two daemons on one host, or a daemon
and its restarted successor, never share one. A lock is re-entrant only for the
very owner that took it.

Takeover rule: a lock passes to another owner when it expires (at most
``lock_ttl_s`` after its holder last renewed it), with one exception: a daemon
that holds its data dir's flock drops the locks of the daemon that ran from that
data dir before it (:func:`take_over`, :mod:`provisiond.deploy.succession`); the
kernel released that flock, so the predecessor is dead. Nothing else counts as
proof: a lock is never taken because its owner "looks dead" (same host, pid gone),
since pids are reused and containers that share a host name have separate pid
spaces.

A holder that works longer than the TTL renews (:func:`renew`, every third of it),
and writes its result only in a transaction that first confirms the lock is still
its own (:func:`hold`, the fence): if the lock expired and another owner took it,
that owner may be doing the same work, and the late result must not be applied.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta

from sqlalchemy import ColumnElement, or_, select, update
from sqlmodel import Session, col

from provisiond.cluster.clock import db_time
from provisiond.db import Database
from provisiond.errors import MachineLocked, NotFound
from provisiond.models import Machine


def try_acquire(
    db: Database, machine_id: int, owner: str, *, ttl_s: float, now: datetime | None = None
) -> bool:
    """Take or extend the lock; False when someone else holds an unexpired lock."""
    with db.transaction() as session:
        now = now or db_time(session)  # several daemons: the database's clock, not ours
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


def hold(
    session: Session, machine_id: int, owner: str, *, ttl_s: float, now: datetime | None = None
) -> bool:
    """In the caller's transaction: extend the lock if ``owner`` still holds it.

    False when another owner took it (or it was released): the fence a holder runs
    before it writes its result. The row stays locked by this UPDATE until the
    caller commits, so no one can take the lock between the check and the write.
    An expired lock that nobody took is still ``owner``'s, and extended.
    """
    now = now or db_time(session)
    result = session.execute(
        update(Machine)
        .where(col(Machine.id) == machine_id, col(Machine.lock_owner) == owner)
        .values(lock_expires=now + timedelta(seconds=ttl_s))
        .execution_options(synchronize_session=False)
    )
    return bool(result.rowcount == 1)  # type: ignore[attr-defined]


def renew(
    db: Database, machine_id: int, owner: str, *, ttl_s: float, now: datetime | None = None
) -> bool:
    """Extend ``owner``'s lock for another ``ttl_s``; False when it is no longer theirs.

    Unlike :func:`try_acquire`, it never takes a free lock: a heartbeat that runs late,
    after its step released the lock, must not lock the machine again.
    """
    with db.transaction() as session:
        return hold(session, machine_id, owner, ttl_s=ttl_s, now=now)


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


def owned_by(daemon: str) -> ColumnElement[bool]:
    """Lock owners of the daemon ``daemon``: ``<id>:<role>...`` or ``<id>#<epoch>:<role>...``."""
    owner = col(Machine.lock_owner)
    return or_(
        owner.startswith(f"{daemon}:", autoescape=True),
        owner.startswith(f"{daemon}#", autoescape=True),
    )


def drop_owned(session: Session, daemon: str) -> list[tuple[int, str]]:
    """In the caller's transaction: drop every lock of ``daemon``; (id, name) of each."""
    rows = session.execute(
        update(Machine)
        .where(owned_by(daemon))
        .values(lock_owner=None, lock_expires=None)
        .returning(col(Machine.id), col(Machine.name))
        .execution_options(synchronize_session=False)
    )
    return sorted((int(i), str(n)) for i, n in rows.all())


def take_over(db: Database, predecessor: str) -> list[str]:
    """Drop every lock of the daemon ``predecessor`` (a daemon id) at once.

    Only for a predecessor proven dead (see :mod:`provisiond.deploy.succession` and
    :mod:`provisiond.cluster.members`). Returns the machines' names.
    """
    with db.transaction() as session:
        return sorted(name for _, name in drop_owned(session, predecessor))


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
