"""How provisiond's PostgreSQL sessions are set up (libpq connection options)."""

from __future__ import annotations

from typing import Any

from sqlalchemy.engine import make_url

#: Every PostgreSQL session: a transaction left open without a statement for 15 s is
#: ended by the server (a paused or cut-off daemon must not hold row locks that the
#: others' takeover waits on), and TCP keepalives find a dead peer in about 25 s.
POSTGRES_SESSION: dict[str, Any] = {
    "options": "-c idle_in_transaction_session_timeout=15000",
    "keepalives": 1,
    "keepalives_idle": 10,
    "keepalives_interval": 5,
    "keepalives_count": 3,
}


def libpq_url(url: str) -> str:
    """The SQLAlchemy URL as a libpq URL (psycopg, the lease hook). It holds the
    password: never log it."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
