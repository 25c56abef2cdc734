"""Roles exactly one daemon holds: a row per role, a holder, an expiry and an epoch.

The pattern of Oban's and Procrastinate's leader rows, not session advisory locks
(which break under PgBouncer's transaction pooling). All times are the database's.

- :func:`lead` takes a free or expired role, or renews one already held; the epoch
  grows each time the holder changes.
- :func:`hold` is the fence: in the caller's transaction, the role is still this
  holder's at this epoch and unexpired (the row is share-locked until commit, so it
  cannot pass to another holder between the check and the write).
- :func:`resign` hands a role back at once (drain, stop).

A holder is ``<daemon id>#<daemon epoch>``: a daemon that rejoined after being
declared dead is a new holder.
"""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import update
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlmodel import Session, col, select

from provisiond.cluster.clock import bounded_lock_wait, db_time
from provisiond.db import Database
from provisiond.models import Leadership


def lead(db: Database, name: str, holder: str, ttl_s: float) -> int | None:
    """Take or renew ``name`` for ``ttl_s``: its epoch when ``holder`` holds it, else None."""
    try:
        with db.transaction() as session:
            bounded_lock_wait(session)
            now = db_time(session)
            expires = now + timedelta(seconds=ttl_s)
            row = session.get(Leadership, name, with_for_update=True)
            if row is None:
                session.add(
                    Leadership(
                        name=name, holder=holder, epoch=1, acquired_at=now, expires_at=expires
                    )
                )
                session.flush()
                return 1
            if row.holder != holder:
                if row.holder is not None and row.expires_at is not None and row.expires_at > now:
                    return None
                row.holder = holder
                row.epoch += 1
                row.acquired_at = now
            row.expires_at = expires
            session.add(row)
            return row.epoch
    except IntegrityError:  # another daemon made the row first: its role this round
        return None
    except OperationalError:  # the row stayed locked (lock_timeout): not ours this round
        return None


def hold(session: Session, name: str, holder: str, epoch: int) -> bool:
    """The fence: True while ``holder`` holds ``name`` at ``epoch``, unexpired."""
    now = db_time(session)
    row = session.exec(
        select(Leadership.name)
        .where(
            col(Leadership.name) == name,
            col(Leadership.holder) == holder,
            col(Leadership.epoch) == epoch,
            col(Leadership.expires_at) > now,
        )
        .with_for_update(read=True)
    ).first()
    return row is not None


def resign(db: Database, name: str, holder: str) -> bool:
    with db.transaction() as session:
        result = session.execute(
            update(Leadership)
            .where(col(Leadership.name) == name, col(Leadership.holder) == holder)
            .values(holder=None, expires_at=None)
            .execution_options(synchronize_session=False)
        )
        return bool(result.rowcount == 1)  # type: ignore[attr-defined]


def held_by(session: Session) -> dict[str, tuple[str, int]]:
    """Unexpired roles: name -> (holder, epoch)."""
    now = db_time(session)
    rows = session.exec(
        select(Leadership).where(
            col(Leadership.holder).is_not(None), col(Leadership.expires_at) > now
        )
    ).all()
    return {r.name: (str(r.holder), r.epoch) for r in rows}
