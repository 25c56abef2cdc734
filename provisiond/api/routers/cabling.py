"""The cabling check (planned switch ports against LLDP) and the PTM topology.dot.

- ``GET /api/v1/cabling?rack=R``: the verdict of each NIC port as the plan and the
  stored neighbours give it now;
- ``POST /api/v1/cabling/check?rack=R``: check again and record the verdicts (events,
  holds under ``cabling_policy = "hold"``);
- ``GET|PUT /api/v1/cabling/topology.dot``: the planned cabling as a PTM graph.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, Response

from provisiond.api.deps import CI, Admin, Operator, ReadSession, ServicesDep, WriteSession, actor
from provisiond.api.deps import request_id as rid
from provisiond.cabling import service, topology, views
from provisiond.errors import BadRequest
from provisiond.schemas.base import Key
from provisiond.schemas.cabling import CablingOut, TopologyImportOut

router = APIRouter(prefix="/api/v1/cabling", tags=["cabling"])

RackQuery = Annotated[Key | None, Query(description="Only the machines of this rack.")]
DOT = "text/vnd.graphviz"
_BODY: dict[str, Any] = {
    "requestBody": {"required": True, "content": {DOT: {"schema": {"type": "string"}}}}
}


async def _dot(request: Request) -> str:
    body = await request.body()
    if len(body) > topology.MAX_BYTES:
        raise BadRequest(f"the file is {len(body)} bytes; at most {topology.MAX_BYTES} are taken",
                         hint="split it by rack")  # fmt: skip
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequest("the body is not UTF-8 text", hint="send topology.dot as UTF-8") from None


async def _no_body(request: Request) -> None:
    # The check takes its scope from the query; a body is a client's mistake, said so.
    if (await request.body()).strip() not in (b"", b"{}"):
        raise BadRequest("POST /cabling/check takes no body", hint="give the rack as ?rack=NAME")


@router.get("", response_model=CablingOut)
def get_cabling(
    _: CI, session: ReadSession, services: ServicesDep, rack: RackQuery = None
) -> CablingOut:
    return views.current(session, rack, policy=services.settings.cabling_policy)


@router.post("/check", response_model=CablingOut)
def check_cabling(
    request: Request,
    _body: Annotated[None, Depends(_no_body)],
    _: Operator,
    session: WriteSession,
    services: ServicesDep,
    rack: RackQuery = None,
) -> CablingOut:
    policy = services.settings.cabling_policy
    outcome, rows = service.run(session, rack, policy=policy, metrics=services.metrics,
                                actor=actor(request), request_id=rid(request))  # fmt: skip
    return views.to_out(rows, outcome, policy=policy)


@router.get("/topology.dot", response_class=Response, responses={200: {"content": {DOT: {}}}})
def export_topology(_: CI, session: ReadSession) -> Response:
    return Response(topology.export(session), media_type=DOT)


@router.put("/topology.dot", response_model=TopologyImportOut, openapi_extra=_BODY)
def import_topology(
    request: Request,
    _: Admin,
    text: Annotated[str, Depends(_dot)],
    session: WriteSession,
    services: ServicesDep,
) -> TopologyImportOut:
    out, touched = topology.import_dot(session, text, actor=actor(request), request_id=rid(request))
    if touched:  # the plan changed: those machines' verdicts are checked again
        service.check_machines(session, touched, policy=services.settings.cabling_policy,
                               metrics=services.metrics, actor=actor(request))  # fmt: skip
    return out
