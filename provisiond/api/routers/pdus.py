from __future__ import annotations

from fastapi import APIRouter, Request, status

from provisiond.api.deps import CI, Operator, ReadSession, WriteSession, actor
from provisiond.api.deps import request_id as rid
from provisiond.inventory import pdus
from provisiond.schemas.base import Key
from provisiond.schemas.resources import PduIn, PduOut, PduPatch

router = APIRouter(prefix="/api/v1/pdus", tags=["pdus"])


@router.get("", response_model=list[PduOut])
def list_pdus(_: CI, session: ReadSession) -> list[PduOut]:
    return pdus.list_pdus(session)


@router.post("", response_model=PduOut, status_code=status.HTTP_201_CREATED)
def create_pdu(spec: PduIn, request: Request, _: Operator, session: WriteSession) -> PduOut:
    return pdus.create_pdu(session, spec, actor=actor(request), request_id=rid(request))


@router.get("/{name}", response_model=PduOut)
def get_pdu(name: Key, _: CI, session: ReadSession) -> PduOut:
    return pdus.get_pdu(session, name)


@router.patch("/{name}", response_model=PduOut)
def update_pdu(
    name: Key, patch: PduPatch, request: Request, _: Operator, session: WriteSession
) -> PduOut:
    return pdus.update_pdu(session, name, patch, actor=actor(request), request_id=rid(request))


@router.delete("/{name}", status_code=status.HTTP_204_NO_CONTENT)
def delete_pdu(name: Key, request: Request, _: Operator, session: WriteSession) -> None:
    pdus.delete_pdu(session, name, actor=actor(request), request_id=rid(request))
