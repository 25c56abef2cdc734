"""The NICs an agent reports, against the NICs the daemon has for the machine.

Whether a machine's NICs were *planned* decides what a report may change
(:func:`planned`): NICs an operator wrote (``inventory apply``, the API) are a plan,
and a report that contradicts them changes nothing; NICs nobody planned (a machine
enrolled by its PXE boot, or one without any NIC) are learnt from the report.

- planned: a reported physical MAC the machine does not have, or a stored PXE MAC
  missing from the report, is a mismatch (:func:`mismatch`) for an operator, and the
  NICs stay as they are; otherwise the reported names and addresses are taken
  (:func:`update`);
- not planned: every reported physical NIC is recorded (:func:`learn`), so a machine
  that PXE-booted from its second NIC ends up with both. Only a MAC another machine
  already holds is a mismatch (swapped cables or a wrong inventory), and is skipped.

Virtual NICs (bridges, veths, bonds: no ``/sys/class/net/<nic>/device``) get made-up
MACs, often the same on many machines: they are neither required nor recorded.

The provenance is read from the event log, so it needs no column of its own: the
newest event that wrote the machine's NIC set is its enrollment, an operator's change
of its NICs (an audit event naming ``nics``), or :data:`LEARNT` (written by
:func:`learn`). The NICs are unplanned when that is an enrollment via PXE or
:data:`LEARNT`; with no such event (a pruned log) they count as planned, the stricter
reading.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import and_, or_
from sqlmodel import Session, col, select

from provisiond.deploy.enrollment import ACTOR as PXE_ENROLLMENT
from provisiond.events import EventKind
from provisiond.lifecycle import Ev
from provisiond.models import Event, Machine, Nic
from provisiond.schemas.agent import NicReport

#: The inventory event written when a report's NICs are recorded on an unplanned machine.
LEARNT = "nics_recorded"

_NIC_WRITES = or_(
    and_(col(Event.kind) == EventKind.TRANSITION.value, col(Event.event) == Ev.ENROLL.value),
    and_(
        col(Event.kind) == EventKind.AUDIT.value,
        col(Event.event).in_(("update", "inventory")),  # PATCH /machines, inventory apply
        col(Event.message).contains("nics"),
    ),
    and_(col(Event.kind) == EventKind.INVENTORY.value, col(Event.event) == LEARNT),
)


def planned(session: Session, machine: Machine) -> bool:
    """Whether an operator wrote the machine's NICs (see the module doc)."""
    if not machine.nics:
        return False
    last = session.exec(
        select(Event.kind, Event.actor)
        .where(Event.machine_id == machine.id, _NIC_WRITES)
        .order_by(col(Event.id).desc())
        .limit(1)
    ).first()
    if last is None:
        return True
    kind, actor = last
    if kind == EventKind.INVENTORY.value:
        return False
    return not (kind == EventKind.TRANSITION.value and actor == PXE_ENROLLMENT)


def _physical(nics: list[NicReport]) -> dict[str, NicReport]:
    """The reported physical NICs by MAC (the first of NICs sharing one, as bond slaves do)."""
    found: dict[str, NicReport] = {}
    for nic in nics:
        if not nic.virtual:
            found.setdefault(nic.mac, nic)
    return found


def _owners(session: Session, machine: Machine, macs: set[str]) -> dict[str, str]:
    """MAC -> name of the *other* machine holding it, for those of ``macs`` that are held."""
    if not macs:
        return {}
    rows = session.exec(
        select(Nic.mac, Machine.name)
        .join(Machine, col(Machine.id) == Nic.machine_id)
        .where(col(Nic.mac).in_(sorted(macs)), Nic.machine_id != machine.id)
    ).all()
    return dict(rows)


def mismatch(
    session: Session, machine: Machine, nics: list[NicReport], *, is_planned: bool
) -> dict[str, Any]:
    """The disagreement between the report and the planned NICs; empty when none.

    Planned: unknown physical MACs and missing PXE MACs. Not planned: only MACs that
    other machines hold.
    """
    known = {n.mac for n in machine.nics}
    physical = set(_physical(nics))
    if is_planned:
        unknown = sorted(physical - known)
        missing = sorted({n.mac for n in machine.nics if n.pxe} - {n.mac for n in nics})
        owners = _owners(session, machine, set(unknown))
    else:
        owners = _owners(session, machine, physical - known)
        unknown, missing = sorted(owners), []
    if not unknown and not missing:
        return {}
    return {
        "planned": is_planned,
        "reported": sorted({n.mac for n in nics}),
        "known": sorted(known),
        "unknown": unknown,
        "missing_pxe": missing,
        # A MAC stored on another machine usually means swapped cables or inventory.
        "owned_by_other_machines": owners,
    }


def _address(nic: NicReport) -> str:
    return nic.ipv4[0].split("/")[0] if nic.ipv4 else ""


def update(machine: Machine, nics: list[NicReport]) -> None:
    """Take the reported name and address of each NIC the machine has."""
    by_mac = {n.mac: n for n in nics}
    for row in machine.nics:
        seen = by_mac.get(row.mac)
        if seen is None:
            continue
        if seen.name:
            row.name = seen.name
        row.ip_address = _address(seen)


def learn(machine: Machine, nics: list[NicReport], *, skip: set[str]) -> list[dict[str, str]]:
    """Record every reported physical NIC the machine lacks, except the MACs in ``skip``
    (held by other machines); update the others. Returns what was added."""
    update(machine, nics)
    known = {n.mac for n in machine.nics}
    added = []
    for mac, nic in _physical(nics).items():
        if mac in known or mac in skip:
            continue
        assert machine.id is not None
        machine.nics.append(
            Nic(machine_id=machine.id, mac=mac, name=nic.name, ip_address=_address(nic))
        )
        added.append({"mac": mac, "name": nic.name, "ip_address": _address(nic)})
    return added
