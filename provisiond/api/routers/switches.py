from __future__ import annotations

from fastapi import APIRouter, Request, status

from provisiond.api.deps import CI, Operator, ReadSession, WriteSession, actor
from provisiond.api.deps import request_id as rid
from provisiond.inventory import switches
from provisiond.schemas.base import Key
from provisiond.schemas.resources import SwitchIn, SwitchOut, SwitchPatch

router = APIRouter(prefix="/api/v1/switches", tags=["switches"])


@router.get("", response_model=list[SwitchOut])
def list_switches(_: CI, session: ReadSession) -> list[SwitchOut]:
    return switches.list_switches(session)


@router.post("", response_model=SwitchOut, status_code=status.HTTP_201_CREATED)
def create_switch(
    spec: SwitchIn, request: Request, _: Operator, session: WriteSession
) -> SwitchOut:
    return switches.create_switch(session, spec, actor=actor(request), request_id=rid(request))


@router.get("/{name}", response_model=SwitchOut)
def get_switch(name: Key, _: CI, session: ReadSession) -> SwitchOut:
    return switches.get_switch(session, name)


@router.patch("/{name}", response_model=SwitchOut)
def update_switch(
    name: Key, patch: SwitchPatch, request: Request, _: Operator, session: WriteSession
) -> SwitchOut:
    return switches.update_switch(
        session, name, patch, actor=actor(request), request_id=rid(request)
    )


@router.delete("/{name}", status_code=status.HTTP_204_NO_CONTENT)
def delete_switch(name: Key, request: Request, _: Operator, session: WriteSession) -> None:
    switches.delete_switch(session, name, actor=actor(request), request_id=rid(request))
