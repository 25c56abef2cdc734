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
