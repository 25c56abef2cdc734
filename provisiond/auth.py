"""API tokens and roles: admin > operator > ci.

A token is shown once at creation and stored as its SHA-256 (tokens carry 256
random bits, so a slow hash adds nothing). Look-up is by hash. ``last_used_at`` is
kept to about a minute (:class:`TokenUse`), so an admin can spot stale tokens
without a database write on every request.

A token may expire (``expires_at``; ``token create --expires 90d``). An expired
token is refused (401 ``token_expired``) and its use is audited, but at most once
per token per flush of :class:`TokenUse` (a minute), with a count: a client looping
on an expired token costs one event a minute, not one per request.
"""

from __future__ import annotations

import hashlib
import logging
import re
import secrets
import sqlite3
import threading
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import IntEnum

from sqlalchemy import or_, update
from sqlalchemy.exc import SQLAlchemyError
from sqlmodel import Session, col, select

from provisiond.db import Database
from provisiond.errors import BadRequest, Conflict, Problem, Unauthorized, ValidationFailed
from provisiond.events import audit
from provisiond.models import ApiToken, utcnow

#: How stale ``last_used_at`` may get before a request notes a new use.
LAST_USED_RESOLUTION = timedelta(minutes=1)
log = logging.getLogger(__name__)

TOKEN_PREFIX = "pvd_"  # noqa: S105  (a prefix, not a secret)

_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_DURATION = re.compile(r"(?:[0-9]+[smhdw])+")
_EXPIRY_HINT = (
    "give a duration such as 90d, 12h or 2w (units s, m, h, d, w), "
    "or an ISO 8601 date such as 2027-01-31 (UTC unless it has an offset)"
)


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


def parse_expiry(value: str, now: datetime | None = None) -> datetime:
    """``"90d"``, ``"12h"``, ``"1w2d"`` (from ``now``) or an ISO 8601 date or date-time.

    >>> parse_expiry("2d", datetime(2030, 1, 1, tzinfo=UTC))
    datetime.datetime(2030, 1, 3, 0, 0, tzinfo=datetime.timezone.utc)
    """
    now = now or utcnow()
    text = value.strip().lower()
    try:
        if _DURATION.fullmatch(text):
            seconds = sum(
                int(n) * _UNIT_SECONDS[unit] for n, unit in re.findall(r"([0-9]+)([a-z])", text)
            )
            when = now + timedelta(seconds=seconds)
        else:
            parsed = datetime.fromisoformat(value.strip())
            when = parsed.astimezone(UTC) if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    except ValueError:
        raise ValidationFailed(
            [Problem("expires", f"{value!r} is neither a duration nor an ISO 8601 date")],
            hint=_EXPIRY_HINT,
        ) from None
    except OverflowError:
        raise ValidationFailed(
            [Problem("expires", f"{value!r} is too far in the future")], hint=_EXPIRY_HINT
        ) from None
    if when <= now:
        raise ValidationFailed(
            [Problem("expires", f"{value!r} is not in the future ({when:%Y-%m-%d %H:%M} UTC)")],
            hint=_EXPIRY_HINT,
        )
    return when


def create_token(
    session: Session,
    *,
    name: str,
    role: str,
    quota_machines: int | None = None,
    expires_at: datetime | None = None,
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
        expires_at=expires_at,
    )
    session.add(row)
    session.flush()
    return row, clear


def authenticate(session: Session, header: str | None, uses: TokenUse) -> ApiToken:
    """The token row for an ``Authorization`` header; expired uses are noted in ``uses``."""
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
    now = utcnow()
    if row.expires_at is not None and row.expires_at <= now:
        uses.expired(row, now)
        raise Unauthorized(
            f"token {row.name!r} expired at {row.expires_at:%Y-%m-%d %H:%M:%S} UTC",
            hint="ask an admin for a new token ('provisiond token create'), "
            "then set PROVISIOND_TOKEN to it",
            code="token_expired",
        )
    return row


@dataclass
class _ExpiredUses:
    """Uses of one expired token since the last flush."""

    name: str
    expires_at: datetime
    first: datetime
    last: datetime
    count: int = 1


class TokenUse:
    """When each token was last used, gathered in memory and written in one batch.

    The auth dependency calls :meth:`note` on every request (a dict store, no I/O);
    the scheduler calls :meth:`flush` every minute and the daemon once more when it
    stops. So ``last_used_at`` is exact to about a minute at no per-request cost, and
    a busy database never slows a request down for it.
    """

    def __init__(self) -> None:
        self._seen: dict[int, datetime] = {}
        self._expired: dict[int, _ExpiredUses] = {}
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

    def expired(self, token: ApiToken, now: datetime) -> None:
        """Note a refused use of an expired token; :meth:`flush` audits it once, with a count."""
        if token.id is None or token.expires_at is None:
            return
        with self._lock:
            noted = self._expired.get(token.id)
            if noted is None:
                self._expired[token.id] = _ExpiredUses(token.name, token.expires_at, now, now)
            else:
                noted.last, noted.count = now, noted.count + 1

    def flush(self, db: Database) -> int:
        """Write what was noted; returns how many tokens were updated or audited."""
        with self._lock:
            seen, self._seen = self._seen, {}
            expired, self._expired = self._expired, {}
        if not seen and not expired:
            return 0
        try:
            with db.transaction() as session:
                for uses in expired.values():
                    audit(
                        session,
                        "token_expired_use",
                        f"expired token {uses.name} was refused {uses.count} time(s) "
                        f"(expired {uses.expires_at:%Y-%m-%d %H:%M:%S} UTC)",
                        actor=f"token:{uses.name}",
                        details={
                            "count": uses.count,
                            "first": uses.first.isoformat(),
                            "last": uses.last.isoformat(),
                            "expired_at": uses.expires_at.isoformat(),
                        },
                    )
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
                for token_id, uses in expired.items():
                    newer = self._expired.get(token_id)
                    if newer is not None:
                        uses.last, uses.count = newer.last, uses.count + newer.count
                    self._expired[token_id] = uses
            return 0
        return len(seen) + len(expired)
