"""Inventory as code: plan and apply a YAML file, export the inventory in the same format."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, Response

from provisiond.api.deps import Operator, ReadSession, ServicesDep, WriteSession, actor
from provisiond.inventory import plan as inventory
from provisiond.inventory.gcpause import paused
from provisiond.inventory.plan import Plan, Source

router = APIRouter(prefix="/api/v1/inventory", tags=["inventory"])

# The body is read raw (YAML, or JSON carrying YAML plus password_env values), so /docs
# is told its shape here.
_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/yaml": {"schema": {"type": "string"}},
            "application/json": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "yaml": {"type": "string"},
                        "env": {"type": "object", "additionalProperties": {"type": "string"}},
                    },
                    "required": ["yaml"],
                }
            },
        },
    }
}


async def _source(request: Request) -> Source:
    return inventory.read_source(await request.body(), request.headers.get("content-type", ""))


SourceDep = Annotated[Source, Depends(_source)]


#: ``?brief=true``: creations come without their fields (see inventory.plan.draft).
Brief = Annotated[
    bool, Query(description="Leave out the fields of what is created (the CLI's table).")
]


def _answer(plan: Plan) -> Response:
    # Serialised here, in one pass: a plan of 10,000 new machines is ~10 MB of JSON,
    # which FastAPI's response_model path (dump, validate again, encode) takes seconds
    # over. The response_model below still documents the shape.
    with paused():
        return Response(plan.model_dump_json(), media_type="application/json")


@router.post("/plan", response_model=Plan, openapi_extra=_BODY)
def plan_inventory(
    _: Operator,
    source: SourceDep,
    session: ReadSession,
    services: ServicesDep,
    prune: bool = False,
    brief: Brief = False,
) -> Response:
    plan = inventory.plan(session, source, secrets=services.secrets, prune=prune, brief=brief)
    return _answer(plan)


@router.post("/apply", response_model=Plan, openapi_extra=_BODY)
def apply_inventory(
    _: Operator,
    source: SourceDep,
    request: Request,
    session: WriteSession,
    services: ServicesDep,
    prune: bool = False,
    brief: Brief = False,
) -> Response:
    # One transaction: the write session commits once this returns, or rolls back.
    plan = inventory.apply(
        session,
        source,
        secrets=services.secrets,
        actor=actor(request),
        hosts_changed=services.hosts_changed,
        prune=prune,
        brief=brief,
    )
    return _answer(plan)


@router.get(
    "/export", response_class=Response, responses={200: {"content": {"application/yaml": {}}}}
)
def export_inventory(_: Operator, session: ReadSession) -> Response:
    return Response(inventory.export(session), media_type="application/yaml")
