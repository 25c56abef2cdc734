from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request, Response, status
from fastapi.responses import StreamingResponse

from provisiond.api.deps import CI, Operator, ReadSession, ServicesDep, WriteSession, actor
from provisiond.api.deps import request_id as rid
from provisiond.machines import listing
from provisiond.machines import service as machines
from provisiond.schemas.base import Key
from provisiond.schemas.resources import MachineEventIn, MachineIn, MachineOut, MachinePatch

router = APIRouter(prefix="/api/v1/machines", tags=["machines"])


@router.get(
    "",
    response_model=list[MachineOut],
    responses={
        200: {
            "description": "One page of machines by name (a JSON array); with "
            "``stream=true`` every matching machine as NDJSON, one per line",
            "headers": {
                "Link": {
                    "description": 'The next page: ``<URL>; rel="next"``; absent on the last',
                    "schema": {"type": "string"},
                }
            },
            "content": {"application/x-ndjson": {"schema": {"type": "string"}}},
        }
    },
)
def list_machines(
    request: Request,
    _: CI,
    session: ReadSession,
    services: ServicesDep,
    state: Key | None = None,
    rack: Key | None = None,
    tag: Key | None = None,
    arch: Key | None = None,
    limit: Annotated[Key | None, Query(description="Page size: 1-1000, default 500")] = None,
    cursor: Annotated[
        str | None,  # checked by listing.parse, with its own hint
        Query(description='From the Link header of the page before (rel="next"); opaque'),
    ] = None,
    stream: Annotated[
        bool, Query(description="Every matching machine as NDJSON; no limit or cursor")
    ] = False,
) -> Response:
    """Machines by name, a page at a time: ``limit`` 1-1000 (default 500), then the
    ``Link`` header's ``rel="next"`` URL (it carries ``cursor``) until there is none.
    ``stream=true``: every matching machine as NDJSON, built a chunk at a time.
    The filters (``state``, ``rack``, ``tag``, ``arch``) apply to both."""
    query = listing.parse(
        session,
        state=state,
        rack=rack,
        tag=tag,
        arch=arch,
        limit=limit,
        cursor=cursor,
        stream=stream,
    )
    if stream:
        return StreamingResponse(
            listing.export(services.db, query), media_type="application/x-ndjson"
        )
    items, next_cursor = listing.page(session, query)
    headers = {}
    if next_cursor is not None:
        headers["Link"] = f'<{request.url.include_query_params(cursor=next_cursor)}>; rel="next"'
    return Response(listing.PAGE.dump_json(items), media_type="application/json", headers=headers)


@router.post("", response_model=MachineOut, status_code=status.HTTP_201_CREATED)
def create_machine(
    spec: MachineIn, request: Request, _: Operator, session: WriteSession, services: ServicesDep
) -> MachineOut:
    return machines.create_machine(
        session,
        services.secrets,
        spec,
        actor=actor(request),
        hosts_changed=services.hosts_changed,
        request_id=rid(request),
    )


@router.get("/{ident}", response_model=MachineOut)
def get_machine(ident: Key, _: CI, session: ReadSession) -> MachineOut:
    return machines.get_machine(session, ident)


@router.patch("/{ident}", response_model=MachineOut)
def update_machine(
    ident: Key,
    patch: MachinePatch,
    request: Request,
    _: Operator,
    session: WriteSession,
    services: ServicesDep,
) -> MachineOut:
    return machines.update_machine(
        session,
        services.secrets,
        ident,
        patch,
        actor=actor(request),
        hosts_changed=services.hosts_changed,
        request_id=rid(request),
    )


@router.delete("/{ident}", status_code=status.HTTP_204_NO_CONTENT)
def delete_machine(
    ident: Key, request: Request, _: Operator, session: WriteSession, services: ServicesDep
) -> None:
    machines.delete_machine(
        session,
        ident,
        actor=actor(request),
        hosts_changed=services.hosts_changed,
        request_id=rid(request),
    )


@router.post("/{ident}/events", response_model=MachineOut)
def fire_event(
    ident: Key,
    spec: MachineEventIn,
    request: Request,
    _: Operator,
    session: WriteSession,
    services: ServicesDep,
) -> MachineOut:
    return machines.fire_event(
        session,
        ident,
        spec,
        actor=actor(request),
        settings=services.settings,
        secrets=services.secrets,
        wake_deployer=services.wake_deployer,
        request_id=rid(request),
    )
