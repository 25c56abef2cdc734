"""FastAPI dependencies: services, DB sessions and role checks."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Annotated

from fastapi import Depends, Request
from sqlmodel import Session

from provisiond.api.admission import client_gone
from provisiond.auth import Role, authenticate
from provisiond.container import Services
from provisiond.errors import ClientGone, Forbidden
from provisiond.models import ApiToken


async def get_services(request: Request) -> Services:
    # async: a plain attribute read, not worth a hop to the thread pool (sync
    # dependencies run there)
    services: Services = request.app.state.services
    return services


ServicesDep = Annotated[Services, Depends(get_services)]


def still_wanted(request: Request) -> None:
    """Raise :class:`ClientGone` when the client disconnected while this request waited
    (for a thread, a connection, the write slot): its work is dropped before it starts."""
    gone = client_gone(request.scope)
    if gone is not None and gone.is_set():
        raise ClientGone("the client went away before its request was served")


def _read_session(request: Request, services: ServicesDep) -> Iterator[Session]:
    still_wanted(request)
    with services.db.read_session() as session:
        yield session


def _write_session(request: Request, services: ServicesDep) -> Iterator[Session]:
    still_wanted(request)
    with services.db.transaction() as session:
        yield session


# scope="function" for both: the session closes (and a write commits) when the route
# returns, before FastAPI validates and serialises the answer. By default a yield
# dependency closes after the response is sent, so under load every pooled connection
# was held by a finished handler waiting for a thread to serialise its answer, while
# every thread waited for a connection (the daemon stalled for minutes); a client
# could also see success for a write that was not committed yet. Routes therefore
# return plain schemas, never ORM objects that would lazy-load after the close.
ReadSession = Annotated[Session, Depends(_read_session, scope="function")]
#: Commits after the route returns, rolls back when it raises.
WriteSession = Annotated[Session, Depends(_write_session, scope="function")]


def require(role: Role) -> Callable[..., ApiToken]:
    """A dependency that authenticates the bearer token and checks its role."""

    def dependency(request: Request, services: ServicesDep) -> ApiToken:
        still_wanted(request)
        with services.db.read_session() as session:
            token = authenticate(session, request.headers.get("authorization"), services.token_use)
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
