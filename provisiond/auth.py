"""API tokens and roles: admin > operator > ci.

A token is shown once at creation and stored as its SHA-256 (tokens carry 256
random bits, so a slow hash adds nothing). Look-up is by hash. ``last_used_at`` is
kept to about a minute (:class:`TokenUse`), so an admin can spot stale tokens
without a database write on every request.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import sqlite3
import threading
from datetime import datetime, timedelta
from enum import IntEnum

from sqlalchemy import or_, update
from sqlalchemy.exc import SQLAlchemyError
from sqlmodel import Session, col, select

from provisiond.db import Database
from provisiond.errors import BadRequest, Conflict, Unauthorized
from provisiond.models import ApiToken, utcnow

#: How stale ``last_used_at`` may get before a request notes a new use.
LAST_USED_RESOLUTION = timedelta(minutes=1)
log = logging.getLogger(__name__)

TOKEN_PREFIX = "pvd_"  # noqa: S105  (a prefix, not a secret)


class Role(IntEnum):
    ci = 1
    operator = 2
    admin = 3

    @classmethod
    def parse(cls, name: str) -> Role:
        try:
            return cls[name]
        except KeyError:
            raise BadRequest(
                f"unknown role {name!r}", hint="use one of: admin, operator, ci"
            ) from None


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def create_token(
    session: Session, *, name: str, role: str, quota_machines: int | None = None
) -> tuple[ApiToken, str]:
    """Store a new token; returns the row and the clear token, which is never stored."""
    Role.parse(role)
    if not name or len(name) > 64:
        raise BadRequest("token name must be 1-64 characters", hint="e.g. --name ci-runner-1")
    if session.exec(select(ApiToken).where(ApiToken.name == name)).first() is not None:
        raise Conflict(f"a token named {name!r} exists", hint="pick another --name")
    clear = TOKEN_PREFIX + secrets.token_urlsafe(32)
    row = ApiToken(
        name=name,
        role=role,
        token_hash=hash_token(clear),
        prefix=clear[: len(TOKEN_PREFIX) + 4],
        quota_machines=quota_machines,
    )
    session.add(row)
    session.flush()
    return row, clear


def authenticate(session: Session, header: str | None) -> ApiToken:
    if not header:
        raise Unauthorized(
            "this route needs a bearer token",
            hint="send 'Authorization: Bearer <token>'; create one with 'provisiond token create'",
        )
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized(
            "the Authorization header is not a bearer token",
            hint="send 'Authorization: Bearer <token>'",
        )
    row = session.exec(
        select(ApiToken).where(ApiToken.token_hash == hash_token(token.strip()))
    ).first()
    if row is None:
        raise Unauthorized(
            "the token is not known (revoked or mistyped)",
            hint="check PROVISIOND_TOKEN; an admin can list tokens with 'GET /api/v1/tokens'",
        )
    return row


class TokenUse:
    """When each token was last used, gathered in memory and written in one batch.

    The auth dependency calls :meth:`note` on every request (a dict store, no I/O);
    the scheduler calls :meth:`flush` every minute and the daemon once more when it
    stops. So ``last_used_at`` is exact to about a minute at no per-request cost, and
    a busy database never slows a request down for it.
    """

    def __init__(self) -> None:
        self._seen: dict[int, datetime] = {}
        self._lock = threading.Lock()

    def note(self, token: ApiToken, now: datetime | None = None) -> None:
        if token.id is None:
            return
        now = now or utcnow()
        stored = token.last_used_at
        if stored is not None and now - stored < LAST_USED_RESOLUTION:
            return  # what the database holds is recent enough
        with self._lock:
            self._seen[token.id] = now

    def flush(self, db: Database) -> int:
        """Write what was noted; returns how many tokens were updated."""
        with self._lock:
            seen, self._seen = self._seen, {}
        if not seen:
            return 0
        try:
            with db.transaction() as session:
                for token_id, at in seen.items():
                    session.execute(
                        update(ApiToken)
                        .where(
                            col(ApiToken.id) == token_id,
                            or_(
                                col(ApiToken.last_used_at).is_(None),
                                col(ApiToken.last_used_at) < at,
                            ),
                        )
                        .values(last_used_at=at)
                        .execution_options(synchronize_session=False)
                    )
        except (SQLAlchemyError, sqlite3.Error) as exc:  # the write-slot gate raises sqlite3's
            log.warning("token_last_used_not_recorded: %s", exc)
            with self._lock:  # keep them for the next flush (newer notes win)
                self._seen = {**seen, **self._seen}
            return 0
        return len(seen)
