"""API tokens over the API (admin only): create (shown once), list, revoke."""

from __future__ import annotations

from sqlmodel import Session, col, func, select

from provisiond import auth
from provisiond.crud import get_by_name
from provisiond.errors import Conflict
from provisiond.events import audit
from provisiond.models import Allocation, ApiToken
from provisiond.schemas.catalog import TokenCreated, TokenIn, TokenOut


def list_tokens(session: Session) -> list[TokenOut]:
    rows = session.exec(select(ApiToken).order_by(ApiToken.name))
    return [TokenOut.model_validate(row) for row in rows]


def get_token(session: Session, name: str) -> TokenOut:
    return TokenOut.model_validate(get_by_name(session, ApiToken, name, kind="token"))


def create_token(
    session: Session, spec: TokenIn, *, actor: str, request_id: str = ""
) -> TokenCreated:
    row, clear = auth.create_token(
        session,
        name=spec.name,
        role=spec.role,
        quota_machines=spec.quota_machines,
        expires_at=None if spec.expires is None else auth.parse_expiry(spec.expires),
    )
    expiry = "" if row.expires_at is None else f", expires {row.expires_at:%Y-%m-%d %H:%M} UTC"
    audit(
        session,
        "token_create",
        f"created {row.role} token {row.name}{expiry}",
        actor=actor,
        request_id=request_id,
    )
    return TokenCreated.model_validate(
        {**TokenOut.model_validate(row).model_dump(), "token": clear}
    )


def delete_token(session: Session, name: str, *, actor: str, request_id: str = "") -> None:
    row = get_by_name(session, ApiToken, name, kind="token")
    if row.role == "admin":
        admins = session.exec(select(func.count()).where(ApiToken.role == "admin")).one()
        if admins <= 1:
            raise Conflict(
                f"token {name} is the last admin token",
                hint="create another admin token first, so the API keeps an administrator",
            )
    # Allocations cascade with their token: refuse while one still holds a machine.
    holding = session.exec(
        select(func.count()).where(
            Allocation.owner_token_id == row.id,
            col(Allocation.machine_id).is_not(None),
            col(Allocation.released_at).is_(None),
        )
    ).one()
    if holding:
        raise Conflict(
            f"token {name} still holds {holding} machine(s) through allocations",
            hint="release its allocations first; deleting the token would orphan those machines",
        )
    audit(session, "token_delete", f"revoked token {name}", actor=actor, request_id=request_id)
    session.delete(row)
    session.flush()
