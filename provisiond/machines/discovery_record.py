"""Discovery's record step: every responder that logged in, enrolled or updated at once.

In one transaction, a known machine (matched by BMC address and port, then serial,
then BMC MAC) is updated and an unknown one is enrolled. The rows a sweep may match
are read by a few set queries up front (:class:`_Known`), not three queries per
responder each behind an autoflush; the events go into one multi-row INSERT, and so do
the new BMC rows. New machines still enter through ``lifecycle.advance`` (one INSERT
each, for their ids). Measured, 1,000 responders on SQLite, before and after in
turn: enrolling took 2.1-2.3 s of CPU, now 0.5-0.7 s; a re-sweep that changes
nothing 0.9-1.0 s, now 0.14-0.18 s.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from sqlalchemy import insert
from sqlmodel import Session, col, select

from provisiond import events, lifecycle
from provisiond.container import Services
from provisiond.drivers.power.base import Identity, PowerState
from provisiond.events import EventKind
from provisiond.lifecycle import Ev
from provisiond.models import Bmc, Machine
from provisiond.models.base import new_uuid, utcnow


@dataclass
class Cred:
    """A credential set, decrypted for one sweep."""

    id: int
    name: str
    username: str
    password: str = field(repr=False)


@dataclass
class Found:
    """A responder that logged in: what the record step enrolls or updates."""

    address: str
    port: int
    cred: Cred
    identity: Identity
    power: PowerState


@dataclass
class DiscoveryResult:
    targets: int = 0
    responders: int = 0
    enrolled: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    #: One per BMC that answered but was not read: bmc, code, reason, hint, and the
    #: attempts (credential_set, code, message, hint) behind them.
    failed: list[dict[str, Any]] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def machine_name(address: str, port: int) -> str:
    return f"bmc-{address.replace('.', '-')}-{port}"


class _Known:
    """The machines and BMCs a sweep's responders may match, read by set queries.

    Replaces three SELECTs per responder (with an autoflush each) by a handful for
    the whole sweep. Rows enrolled or moved while recording are noted, so a later
    responder with the same serial or BMC MAC matches them, as a per-row query would.
    """

    #: Values per IN (...) list: well under SQLite's and PostgreSQL's parameter limits.
    CHUNK = 500

    def __init__(self, session: Session, found: list[Found]) -> None:
        self.by_endpoint: dict[tuple[str, int], Bmc] = {}
        self.by_mac: dict[str, Bmc] = {}
        self.by_machine: dict[int, Bmc] = {}
        self.by_serial: dict[str, Machine] = {}
        self.machines: dict[int, Machine] = {}
        addresses = sorted({f.address for f in found})
        macs = sorted({f.identity.bmc_mac for f in found if f.identity.bmc_mac})
        serials = sorted({f.identity.serial for f in found if f.identity.serial})
        bmcs: dict[int, Bmc] = {}
        for column, values in ((Bmc.address, addresses), (Bmc.mac, macs)):
            for chunk in self._chunks(values):
                for bmc in session.exec(select(Bmc).where(col(column).in_(chunk))):
                    bmcs[bmc.id or 0] = bmc
        machine_ids = sorted({b.machine_id for b in bmcs.values()})
        for chunk in self._chunks(machine_ids):
            for machine in session.exec(select(Machine).where(col(Machine.id).in_(chunk))):
                self.machines[machine.id or 0] = machine
        for chunk in self._chunks(serials):
            query = select(Machine).where(col(Machine.serial).in_(chunk)).order_by(col(Machine.id))
            for machine in session.exec(query):
                self.machines.setdefault(machine.id or 0, machine)
                self.by_serial.setdefault(machine.serial, machine)
        extra = sorted(set(self.machines) - set(machine_ids))
        for chunk in self._chunks(extra):  # the BMC rows of machines matched by serial
            for bmc in session.exec(select(Bmc).where(col(Bmc.machine_id).in_(chunk))):
                bmcs[bmc.id or 0] = bmc
        for bmc in sorted(bmcs.values(), key=lambda b: b.id or 0):
            self.note(bmc)

    @classmethod
    def _chunks(cls, values: list[Any]) -> list[list[Any]]:
        return [values[i : i + cls.CHUNK] for i in range(0, len(values), cls.CHUNK)]

    def forget(self, bmc: Bmc) -> None:
        """Before ``bmc`` moves: its old address and MAC no longer match it."""
        if self.by_endpoint.get((bmc.address, bmc.port)) is bmc:
            del self.by_endpoint[(bmc.address, bmc.port)]
        if bmc.mac and self.by_mac.get(bmc.mac) is bmc:
            del self.by_mac[bmc.mac]

    def note(self, bmc: Bmc, machine: Machine | None = None) -> None:
        self.by_endpoint.setdefault((bmc.address, bmc.port), bmc)
        if bmc.mac:
            self.by_mac.setdefault(bmc.mac, bmc)
        self.by_machine[bmc.machine_id] = bmc
        if machine is not None:
            self.machines[bmc.machine_id] = machine
            if machine.serial:
                self.by_serial.setdefault(machine.serial, machine)

    def match(self, found: Found) -> Machine | None:
        """By BMC address and port, then serial, then BMC MAC (as before, one row each)."""
        bmc = self.by_endpoint.get((found.address, found.port))
        if bmc is None and found.identity.serial:
            by_serial = self.by_serial.get(found.identity.serial)
            if by_serial is not None:
                return by_serial
        if bmc is None and found.identity.bmc_mac:
            bmc = self.by_mac.get(found.identity.bmc_mac)
        return self.machines.get(bmc.machine_id) if bmc is not None else None


def record(services: Services, found: list[Found], actor: str, result: DiscoveryResult) -> None:
    """Enroll or update every responder that logged in, in one transaction."""
    with services.db.transaction() as session:
        known = _Known(session, found)
        batch = events.Batch()  # every event of the sweep in one multi-row INSERT
        new_bmcs: dict[int, Bmc] = {}  # by machine id; written after the loop, by one INSERT
        for item in found:
            identity = item.identity
            machine = known.match(item)
            if machine is None:
                machine = _new_machine(item)
                lifecycle.advance(
                    session,
                    machine,
                    Ev.ENROLL,
                    actor=actor,
                    timeouts=services.settings.timeouts,
                    reason=f"discovered via IPMI at {item.address}:{item.port}",
                    details={"bmc": f"{item.address}:{item.port}", "credentials": item.cred.name},
                    batch=batch,
                )
                assert machine.id is not None
                bmc = _bmc(Bmc(machine_id=machine.id), item)
                new_bmcs[machine.id] = bmc
                known.note(bmc, machine)
                result.enrolled.append(machine.name)
                continue
            wanted = {
                "serial": identity.serial,
                "vendor": identity.vendor,
                "model": identity.model,
            }
            changes = {k: v for k, v in wanted.items() if v and getattr(machine, k) != v}
            assert machine.id is not None
            bmc = known.by_machine.get(machine.id) or Bmc(machine_id=machine.id)
            before = (bmc.address, bmc.port, bmc.mac, bmc.credential_set_id)
            known.forget(bmc)
            _bmc(bmc, item)
            known.note(bmc, machine)
            if (bmc.address, bmc.port, bmc.mac, bmc.credential_set_id) != before:
                changes["bmc"] = f"{item.address}:{item.port}"
                if bmc.id is None:
                    new_bmcs[machine.id] = bmc
            if not changes:
                result.unchanged.append(machine.name)
                continue
            for key, value in changes.items():
                if key != "bmc":
                    setattr(machine, key, value)
            session.add(machine)
            batch.add(
                EventKind.DISCOVERY,
                "updated",
                machine=machine,
                actor=actor,
                message="discovery updated " + ", ".join(sorted(changes)),
                details={k: str(v) for k, v in changes.items()},
            )
            result.updated.append(machine.name)
        session.flush()  # the updates of known rows
        if new_bmcs:  # one multi-row INSERT (the ORM would send one per row)
            rows = [bmc.model_dump(exclude={"id"}) for bmc in new_bmcs.values()]
            session.execute(insert(Bmc), rows)
        batch.write(session)


def _new_machine(item: Found) -> Machine:
    """An unsaved machine for a new responder.

    The columns with a default factory are given: pydantic 2 inspects each factory's
    signature on every instance otherwise, 4x the cost of the row (measured: 0.32 s of
    CPU per 1,000 machines against 0.08 s).
    """
    now = utcnow()
    return Machine(
        name=machine_name(item.address, item.port),
        power_state=item.power.value,
        serial=item.identity.serial,
        vendor=item.identity.vendor,
        model=item.identity.model,
        uuid=new_uuid(),
        disks=[],
        root_device={},
        tags=[],
        state_changed_at=now,
        created_at=now,
        updated_at=now,
    )


def summary_event(services: Services, result: DiscoveryResult, actor: str) -> None:
    """One event per sweep, so operators see sweeps (and their failures) in the event log."""
    with services.db.transaction() as session:
        events.record(
            session,
            EventKind.DISCOVERY,
            "sweep",
            actor=actor,
            message=(
                f"swept {result.targets} targets: {result.responders} answered, "
                f"{len(result.enrolled)} enrolled, {len(result.updated)} updated, "
                f"{len(result.unchanged)} unchanged, {len(result.failed)} failed"
            ),
            details={"failed": result.failed[:100], "seconds": result.seconds},
        )


def _bmc(bmc: Bmc, item: Found) -> Bmc:
    bmc.driver = "ipmi"
    bmc.address = item.address
    bmc.port = item.port
    bmc.mac = item.identity.bmc_mac or bmc.mac
    if not bmc.secret_encrypted:  # a machine's own password wins over the credential set
        bmc.credential_set_id = item.cred.id
        bmc.username = ""
    return bmc
