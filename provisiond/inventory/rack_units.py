"""Placing a machine, switch or PDU in a rack's units (API create and patch): the
check against the rack's other contents, and the row update."""

from __future__ import annotations

from typing import Protocol

from pydantic import BaseModel
from sqlmodel import Session, select

from provisiond.errors import Conflict, Problem, ValidationFailed
from provisiond.inventory.placement import Placed, check_rack
from provisiond.inventory.racks import rack_contents
from provisiond.models import Rack


def place(
    session: Session,
    *,
    kind: str,
    name: str,
    rack: str | None,
    u_position: int | None,
    u_height: int,
    current: tuple[str, str] | None = None,
) -> int | None:
    """The id of ``rack`` after checking the item fits there; ``current`` is its old self."""
    if rack is None:
        if u_position is not None:
            raise ValidationFailed(
                [Problem("u_position", "a U position needs a rack")],
                hint="set rack as well, or leave u_position out",
            )
        return None
    row = session.exec(select(Rack).where(Rack.name == rack)).first()
    if row is None:
        raise ValidationFailed(
            [Problem("rack", f"no rack named {rack!r}")],
            hint="create the rack first (POST /api/v1/racks), or list racks to see the names",
        )
    if u_position is None or u_height < 1:
        return row.id
    item = Placed(kind, name, u_position, u_height)
    if item.units.stop - 1 > row.u_height:
        raise ValidationFailed(
            [
                Problem(
                    "u_position",
                    f"{kind} {name} at U{u_position} ({u_height}U) "
                    f"does not fit rack {rack} of {row.u_height}U",
                )
            ],
            hint=f"pick u_position from 1 to {row.u_height - u_height + 1}"
            if u_height <= row.u_height
            else f"it is taller than the whole rack ({row.u_height}U); check u_height",
        )
    others = [p for p in rack_contents(session, row) if (p.kind, p.name) != current]
    before = set(check_rack(rack, row.u_height, others))
    clashes = [p for p in check_rack(rack, row.u_height, [*others, item]) if p not in before]
    if clashes:
        taken = {u for p in others for u in p.units}
        other = next((p for p in others if set(p.units) & set(item.units)), None)
        raise Conflict(
            clashes[0].message
            if other is None
            else f"{kind} {name} at U{u_position}-U{item.units.stop - 1} overlaps {other.kind} "
            f"{other.name} at U{other.units.start}-U{other.units.stop - 1} in rack {rack}",
            hint=f"free spaces for {u_height}U in {rack}: "
            + (", ".join(_free_runs(taken, row.u_height, u_height)) or "none"),
        )
    return row.id


class Placeable(Protocol):
    name: str
    rack_id: int | None
    u_position: int | None
    u_height: int


def replace(session: Session, row: Placeable, kind: str, patch: BaseModel) -> None:
    """Apply a patch's rack, u_position, u_height (and name) to ``row`` after checking them."""
    given = patch.model_fields_set
    if not given & {"rack", "u_position", "u_height", "name"}:
        return
    values = patch.model_dump(include=given)
    rack = values["rack"] if "rack" in given else None
    if "rack" not in given and row.rack_id is not None:
        rack = session.exec(select(Rack.name).where(Rack.id == row.rack_id)).one()
    # Leaving the rack frees the slot unless a position is given (which place() refuses).
    position = values.get("u_position", row.u_position if rack is not None else None)
    row.rack_id = place(
        session,
        kind=kind,
        name=values.get("name") or row.name,
        rack=rack,
        u_position=position,
        u_height=values.get("u_height", row.u_height),
        current=(kind, row.name),
    )
    row.u_position = position


def _free_runs(taken: set[int], rack_height: int, need: int) -> list[str]:
    runs, start = [], None
    for u in range(1, rack_height + 2):
        if u <= rack_height and u not in taken:
            start = u if start is None else start
        elif start is not None:
            if u - start >= need:
                runs.append(f"U{start}-U{u - 1}")
            start = None
    return runs
