"""API tokens and roles: admin > operator > ci.

A token is shown once at creation and stored as its SHA-256 (tokens carry 256
random bits, so a slow hash adds nothing). Look-up is by hash.
"""

from __future__ import annotations

import hashlib
import secrets
from enum import IntEnum

from sqlmodel import Session, select

from provisiond.errors import BadRequest, Conflict, Unauthorized
from provisiond.models import ApiToken

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
