"""PDUs and their outlets, placed in racks; an outlet feeds at most one machine.

A PDU with a driver also carries SNMP settings; its community or v3 keys are
write-only (:mod:`provisiond.pdus.access` encrypts them) and shown as ``secret_set``.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlmodel import Session, col, select

from provisiond.crud import apply_patch, ensure_name_free, get_by_name
from provisiond.errors import Conflict, Problem, ValidationFailed
from provisiond.events import audit
from provisiond.inventory.rack_units import place, replace
from provisiond.models import Machine, Outlet, Pdu, Rack
from provisiond.pdus.access import WRITE_ONLY, check_settings, store_secrets
from provisiond.schemas.resources import OutletIn, PduIn, PduOut, PduPatch
from provisiond.secrets import SecretBox


def _find(session: Session, name: str) -> Pdu:
    return get_by_name(session, Pdu, name, kind="PDU")


def to_out(session: Session, pdus: Sequence[Pdu]) -> list[PduOut]:
    racks = dict(session.exec(select(Rack.id, Rack.name)).all())
    ids = {o.machine_id for p in pdus for o in p.outlets if o.machine_id}
    machines = dict(
        session.exec(select(Machine.id, Machine.name).where(col(Machine.id).in_(ids))).all()
    )
    return [
        PduOut.model_validate(
            {
                **p.model_dump(exclude={"id", "rack_id", "secret_encrypted"}),
                "secret_set": bool(p.secret_encrypted),
                "rack": racks.get(p.rack_id),
                "outlets": [
                    {
                        "number": o.number,
                        "machine": machines.get(o.machine_id),
                        "state": o.state,
                        "power_watts": o.power_watts,
                    }
                    for o in p.outlets
                ],
            }
        )
        for p in pdus
    ]


def list_pdus(session: Session) -> list[PduOut]:
    return to_out(session, list(session.exec(select(Pdu).order_by(Pdu.name))))


def get_pdu(session: Session, name: str) -> PduOut:
    return to_out(session, [_find(session, name)])[0]


def _machine_ids(session: Session, specs: list[OutletIn]) -> dict[str, int]:
    names = {o.machine for o in specs if o.machine}
    found = dict(
        session.exec(select(Machine.name, Machine.id).where(col(Machine.name).in_(names))).all()
    )
    missing = [
        Problem(f"outlets.{i}.machine", f"no machine named {o.machine!r}")
        for i, o in enumerate(specs)
        if o.machine and o.machine not in found
    ]
    if missing:
        raise ValidationFailed(missing, hint="create the machine first, or list machines")
    return {name: ident for name, ident in found.items() if ident is not None}


def _set_outlets(session: Session, pdu: Pdu, specs: list[OutletIn]) -> None:
    """Replace the outlet list; an outlet feeding one machine is not handed to another."""
    ids = _machine_ids(session, specs)
    existing = {o.number: o for o in pdu.outlets}
    names = dict(
        session.exec(
            select(Machine.id, Machine.name).where(
                col(Machine.id).in_([o.machine_id for o in pdu.outlets if o.machine_id])
            )
        ).all()
    )
    outlets = []
    for spec in specs:
        # pdu_id is filled in from the relationship at flush when the PDU is new.
        outlet = existing.get(spec.number) or Outlet(number=spec.number, pdu_id=pdu.id or 0)
        new_id = ids[spec.machine] if spec.machine else None
        if outlet.machine_id and new_id and outlet.machine_id != new_id:
            held = names.get(outlet.machine_id, "another machine")
            raise Conflict(
                f"outlet {spec.number} of PDU {pdu.name} already feeds machine {held}",
                hint=f"unassign it first (PATCH the PDU with outlet {spec.number} "
                "and machine null), then assign it again",
            )
        outlet.machine_id = new_id
        outlets.append(outlet)
    pdu.outlets = outlets


def create_pdu(
    session: Session, box: SecretBox, spec: PduIn, *, actor: str, request_id: str = ""
) -> PduOut:
    ensure_name_free(session, Pdu, spec.name, kind="PDU")
    rack_id = place(
        session,
        kind="pdu",
        name=spec.name,
        rack=spec.rack,
        u_position=spec.u_position,
        u_height=spec.u_height,
    )
    pdu = Pdu(**spec.model_dump(exclude={"rack", "outlets", *WRITE_ONLY}), rack_id=rack_id)
    check_settings(pdu)
    store_secrets(pdu, dict(spec), box)
    _set_outlets(session, pdu, spec.outlets)
    session.add(pdu)
    session.flush()
    audit(session, "pdu_create", f"created PDU {pdu.name}", actor=actor, request_id=request_id)
    return to_out(session, [pdu])[0]


def update_pdu(
    session: Session,
    box: SecretBox,
    name: str,
    patch: PduPatch,
    *,
    actor: str,
    request_id: str = "",
) -> PduOut:
    pdu = _find(session, name)
    if patch.name and patch.name != pdu.name:
        ensure_name_free(session, Pdu, patch.name, kind="PDU")
    replace(session, pdu, "pdu", patch)
    apply_patch(pdu, patch, skip=frozenset({"rack", "u_position", "outlets", *WRITE_ONLY}))
    check_settings(pdu)
    store_secrets(pdu, {k: getattr(patch, k) for k in patch.model_fields_set}, box)
    if patch.outlets is not None:
        _set_outlets(session, pdu, patch.outlets)
    session.add(pdu)
    session.flush()
    fields = sorted(patch.model_fields_set)
    audit(
        session,
        "pdu_update",
        f"changed PDU {pdu.name}: {', '.join(fields)}",
        actor=actor,
        request_id=request_id,
        details={"fields": fields},
    )
    return to_out(session, [pdu])[0]


def delete_pdu(session: Session, name: str, *, actor: str, request_id: str = "") -> None:
    pdu = _find(session, name)
    fed = [o.number for o in pdu.outlets if o.machine_id]
    if fed:
        raise Conflict(
            f"PDU {name} still feeds machines on outlet(s) {', '.join(map(str, fed[:10]))}",
            hint="unassign those outlets first (PATCH the PDU's outlets with machine null)",
        )
    audit(session, "pdu_delete", f"deleted PDU {name}", actor=actor, request_id=request_id)
    session.delete(pdu)
    session.flush()
