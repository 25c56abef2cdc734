"""Outlet power: one outlet of a PDU, or every outlet feeding a machine.

An outlet that feeds a machine is switched only under that machine's DB lock
(:mod:`provisiond.locks`), so it never races a deploy, a BMC power action or
another daemon. The result is read back from the PDU (the driver confirms each
switch) and recorded: the outlet's state, the machine's ``power_state`` when the
outlet decides it (dark means off; a machine without a BMC is as its outlet), a
POWER event for the machine and an audit event for the PDU.

This is also the power path of a machine with no BMC (or a ``manual`` one) but an
outlet on a PDU with a driver (:func:`machine_power`), and the hard off for a
machine whose BMC hangs (:func:`machine_power` with ``hard=True``).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from sqlmodel import Session, col, select

from provisiond import events, locks
from provisiond.container import Services
from provisiond.drivers.pdu.base import OutletAction, OutletState, PduDriver, PduTarget
from provisiond.drivers.pdu.registry import make_pdu_driver
from provisiond.drivers.pdu.snmp import SnmpClient
from provisiond.errors import Conflict, NotFound
from provisiond.events import EventKind, audit
from provisiond.logging import get_logger
from provisiond.machines.power_sync import set_power_state
from provisiond.machines.service import find
from provisiond.models import Machine, Outlet, Pdu
from provisiond.pdus.access import pdu_target

log = get_logger(__name__)


@dataclass(frozen=True)
class Feed:
    """Outlets of one PDU and the machine they feed (if any)."""

    pdu: str
    driver: str
    target: PduTarget
    numbers: tuple[int, ...]
    machine_id: int | None = None
    machine: str | None = None
    #: The machine's BMC driver ("" without a BMC): decides what its power_state follows.
    bmc_driver: str = ""


@dataclass
class OutletResult:
    pdu: str
    outlets: list[int]
    action: str
    state: str
    machine: str | None = None
    changed: bool = False
    seconds: float = 0.0
    states: dict[int, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "pdu": self.pdu,
            "outlets": self.outlets,
            "action": self.action,
            "state": self.state,
            "machine": self.machine,
            "changed": self.changed,
            "seconds": round(self.seconds, 3),
        }


def target_of(services: Services, pdu: Pdu) -> PduTarget:
    return pdu_target(pdu, services.secrets, timeout=services.settings.pdu_call_timeout_s)


@asynccontextmanager
async def pdu_driver(
    name: str, target: PduTarget, client: SnmpClient | None = None
) -> AsyncIterator[PduDriver]:
    """A driver for one PDU; with no ``client``, one of its own for the block."""
    own = client is None
    snmp = client if client is not None else await SnmpClient.open()
    try:
        yield make_pdu_driver(name, target, snmp)
    finally:
        if own:
            snmp.close()


def _outlet_feed(services: Services, pdu_name: str, number: int) -> Feed:
    with services.db.read_session() as session:
        pdu = session.exec(select(Pdu).where(Pdu.name == pdu_name)).first()
        if pdu is None:
            raise NotFound(f"no PDU named {pdu_name!r}", hint="list PDUs: GET /api/v1/pdus")
        outlet = next((o for o in pdu.outlets if o.number == number), None)
        if outlet is None:
            raise NotFound(
                f"PDU {pdu_name} has no outlet {number} in the inventory",
                hint="add it to the PDU's outlets first",
            )
        machine = session.get(Machine, outlet.machine_id) if outlet.machine_id else None
        return Feed(
            pdu.name,
            pdu.driver,
            target_of(services, pdu),
            (number,),
            machine.id if machine else None,
            machine.name if machine else None,
            machine.bmc.driver if machine and machine.bmc else "",
        )


def machine_feeds(session: Session, services: Services, machine: Machine) -> list[Feed]:
    """The outlets feeding ``machine`` on PDUs with a driver, grouped by PDU."""
    rows = session.exec(
        select(Outlet, Pdu)
        .join(Pdu, col(Pdu.id) == col(Outlet.pdu_id))
        .where(col(Outlet.machine_id) == machine.id, col(Pdu.driver) != "")
        .order_by(col(Pdu.name), col(Outlet.number))
    ).all()
    by_pdu: dict[str, tuple[Pdu, list[int]]] = {}
    for outlet, pdu in rows:
        by_pdu.setdefault(pdu.name, (pdu, []))[1].append(outlet.number)
    bmc = machine.bmc.driver if machine.bmc else ""
    return [
        Feed(p.name, p.driver, target_of(services, p), tuple(n), machine.id, machine.name, bmc)
        for p, n in by_pdu.values()
    ]


@asynccontextmanager
async def machine_locked(services: Services, machine_id: int | None) -> AsyncIterator[None]:
    """Hold the machine's DB lock for the block (no lock for an outlet feeding nothing).

    Raises :class:`MachineLocked` when someone else holds it. The lock is renewed
    every third of ``lock_ttl_s`` while the block runs (a ``pdus verify`` of one
    outlet may wait ``settle_s`` + ``recover_s``, up to 12 minutes, longer than the
    TTL), so it expires only when this daemon cannot reach the database.
    """
    if machine_id is None:
        yield
        return
    owner = f"{services.instance}:pdu:{uuid.uuid4().hex[:8]}"
    ttl = services.settings.lock_ttl_s
    await asyncio.to_thread(locks.acquire, services.db, machine_id, owner, ttl_s=ttl)
    renewer = asyncio.create_task(_renew(services, machine_id, owner, ttl))
    try:
        yield
    finally:
        renewer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await renewer
        await asyncio.to_thread(locks.release, services.db, machine_id, owner)


async def _renew(services: Services, machine_id: int, owner: str, ttl: float) -> None:
    while True:
        await asyncio.sleep(ttl / 3)
        try:
            held = await asyncio.to_thread(locks.renew, services.db, machine_id, owner, ttl_s=ttl)
        except Exception:  # the DB is away: try again next time
            log.exception("outlet_lock_renew_failed", machine_id=machine_id, owner=owner)
            continue
        if not held:
            log.warning("outlet_lock_lost", machine_id=machine_id, owner=owner)
            return


async def switch(driver: PduDriver, numbers: tuple[int, ...], action: OutletAction) -> bool:
    """Switch every outlet in ``numbers`` (a cycle: all off, a pause, all on)."""
    changed = False
    if action is OutletAction.CYCLE:
        for n in numbers:
            await driver.set_outlet(n, False)
        await asyncio.sleep(driver.off_seconds)
        for n in numbers:
            await driver.set_outlet(n, True)
        return True
    for n in numbers:
        changed = await driver.set_outlet(n, action is OutletAction.ON) or changed
    return changed


async def _switch_feeds(
    feeds: list[Feed], action: OutletAction, *, actor: str, services: Services, request_id: str
) -> list[OutletResult]:
    results = []
    for feed in feeds:
        started = time.monotonic()
        async with pdu_driver(feed.driver, feed.target) as driver:
            changed = await switch(driver, feed.numbers, action)
        state = OutletState.OFF if action is OutletAction.OFF else OutletState.ON
        result = OutletResult(
            feed.pdu, list(feed.numbers), action.value, state.value, feed.machine, changed,
            time.monotonic() - started,
        )  # fmt: skip
        await asyncio.to_thread(_record, services, feed, result, actor, request_id)
        results.append(result)
    return results


def _record(
    services: Services, feed: Feed, result: OutletResult, actor: str, request_id: str
) -> None:
    where = ", ".join(f"{feed.pdu}/{n}" for n in feed.numbers)
    message = f"outlet {where} {result.action}: {result.state}" + (
        "" if result.changed else " (already)"
    )
    with services.db.transaction() as session:
        pdu = session.exec(select(Pdu).where(Pdu.name == feed.pdu)).one()
        for outlet in pdu.outlets:
            if outlet.number in feed.numbers:
                outlet.state = result.state
                if result.state == OutletState.OFF:
                    outlet.power_watts = 0
                session.add(outlet)
        if feed.machine_id is not None:
            # Dark means off; with no BMC to ask, the outlet is all we know.
            if result.state == OutletState.OFF or feed.bmc_driver in ("", "manual"):
                set_power_state(session, feed.machine_id, result.state)
            events.record(
                session,
                EventKind.POWER,
                f"outlet_{result.action}",
                machine_id=feed.machine_id,
                machine_name=feed.machine,
                actor=actor,
                message=message,
                request_id=request_id,
                details={"pdu": feed.pdu, "outlets": list(feed.numbers)},
            )
        audit(
            session,
            "pdu_outlet_power",
            message + (f" (feeds {feed.machine})" if feed.machine else ""),
            actor=actor,
            request_id=request_id,
            details={"pdu": feed.pdu, "outlets": list(feed.numbers), "action": result.action},
        )


async def outlet_power(
    services: Services,
    pdu_name: str,
    number: int,
    action: OutletAction,
    *,
    actor: str,
    request_id: str = "",
) -> OutletResult:
    """Switch one outlet, under the lock of the machine it feeds; confirmed by read-back."""
    feed = await asyncio.to_thread(_outlet_feed, services, pdu_name, number)
    async with machine_locked(services, feed.machine_id):
        (result,) = await _switch_feeds(
            [feed], action, actor=actor, services=services, request_id=request_id
        )
    return result


def machine_path(services: Services, ident: str, hard: bool) -> tuple[int, list[Feed]] | None:
    with services.db.read_session() as session:
        machine = find(session, ident)
        has_bmc = machine.bmc is not None and machine.bmc.driver != "manual"
        if has_bmc and not hard:
            return None
        feeds = machine_feeds(session, services, machine)
        if not feeds:
            if not hard:
                return None
            raise Conflict(
                f"machine {machine.name} has no outlet on a PDU with a driver",
                hint="map an outlet to it (PATCH the PDU's outlets) and give the PDU a driver",
            )
        assert machine.id is not None
        return machine.id, feeds


async def machine_power(
    services: Services,
    ident: str,
    action: OutletAction,
    *,
    actor: str,
    request_id: str = "",
    hard: bool = False,
) -> list[OutletResult] | None:
    """Power a machine through its outlets, under its lock; None when that is not its path.

    The path is the outlets when the machine has no BMC or a ``manual`` one and is
    fed by a PDU with a driver. ``hard=True`` uses the outlets whatever the BMC (the
    BMC hangs), and fails with a hint when there are none.
    """
    path = await asyncio.to_thread(machine_path, services, ident, hard)
    if path is None:
        return None
    machine_id, feeds = path
    async with machine_locked(services, machine_id):
        return await _switch_feeds(
            feeds, action, actor=actor, services=services, request_id=request_id
        )
