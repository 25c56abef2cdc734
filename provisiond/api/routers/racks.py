from __future__ import annotations

from fastapi import APIRouter, status

from provisiond.api.deps import CI, Operator, ReadSession, WriteSession
from provisiond.inventory import racks
from provisiond.models import Rack
from provisiond.schemas.resources import RackIn, RackOut, RackPatch

router = APIRouter(prefix="/api/v1/racks", tags=["racks"])


@router.get("", response_model=list[RackOut])
def list_racks(_: CI, session: ReadSession) -> list[Rack]:
    return racks.list_racks(session)


@router.post("", response_model=RackOut, status_code=status.HTTP_201_CREATED)
def create_rack(spec: RackIn, _: Operator, session: WriteSession) -> Rack:
    return racks.create_rack(session, spec)


@router.get("/{name}", response_model=RackOut)
def get_rack(name: str, _: CI, session: ReadSession) -> Rack:
    return racks.get_rack(session, name)


@router.patch("/{name}", response_model=RackOut)
def update_rack(name: str, patch: RackPatch, _: Operator, session: WriteSession) -> Rack:
    return racks.update_rack(session, name, patch)


@router.delete("/{name}", status_code=status.HTTP_204_NO_CONTENT)
def delete_rack(name: str, _: Operator, session: WriteSession) -> None:
    racks.delete_rack(session, name)
