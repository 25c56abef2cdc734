"""The database's clock: every cluster time (heartbeats, leases) is read from it."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import text
from sqlmodel import Session

from provisiond.models import utcnow


def db_time(session: Session) -> datetime:
    """``now()`` on PostgreSQL (the start of the current transaction, as UTC).

    On SQLite, the one daemon's own clock: there is no other daemon to disagree with.
    """
    if session.get_bind().dialect.name != "postgresql":
        return utcnow()
    value = session.execute(text("SELECT now()")).scalar_one()
    assert isinstance(value, datetime)
    return value.astimezone(UTC)


#: The longest a cluster statement waits for a row lock (a paused daemon's open
#: transaction is ended by the server's idle timeout, provisiond.pg_session).
LOCK_WAIT_MS = 3000


def bounded_lock_wait(session: Session) -> None:
    """In the caller's transaction (PostgreSQL): give up on a row lock after LOCK_WAIT_MS."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text(f"SET LOCAL lock_timeout = {LOCK_WAIT_MS}"))
