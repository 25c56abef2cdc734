"""Racks, with their power: the draw the last sync summed, the nameplate and the verdict."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, status
from sqlmodel import Session

from provisiond import power_budget
from provisiond.api.deps import CI, Operator, ReadSession, ServicesDep, WriteSession
from provisiond.inventory import racks
from provisiond.models import Rack
from provisiond.schemas.resources import RackIn, RackOut, RackPatch

router = APIRouter(prefix="/api/v1/racks", tags=["racks"])


def _out(session: Session, rows: list[Rack]) -> list[RackOut]:
    declared = power_budget.declared_by_rack(session)
    return [
        RackOut.model_validate(rack).model_copy(
            update={"declared_watts": declared.get(rack.id or 0, 0)}
        )
        for rack in rows
    ]


@router.get("", response_model=list[RackOut])
def list_racks(_: CI, session: ReadSession) -> list[RackOut]:
    return _out(session, racks.list_racks(session))


@router.post("", response_model=RackOut, status_code=status.HTTP_201_CREATED)
def create_rack(spec: RackIn, _: Operator, session: WriteSession) -> RackOut:
    return _out(session, [racks.create_rack(session, spec)])[0]


@router.get("/{name}", response_model=RackOut)
def get_rack(name: str, _: CI, session: ReadSession) -> RackOut:
    return _out(session, [racks.get_rack(session, name)])[0]


@router.get("/{name}/power")
def rack_power(name: str, _: CI, session: ReadSession, services: ServicesDep) -> dict[str, Any]:
    """Each machine's draw now and where it comes from (pdu, bmc, off or declared)."""
    return power_budget.rack_power(services, session, name)


@router.patch("/{name}", response_model=RackOut)
def update_rack(name: str, patch: RackPatch, _: Operator, session: WriteSession) -> RackOut:
    return _out(session, [racks.update_rack(session, name, patch)])[0]


@router.delete("/{name}", status_code=status.HTTP_204_NO_CONTENT)
def delete_rack(name: str, _: Operator, session: WriteSession) -> None:
    racks.delete_rack(session, name)
