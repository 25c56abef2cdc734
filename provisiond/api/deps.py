"""FastAPI dependencies: services, DB sessions and role checks."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Annotated

from fastapi import Depends, Request
from sqlmodel import Session

from provisiond.auth import Role, authenticate
from provisiond.errors import Forbidden
from provisiond.models import ApiToken
from provisiond.services.container import Services


async def get_services(request: Request) -> Services:
    # async: a plain attribute read, not worth a hop to the thread pool (sync
    # dependencies run there)
    services: Services = request.app.state.services
    return services


ServicesDep = Annotated[Services, Depends(get_services)]


def _read_session(services: ServicesDep) -> Iterator[Session]:
    with services.db.read_session() as session:
        yield session


def _write_session(services: ServicesDep) -> Iterator[Session]:
    with services.db.transaction() as session:
        yield session


ReadSession = Annotated[Session, Depends(_read_session)]
#: Commits after the route returns, rolls back when it raises.
# scope="function": the commit happens before the response is sent. By default a
# yield dependency closes after the response, so a client saw success for a write
# that was not committed yet (or failed to commit), and on SQLite the write slot
# stayed held while the response went out through the event loop.
WriteSession = Annotated[Session, Depends(_write_session, scope="function")]


def require(role: Role) -> Callable[..., ApiToken]:
    """A dependency that authenticates the bearer token and checks its role."""

    def dependency(request: Request, services: ServicesDep) -> ApiToken:
        with services.db.read_session() as session:
            token = authenticate(session, request.headers.get("authorization"))
        services.token_use.note(token)
        if Role[token.role] < role:
            raise Forbidden(
                f"token {token.name!r} has role {token.role}; this needs {role.name} or higher",
                hint="ask an admin for a token with a higher role",
            )
        request.state.actor = f"token:{token.name}"
        return token

    return dependency


CI = Annotated[ApiToken, Depends(require(Role.ci))]
Operator = Annotated[ApiToken, Depends(require(Role.operator))]
Admin = Annotated[ApiToken, Depends(require(Role.admin))]


def actor(request: Request) -> str:
    return getattr(request.state, "actor", "anonymous")


def request_id(request: Request) -> str:
    return getattr(request.state, "request_id", "")
