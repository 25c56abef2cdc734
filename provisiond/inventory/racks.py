"""Racks: create, read, update, delete, with placement re-checked on resize."""

from __future__ import annotations

from sqlmodel import Session, select

from provisiond.crud import apply_patch, ensure_name_free, get_by_name
from provisiond.errors import Conflict, ValidationFailed
from provisiond.inventory.placement import Placed, check_rack
from provisiond.models import Machine, Pdu, Rack, Switch
from provisiond.schemas.resources import RackIn, RackPatch


def list_racks(session: Session) -> list[Rack]:
    return list(session.exec(select(Rack).order_by(Rack.name)))


def get_rack(session: Session, name: str) -> Rack:
    return get_by_name(session, Rack, name, kind="rack")


def create_rack(session: Session, spec: RackIn) -> Rack:
    ensure_name_free(session, Rack, spec.name, kind="rack")
    rack = Rack(**spec.model_dump())
    session.add(rack)
    session.flush()
    return rack


def rack_contents(session: Session, rack: Rack) -> list[Placed]:
    items: list[Placed] = []
    for model, kind in ((Machine, "machine"), (Switch, "switch"), (Pdu, "pdu")):
        rows = session.exec(
            select(model.name, model.u_position, model.u_height).where(model.rack_id == rack.id)
        )
        items += [Placed(kind, name, pos, height) for name, pos, height in rows]
    return items


def update_rack(session: Session, name: str, patch: RackPatch) -> Rack:
    rack = get_rack(session, name)
    if patch.name and patch.name != rack.name:
        ensure_name_free(session, Rack, patch.name, kind="rack")
    apply_patch(rack, patch)
    problems = check_rack(rack.name, rack.u_height, rack_contents(session, rack))
    if problems:
        raise ValidationFailed(problems, hint="move the equipment first, or keep the height")
    session.add(rack)
    session.flush()
    return rack


def delete_rack(session: Session, name: str) -> None:
    rack = get_rack(session, name)
    contents = rack_contents(session, rack)
    if contents:
        names = ", ".join(f"{p.kind} {p.name}" for p in contents[:5])
        raise Conflict(
            f"rack {name} still holds {len(contents)} item(s): {names}",
            hint="move or delete them first",
        )
    session.delete(rack)
