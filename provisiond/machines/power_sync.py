"""Power sync: read every BMC's power state, record drift, track unreachable BMCs.

An idempotent reconciler: it skips machines locked by another operation, reads
with bounded concurrency through the blocking executor (one session per BMC),
and writes only what changed, in one transaction.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import and_, or_, update
from sqlmodel import Session, col, select

from provisiond import events
from provisiond.container import Services
from provisiond.drivers.power.base import BmcError, BmcTarget, PowerState
from provisiond.errors import ProvisiondError
from provisiond.events import EventKind
from provisiond.logging import get_logger
from provisiond.machines import power_calls as power
from provisiond.machines.bmc_access import bmc_target
from provisiond.machines.power_calls import PowerPolicy
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
        for machine, bmc in rows:
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
    results: dict[int, PowerState | BmcError] = {}

    async def read(job: _Job) -> None:
        async with limit:
            driver = services.drivers.get(job.driver, job.target)
            try:
                results[job.machine_id] = await power.get_power(services.executor, driver, policy)
            except BmcError as exc:
                results[job.machine_id] = exc
                services.metrics.bmc_errors.labels(driver.target.endpoint, exc.code).inc()

    await asyncio.gather(*(read(job) for job in jobs))
    await asyncio.to_thread(_record, services, jobs, results, report)
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
    results: dict[int, PowerState | BmcError],
    report: SyncReport,
) -> None:
    """Write only rows whose power state or BMC health changed, with events, in one go."""
    threshold = services.settings.power_failure_threshold
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
            state = result.value
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
