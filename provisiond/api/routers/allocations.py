"""``/api/v1/allocations``: request, watch, renew and release machines (ci and up)."""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import APIRouter, Header, Query, Request, Response, status
from fastapi.responses import StreamingResponse

from provisiond.allocations import service as allocations
from provisiond.allocations import watch as allocation_watch
from provisiond.api.admission import client_gone
from provisiond.api.deps import CI, ReadSession, ServicesDep, actor
from provisiond.api.deps import request_id as rid
from provisiond.schemas.allocations import AllocationIn, AllocationOut, RenewIn
from provisiond.schemas.base import Key

router = APIRouter(prefix="/api/v1/allocations", tags=["allocations"])

IdempotencyKey = Annotated[
    str | None, Header(alias="Idempotency-Key", max_length=128, pattern=r"^[\x21-\x7e]+$")
]


@router.post("", response_model=AllocationOut, status_code=status.HTTP_201_CREATED)
def create_allocation(
    spec: AllocationIn,
    request: Request,
    token: CI,
    services: ServicesDep,
    idempotency_key: IdempotencyKey = None,
) -> Response:
    """Answers at once: ``deploying`` when a machine matched, else ``pending`` (queued).

    The same ``Idempotency-Key`` with the same body returns the same allocation (200);
    with a different body it is a 409."""
    out, created = allocations.create(
        services,
        token,
        spec,
        idempotency_key=idempotency_key,
        actor=actor(request),
        request_id=rid(request),
    )
    return _json(out, status.HTTP_201_CREATED if created else status.HTTP_200_OK)


def _json(out: AllocationOut, code: int = status.HTTP_200_OK) -> Response:
    """The hot paths' answer, serialized once (the model is built by the service; the
    route's response_model stays for the OpenAPI schema, not for a second validation)."""
    return Response(out.model_dump_json(), status_code=code, media_type="application/json")


@router.get("", response_model=list[AllocationOut])
def list_allocations(
    token: CI,
    session: ReadSession,
    state: Key | None = None,
    owner: Key | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[AllocationOut]:
    """Newest first; ``state`` may be a comma-separated list. ci tokens see their own."""
    return allocations.list_allocations(session, token, state=state, owner=owner, limit=limit)


@router.get("/{ident}", response_model=AllocationOut)
async def get_allocation(
    ident: Key,
    request: Request,
    token: CI,
    services: ServicesDep,
    wait: Annotated[float, Query(ge=0, le=allocation_watch.WAIT_MAX_S)] = 0,
    since_state: Key | None = None,
) -> AllocationOut:
    """With ``wait=S``, holds the answer until the state differs from ``since_state``
    (default: the state when the call arrived), for at most S seconds (max 300)."""
    return await allocation_watch.wait_for_change(
        services, token, ident, wait=wait, since_state=since_state, gone=client_gone(request.scope)
    )


@router.get("/{ident}/events", response_class=StreamingResponse)
async def stream_allocation(
    ident: Key,
    token: CI,
    services: ServicesDep,
    duration: Annotated[float, Query(ge=1, le=allocation_watch.STREAM_MAX_S)] = 300,
) -> StreamingResponse:
    """Server-sent events (text/event-stream) until the allocation is final, or for
    ``duration`` seconds at most."""
    await asyncio.to_thread(allocation_watch.read, services, token, ident)  # 404 before streaming
    return StreamingResponse(
        allocation_watch.stream(services, token, ident, duration=duration),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )


@router.post("/{ident}/renew", response_model=AllocationOut)
def renew_allocation(
    ident: Key, spec: RenewIn, request: Request, token: CI, services: ServicesDep
) -> AllocationOut:
    """Sets the lease to ``lease`` from now (up to the role's maximum)."""
    return allocations.renew(
        services, token, ident, spec.lease, actor=actor(request), request_id=rid(request)
    )


@router.delete("/{ident}", response_model=AllocationOut)
def release_allocation(ident: Key, request: Request, token: CI, services: ServicesDep) -> Response:
    """Releases early: the machine is wiped and returned to the pool. Idempotent."""
    out = allocations.release(services, token, ident, actor=actor(request), request_id=rid(request))
    return _json(out)
