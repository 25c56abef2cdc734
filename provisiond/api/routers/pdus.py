from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, status

from provisiond.api.deps import CI, Operator, ReadSession, ServicesDep, WriteSession, actor
from provisiond.api.deps import request_id as rid
from provisiond.drivers.pdu.base import OutletAction
from provisiond.inventory import pdus
from provisiond.pdus import outlets, poll, verify
from provisiond.schemas.base import Key
from provisiond.schemas.resources import OutletPowerIn, PduIn, PduOut, PduPatch, PduVerifyIn

router = APIRouter(prefix="/api/v1/pdus", tags=["pdus"])


@router.get("", response_model=list[PduOut])
def list_pdus(_: CI, session: ReadSession) -> list[PduOut]:
    return pdus.list_pdus(session)


@router.post("", response_model=PduOut, status_code=status.HTTP_201_CREATED)
def create_pdu(
    spec: PduIn, request: Request, _: Operator, session: WriteSession, services: ServicesDep
) -> PduOut:
    return pdus.create_pdu(
        session, services.secrets, spec, actor=actor(request), request_id=rid(request)
    )


@router.get("/{name}", response_model=PduOut)
def get_pdu(name: Key, _: CI, session: ReadSession) -> PduOut:
    return pdus.get_pdu(session, name)


@router.patch("/{name}", response_model=PduOut)
def update_pdu(
    name: Key,
    patch: PduPatch,
    request: Request,
    _: Operator,
    session: WriteSession,
    services: ServicesDep,
) -> PduOut:
    return pdus.update_pdu(
        session, services.secrets, name, patch, actor=actor(request), request_id=rid(request)
    )


@router.delete("/{name}", status_code=status.HTTP_204_NO_CONTENT)
def delete_pdu(name: Key, request: Request, _: Operator, session: WriteSession) -> None:
    pdus.delete_pdu(session, name, actor=actor(request), request_id=rid(request))


@router.post("/{name}/outlets/{number}/power")
async def outlet_power(
    name: Key,
    number: int,
    body: OutletPowerIn,
    request: Request,
    _: Operator,
    services: ServicesDep,
) -> dict[str, Any]:
    """Switch one outlet (under the lock of the machine it feeds), confirmed by read-back."""
    action = OutletAction(body.action)
    result = await outlets.outlet_power(
        services, name, number, action, actor=actor(request), request_id=rid(request)
    )
    return result.to_dict()


@router.get("/{name}/status")
async def pdu_status(name: Key, _: Operator, services: ServicesDep) -> dict[str, Any]:
    """Read the PDU now: outlet states and watts (stored as a poll's would be)."""
    return await poll.pdu_status(services, name)


@router.post("/{name}/verify")
async def verify_pdu(
    name: Key, request: Request, _: Operator, services: ServicesDep, body: PduVerifyIn | None = None
) -> list[dict[str, object]]:
    """Cut each mapped outlet of a machine not in use and check whose BMC goes dark."""
    bounds = body or PduVerifyIn()
    verdicts = await verify.verify_pdu(
        services, name, actor=actor(request), request_id=rid(request), **bounds.model_dump()
    )
    return [v.to_dict() for v in verdicts]
