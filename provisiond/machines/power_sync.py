"""Power sync: read every BMC's power state and draw, record drift, track unreachable BMCs.

An idempotent reconciler: it skips machines locked by another operation, reads
with bounded concurrency through the blocking executor (one session per BMC),
and writes only what changed, in one transaction.

Where the driver reads it (``PowerDriver.reads_watts``), the draw is read right
after the state, on the same session (no second login) but in its own executor call
with its own time limit: :func:`provisiond.machines.power_calls.read_power_and_watts`.
A failed, slow or malformed draw reading never fails the state read, and one
machine's failure (even a driver bug) never stops the others being recorded. The
readings are written in the same transaction as the states (``Machine.measured_watts``,
``measured_source`` "bmc", ``measured_at``) for machines read on. A machine read off
is not asked for its draw (no second request): it counts 0 W in its rack's sum and
keeps its last reading while on (the draw its next power-on is admitted by). A
machine whose every PDU outlet was read fresh keeps that figure: an outlet meters
everything behind it and wins (:mod:`provisiond.power_budget`).
Then every rack's draw is summed against its budget (:func:`power_budget.update_racks`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from sqlalchemy import and_, bindparam, or_, update
from sqlmodel import Session, col, select

from provisiond import events, power_budget
from provisiond.container import Services
from provisiond.drivers.power.base import BmcError, BmcTarget, PowerState
from provisiond.errors import ProvisiondError
from provisiond.events import EventKind
from provisiond.logging import get_logger
from provisiond.machines import power_calls as power
from provisiond.machines.bmc_access import bmc_target
from provisiond.machines.power_calls import PowerPolicy, PowerReading
from provisiond.models import Bmc, Machine, utcnow

log = get_logger(__name__)


@dataclass
class SyncReport:
    read: int = 0
    drifted: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    unreachable: list[str] = field(default_factory=list)
    recovered: list[str] = field(default_factory=list)
    skipped_locked: int = 0
    #: Machines whose draw was read (a BMC without a power meter reads none).
    watts_read: int = 0
    racks: list[power_budget.RackDraw] = field(default_factory=list)
    seconds: float = 0.0


@dataclass
class _Job:
    machine_id: int
    name: str
    driver: str
    target: BmcTarget
    power_state: str
    failures: int
    unreachable_reason: str


def _load(services: Services) -> tuple[list[_Job], int]:
    now = utcnow()
    jobs: list[_Job] = []
    # BMCs that bmc_target refuses anyway (no address, no password of their own or from a
    # credential set) are not even loaded: at 10,000 machines applied without passwords
    # loading them all cost ~1 s of CPU and a 54 MB peak (kept by the allocator) a minute.
    secret = col(Bmc.secret_encrypted)
    usable = or_(and_(secret.is_not(None), secret != ""), col(Bmc.credential_set_id).is_not(None))
    with services.db.read_session() as session:
        rows = session.exec(
            select(Machine, Bmc)
            .join(Bmc, col(Bmc.machine_id) == col(Machine.id))
            .where(col(Bmc.driver) != "manual", col(Machine.state) != "retired")
            .where(col(Bmc.address) != "", usable)
        ).all()
        locked = 0
        owns = services.cluster.owns  # several daemons: each reads its share of the ring
        for machine, bmc in rows:
            if not owns(machine.uuid):
                continue
            if machine.lock_owner and machine.lock_expires and machine.lock_expires > now:
                locked += 1
                continue
            try:
                target = bmc_target(session, bmc, services.secrets, machine.name)
            except ProvisiondError:
                continue  # no address or password yet: nothing to read
            assert machine.id is not None
            jobs.append(
                _Job(
                    machine.id,
                    machine.name,
                    bmc.driver,
                    target,
                    machine.power_state,
                    bmc.power_failures,
                    bmc.unreachable_reason,
                )
            )
    return jobs, locked


async def sync_power(services: Services) -> SyncReport:
    settings = services.settings
    started = time.monotonic()
    jobs, locked = await asyncio.to_thread(_load, services)
    report = SyncReport(skipped_locked=locked)
    policy = PowerPolicy(call_timeout=settings.power_call_timeout_s, backoff=())
    limit = asyncio.Semaphore(settings.power_sync_concurrency)
    results: dict[int, PowerReading | BmcError] = {}
    errors = services.metrics.bmc_errors

    async def read(job: _Job) -> None:
        async with limit:
            driver = services.drivers.get(job.driver, job.target)
            try:
                reading = await power.read_power_and_watts(services.executor, driver, policy)
            except BmcError as exc:
                results[job.machine_id] = exc
                errors.labels(driver.target.endpoint, exc.code).inc()
                return
            except Exception as exc:  # a driver bug: this machine fails, the sync goes on
                log.exception("power_read_failed", machine=job.name)
                results[job.machine_id] = BmcError(
                    f"reading the power state failed: {type(exc).__name__}: {exc}"[:400],
                    hint="a fault in provisiond's BMC driver; see the daemon's log",
                )
                return
            results[job.machine_id] = reading
            if reading.watts_error is not None:
                errors.labels(driver.target.endpoint, reading.watts_error.code).inc()

    # return_exceptions: whatever one read raises, every other machine is still recorded.
    await asyncio.gather(
        *(read(job) for job in jobs), *_pdu_polls(services), return_exceptions=True
    )
    await asyncio.to_thread(_record, services, jobs, results, report)
    report.racks = await asyncio.to_thread(power_budget.update_racks, services)
    report.read = len(jobs)
    report.seconds = time.monotonic() - started
    services.metrics.power_sync_seconds.observe(report.seconds)
    gauge = services.metrics.power_sync_machines
    gauge.labels("ok").set(report.read - len(report.failed))
    gauge.labels("failed").set(len(report.failed))
    gauge.labels("locked").set(report.skipped_locked)
    if report.drifted or report.unreachable or report.recovered:
        log.info(
            "power_sync",
            read=report.read,
            drifted=len(report.drifted),
            unreachable=report.unreachable,
            recovered=report.recovered,
            seconds=round(report.seconds, 3),
        )
    return report


def _record(
    services: Services,
    jobs: list[_Job],
    results: dict[int, PowerReading | BmcError],
    report: SyncReport,
) -> None:
    """Write only rows whose power state or BMC health changed, with events, in one go."""
    threshold = services.settings.power_failure_threshold
    readings: list[dict[str, Any]] = []
    with services.db.transaction() as session:
        noted: list[tuple[EventKind, str, dict[str, Any]]] = []  # one INSERT at the end
        for job in jobs:
            result = results.get(job.machine_id)
            if result is None:
                continue
            if isinstance(result, BmcError):
                report.failed[job.name] = result.message
                failures = job.failures + 1
                becomes_unreachable = failures >= threshold and not job.unreachable_reason
                bmc = session.exec(select(Bmc).where(Bmc.machine_id == job.machine_id)).one()
                bmc.power_failures = failures
                if becomes_unreachable:
                    bmc.unreachable_reason = f"{result.message} — {result.hint}"[:512]
                    report.unreachable.append(job.name)
                    noted.append(_event(job, "bmc_unreachable", bmc.unreachable_reason))
                    set_power_state(session, job.machine_id, PowerState.UNKNOWN.value)
                session.add(bmc)
                continue
            state = result.state.value
            off = result.state is PowerState.OFF
            if result.watts is not None:
                report.watts_read += 1
            if result.watts is not None and not off:  # off counts 0 W (power_budget) anyway
                readings.append({"mid": job.machine_id, "watts": result.watts})
            if job.failures or job.unreachable_reason:
                bmc = session.exec(select(Bmc).where(Bmc.machine_id == job.machine_id)).one()
                if bmc.unreachable_reason:
                    report.recovered.append(job.name)
                    noted.append(_event(job, "bmc_reachable", "BMC answers again"))
                bmc.power_failures = 0
                bmc.unreachable_reason = ""
                session.add(bmc)
            if state != job.power_state:
                if job.power_state != PowerState.UNKNOWN.value:
                    report.drifted.append(job.name)
                    services.metrics.power_drift.inc()
                    noted.append(
                        _event(
                            job,
                            "power_drift",
                            f"power {job.power_state} -> {state}, changed outside provisiond",
                            {"from": job.power_state, "to": state},
                        )
                    )
                set_power_state(session, job.machine_id, state)
        events.record_many(session, noted)
        _store_readings(session, readings, power_budget.fresh_s(services))


#: One UPDATE for every reading of a sync (executemany), built once.
_READING = (
    update(Machine.__table__)  # type: ignore[attr-defined]
    .where(Machine.__table__.c.id == bindparam("mid"))  # type: ignore[attr-defined]
    .values(measured_watts=bindparam("watts"), measured_source="bmc", measured_at=bindparam("at"))
)


def _store_readings(session: Session, readings: list[dict[str, Any]], fresh_s: float) -> None:
    """The BMC readings of machines read on, in one executemany.

    A machine's PDU outlets, when all of them were read fresh, meter it better: their
    figure is kept. A machine read off is not written: it counts 0 W in the rack's sum
    (:func:`provisiond.power_budget.rack_draws` looks at the power state first), and its
    last reading while on stays as the draw a power-on of it is admitted by
    (:func:`provisiond.power_admission.admit_power_on`), whose live reservation a
    reading of the machine on then replaces.
    """
    if not readings:
        return
    now = utcnow()
    metered = power_budget.outlet_readings(session, now - timedelta(seconds=fresh_s))
    rows = [{**r, "at": now} for r in readings if r["mid"] not in metered]
    if rows:
        session.connection().execute(_READING, rows)


def _pdu_polls(services: Services) -> list[Awaitable[None]]:
    """PDU outlet readings, polled alongside the BMCs: the one call site of the PDU poll.

    Its outlet readings win over the BMCs' (see :func:`_store_readings` and
    :func:`provisiond.power_budget.update_racks`), whichever is written first.
    """
    # Imported here: provisiond.pdus.outlets imports this module (set_power_state).
    from provisiond.pdus.poll import poll_pdus

    async def poll() -> None:
        try:
            await poll_pdus(services)
        except Exception:  # logged; the BMC readings and rack sums go on without PDUs
            log.exception("pdu_poll_failed")

    return [poll()]


def set_power_state(session: Session, machine_id: int, state: str) -> None:
    """Record a machine's power state (on/off/unknown) as read from its BMC.

    Power state is not lifecycle state: it is written here, never through advance().
    """
    session.execute(
        update(Machine)
        .where(col(Machine.id) == machine_id)
        .values(power_state=state)
        .execution_options(synchronize_session=False)
    )


def _event(
    job: _Job, event: str, message: str, details: dict[str, str] | None = None
) -> tuple[EventKind, str, dict[str, Any]]:
    fields: dict[str, Any] = {
        "machine_id": job.machine_id,
        "machine_name": job.name,
        "actor": "power_sync",
        "message": message,
        "details": details,
    }
    return EventKind.POWER, event, fields
