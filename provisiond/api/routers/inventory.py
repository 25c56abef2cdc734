"""Inventory as code: plan and apply a YAML file, export the inventory in the same format."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request, Response

from provisiond.api.deps import Operator, ReadSession, ServicesDep, WriteSession, actor
from provisiond.inventory import plan as inventory
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


@router.post("/plan", response_model=Plan, openapi_extra=_BODY)
def plan_inventory(
    _: Operator, source: SourceDep, session: ReadSession, services: ServicesDep, prune: bool = False
) -> Plan:
    return inventory.plan(session, source, secrets=services.secrets, prune=prune)


@router.post("/apply", response_model=Plan, openapi_extra=_BODY)
def apply_inventory(
    _: Operator,
    source: SourceDep,
    request: Request,
    session: WriteSession,
    services: ServicesDep,
    prune: bool = False,
) -> Plan:
    return inventory.apply(
        session,
        source,
        secrets=services.secrets,
        actor=actor(request),
        hosts_changed=services.hosts_changed,
        prune=prune,
    )


@router.get(
    "/export", response_class=Response, responses={200: {"content": {"application/yaml": {}}}}
)
def export_inventory(_: Operator, session: ReadSession) -> Response:
    return Response(inventory.export(session), media_type="application/yaml")
