"""Machines: create, read, update, delete, and operator lifecycle events.

A new machine enters the lifecycle through ``advance(..., Ev.ENROLL)``; later
state changes go through :func:`fire_event`, never by writing ``state``. NICs,
the BMC and rack placement are checked here so the API, inventory apply and
discovery share one set of rules.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime

from sqlmodel import Session, col, or_, select

from provisiond import lifecycle
from provisiond.config import Settings
from provisiond.crud import apply_patch, ensure_name_free
from provisiond.db import after_commit
from provisiond.deploy import records as deploy
from provisiond.errors import Conflict, MachineLocked, NotFound
from provisiond.events import audit
from provisiond.inventory.rack_units import place, replace
from provisiond.lifecycle import Ev, State
from provisiond.machines import credentials, listing
from provisiond.machines.nics import build_nics, replace_nics
from provisiond.models import Machine, utcnow
from provisiond.schemas.resources import MachineEventIn, MachineIn, MachineOut, MachinePatch
from provisiond.secrets import SecretBox

#: States from which a machine may be deleted: at rest, holding no allocation.
DELETABLE: frozenset[State] = frozenset(
    {State.ENROLLED, State.AVAILABLE, State.MAINTENANCE, State.RETIRED, State.INSPECT_FAILED}
)


def find(session: Session, ident: str) -> Machine:
    """The machine named ``ident``, or whose uuid is ``ident``."""
    machine = session.exec(
        select(Machine).where(or_(col(Machine.name) == ident, col(Machine.uuid) == ident))
    ).first()
    if machine is None:
        raise NotFound(
            f"no machine named {ident!r}",
            hint="look machines up by name or uuid; 'provisiond machines list' shows them",
        )
    return machine


def get_machine(session: Session, ident: str) -> MachineOut:
    return to_out(session, [find(session, ident)])[0]


#: Told which machines' dnsmasq host files to rewrite: (names, removed=...).
HostsChanged = Callable[..., None]


def create_machine(
    session: Session,
    box: SecretBox,
    spec: MachineIn,
    *,
    actor: str,
    hosts_changed: HostsChanged,
    request_id: str = "",
) -> MachineOut:
    ensure_name_free(session, Machine, spec.name, kind="machine")
    rack_id = place(
        session,
        kind="machine",
        name=spec.name,
        rack=spec.rack,
        u_position=spec.u_position,
        u_height=spec.u_height,
    )
    fields = spec.model_dump(exclude={"rack", "nics", "bmc"})
    machine = Machine(**fields, rack_id=rack_id)
    machine.nics = build_nics(session, spec.nics, machine=None)
    if spec.bmc is not None:
        machine.bmc = credentials.build_bmc(session, box, spec.bmc, machine=None)
    lifecycle.advance(
        session, machine, Ev.ENROLL, actor=actor, request_id=request_id, reason="created by API"
    )
    out = to_out(session, [machine])[0]
    after_commit(session, lambda: hosts_changed([out.name]))
    return out


def update_machine(
    session: Session,
    box: SecretBox,
    ident: str,
    patch: MachinePatch,
    *,
    actor: str,
    hosts_changed: HostsChanged,
    request_id: str = "",
) -> MachineOut:
    machine = find(session, ident)
    before = machine.name
    given = patch.model_fields_set
    if patch.name and patch.name != machine.name:
        ensure_name_free(session, Machine, patch.name, kind="machine")
    replace(session, machine, "machine", patch)
    changed = set(
        apply_patch(machine, patch, skip=frozenset({"rack", "u_position", "nics", "bmc"}))
    )
    changed |= given & {"rack", "u_position", "nics", "bmc"}
    if patch.nics is not None:
        replace_nics(session, machine, patch.nics)
    if "bmc" in given:
        credentials.patch_bmc(session, box, machine, patch.bmc)
    machine.updated_at = utcnow()
    session.add(machine)
    session.flush()
    if changed:
        fields = sorted(changed)
        audit(
            session,
            "update",
            f"changed {', '.join(fields)}",
            actor=actor,
            request_id=request_id,
            machine=machine,
            details={"fields": fields},
        )
    out = to_out(session, [machine])[0]
    renamed = [before] if before != out.name else []
    after_commit(session, lambda: hosts_changed([out.name], removed=renamed))
    return out


def ensure_unlocked(machine: Machine, now: datetime | None = None) -> None:
    now = now or utcnow()
    if machine.lock_owner and machine.lock_expires and machine.lock_expires > now:
        raise MachineLocked(
            f"machine {machine.name} is locked by {machine.lock_owner} "
            f"until {machine.lock_expires:%Y-%m-%d %H:%M:%S} UTC",
            hint="wait for that operation to finish; the lock expires by itself if its owner died",
        )


def delete_machine(
    session: Session, ident: str, *, actor: str, hosts_changed: HostsChanged, request_id: str = ""
) -> None:
    machine = find(session, ident)
    name = machine.name
    after_commit(session, lambda: hosts_changed([], removed=[name]))
    if machine.state not in DELETABLE:
        allowed = lifecycle.allowed_events(machine.state)
        raise Conflict(
            f"machine {machine.name} is {machine.state}; only machines that are "
            f"{', '.join(sorted(DELETABLE))} can be deleted",
            hint=(
                f"retire it first: POST /api/v1/machines/{machine.name}/events "
                '{"event": "retire"}'
                if "retire" in allowed
                else f"wait for it to leave {machine.state} (allowed now: "
                f"{', '.join(allowed) or 'none'})"
            ),
        )
    ensure_unlocked(machine)
    audit(
        session,
        "delete",
        f"deleted machine {machine.name} ({machine.uuid})",
        actor=actor,
        request_id=request_id,
        machine=machine,
    )
    session.delete(machine)
    session.flush()


def fire_event(
    session: Session,
    ident: str,
    spec: MachineEventIn,
    *,
    actor: str,
    settings: Settings,
    secrets: SecretBox,
    wake_deployer: Callable[[], None],
    request_id: str = "",
) -> MachineOut:
    """Fire a lifecycle event; inspect and release go through the deploy service. The
    deploy engine is woken once it is committed."""
    after_commit(session, wake_deployer)
    machine = find(session, ident)
    ensure_unlocked(machine)
    event = Ev(spec.event)
    if event is Ev.INSPECT:
        # An inspection needs its record (per-boot key, phases) and a power-cycle.
        deploy.start_inspection(
            session,
            machine,
            actor=actor,
            settings=settings,
            secrets=secrets,
            reason=spec.reason or "inspection requested",
        )
    elif event is Ev.RELEASE:
        deploy.start_release(
            session, machine, actor=actor, reason=spec.reason or "released", settings=settings
        )
    else:
        lifecycle.advance(
            session,
            machine,
            event,
            actor=actor,
            timeouts=settings.timeouts,
            reason=spec.reason,
            request_id=request_id,
        )
    return to_out(session, [machine])[0]


def to_out(session: Session, machines: Sequence[Machine]) -> list[MachineOut]:
    """API views of ``machines`` (ORM objects; lists are built from rows by
    :mod:`provisiond.machines.listing`, through the same :func:`listing.views`)."""
    return listing.views(
        session,
        [
            (
                m.model_dump(),
                [n.model_dump() for n in m.nics],
                m.bmc.model_dump() if m.bmc else None,
            )
            for m in machines
        ],
    )
