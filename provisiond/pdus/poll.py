"""Read every PDU with a driver and store what it says: outlet states and watts.

:func:`poll_pdus` is what the power sync job calls (and ``GET .../status`` for
one PDU, live). Concurrency is bounded (``concurrency`` PDUs at a time, one
:class:`SnmpClient` for all of them: SNMPv2c on one UDP socket, ~2 requests and
~1 ms of CPU per 48-outlet PDU) and each PDU's whole read is bounded in time, so
a dead PDU costs its timeout and never holds the others up. Stored per PDU:
``power_watts``, ``power_read_at`` and ``unreachable_reason`` ("" when it answered);
per outlet: ``state`` and ``power_watts``; and for a machine fed by metered
outlets the sum of their watts as ``Machine.measured_watts`` with
``measured_source = "pdu"``. Reads change no lifecycle state and take no lock.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from sqlalchemy import bindparam, or_, update
from sqlmodel import col, select

from provisiond.container import Services
from provisiond.drivers.pdu.base import OutletState, PduError, PduReading, PduTarget
from provisiond.drivers.pdu.registry import make_pdu_driver
from provisiond.drivers.pdu.snmp import V3_BATCH, SnmpClient
from provisiond.errors import Conflict, NotFound, ProvisiondError
from provisiond.models import Machine, Outlet, Pdu
from provisiond.models.base import utcnow
from provisiond.pdus.outlets import target_of
from provisiond.power_budget import fresh_s


@dataclass
class PduPoll:
    """One PDU's read: its reading, or why there is none."""

    pdu: str
    reading: PduReading | None = None
    error: str = ""
    hint: str = ""
    #: outlet number -> machine id, for the outlets the inventory maps
    machines: dict[int, int | None] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        reading = self.reading
        return {
            "pdu": self.pdu,
            "reachable": reading is not None,
            "error": self.error,
            "hint": self.hint,
            "power_watts": reading.total_watts if reading else None,
            "outlets": [
                {
                    "number": n,
                    "state": str(reading.outlet_states.get(n, OutletState.UNKNOWN)),
                    "power_watts": reading.outlet_watts.get(n),
                }
                for n in sorted(self.machines)
            ]
            if reading
            else [],
        }


@dataclass
class _Job:
    pdu_id: int
    name: str
    driver: str
    target: PduTarget | None
    machines: dict[int, int | None]
    error: str = ""
    hint: str = ""


def _jobs(services: Services, names: Sequence[str] | None) -> list[_Job]:
    with services.db.read_session() as session:
        query = select(Pdu).where(col(Pdu.driver) != "").order_by(col(Pdu.name))
        if names is not None:
            query = query.where(col(Pdu.name).in_(list(names)))
        jobs = []
        for pdu in session.exec(query):
            assert pdu.id is not None
            machines = {o.number: o.machine_id for o in pdu.outlets}
            try:
                jobs.append(_Job(pdu.id, pdu.name, pdu.driver, target_of(services, pdu), machines))
            except ProvisiondError as exc:  # no address or no secret: say so, read nothing
                jobs.append(
                    _Job(pdu.id, pdu.name, pdu.driver, None, machines, exc.message, exc.hint)
                )
        return jobs


async def _read(job: _Job, client: SnmpClient, sem: asyncio.Semaphore) -> PduPoll:
    poll = PduPoll(job.name, error=job.error, hint=job.hint, machines=job.machines)
    if job.target is None:
        return poll
    numbers = sorted(job.machines)
    target = job.target
    # 1 + 2 objects per outlet, at most V3_BATCH a request (v2c packs more, and has
    # room left to split on tooBig); each request may time out 1 + retries times.
    requests = math.ceil((1 + 2 * len(numbers)) / V3_BATCH)
    bound = target.timeout * (1 + target.retries) * (1 + requests) + 1
    async with sem:
        try:
            driver = make_pdu_driver(job.driver, target, client)
            poll.reading = await asyncio.wait_for(driver.read_power(numbers), timeout=bound)
        except PduError as exc:
            poll.error, poll.hint = exc.message, exc.hint
        except TimeoutError:
            poll.error = f"PDU {job.name} ({target.endpoint}) was not read within {bound:g}s"
            poll.hint = "check the PDU's address and load; the next poll tries again"
    return poll


_OUTLETS = Outlet.__table__  # type: ignore[attr-defined]
_PDUS = Pdu.__table__  # type: ignore[attr-defined]
_MACHINES = Machine.__table__  # type: ignore[attr-defined]
#: The writes of a poll, each one executemany, built once.
_SET_OUTLET = (
    update(_OUTLETS)
    .where(_OUTLETS.c.id == bindparam("oid"))
    .values(state=bindparam("st"), power_watts=bindparam("pw"))
)
_PDU_READ = (
    update(_PDUS)
    .where(_PDUS.c.id == bindparam("pid"))
    .values(power_watts=bindparam("watts"), power_read_at=bindparam("at"), unreachable_reason="")
)
_PDU_DOWN = (
    update(_PDUS).where(_PDUS.c.id == bindparam("pid")).values(unreachable_reason=bindparam("why"))
)
# Only a machine that is not off takes its outlets' figure: an off machine keeps its
# last draw while on (what its next power-on is admitted by; it counts 0 W in the rack's
# sum), and a power-on's live reservation (provisiond.power_admission) is not replaced by
# the standby draw of a machine that does not read on yet: it holds the rack's headroom.
_SET_DRAW = (
    update(_MACHINES)
    .where(_MACHINES.c.id == bindparam("mid"), _MACHINES.c.power_state != "off")
    .where(
        or_(
            _MACHINES.c.measured_source != "reserved",
            _MACHINES.c.measured_at < bindparam("fresh"),
            _MACHINES.c.power_state == "on",
        )
    )
    .values(measured_watts=bindparam("watts"), measured_source="pdu", measured_at=bindparam("at"))
)


def _store(services: Services, jobs: list[_Job], polls: list[PduPoll]) -> None:
    """One transaction: outlets whose state or watts changed, every PDU read (or why
    not), and the draw of every machine fed by metered outlets; each an executemany."""
    now = utcnow()
    read: dict[int, PduReading] = {}
    down: list[dict[str, Any]] = []
    for job, poll in zip(jobs, polls, strict=True):
        if poll.reading is not None:
            read[job.pdu_id] = poll.reading
        else:
            down.append({"pid": job.pdu_id, "why": poll.error[:512]})
    with services.db.transaction() as session:
        conn = session.connection()
        query = _OUTLETS.select().where(_OUTLETS.c.pdu_id.in_(list(read)))
        changed: list[dict[str, Any]] = []
        drawn: dict[int, int] = {}
        for row in conn.execute(query) if read else ():
            reading = read[row.pdu_id]
            known = reading.outlet_states.get(row.number)
            state = known.value if known is not None else "unknown"
            watts = reading.outlet_watts.get(row.number)
            if (state, watts) != (row.state, row.power_watts):
                changed.append({"oid": row.id, "st": state, "pw": watts})
            if row.machine_id is not None and watts is not None:
                drawn[row.machine_id] = drawn.get(row.machine_id, 0) + watts
        if changed:
            conn.execute(_SET_OUTLET, changed)
        if read:
            pdus = [{"pid": i, "watts": r.total_watts, "at": now} for i, r in read.items()]
            conn.execute(_PDU_READ, pdus)
        if down:
            conn.execute(_PDU_DOWN, down)
        if drawn:
            fresh = now - timedelta(seconds=fresh_s(services))
            conn.execute(
                _SET_DRAW,
                [{"mid": m, "watts": w, "at": now, "fresh": fresh} for m, w in drawn.items()],
            )


async def poll_pdus(
    services: Services, *, names: Sequence[str] | None = None, concurrency: int = 16
) -> list[PduPoll]:
    """Read every PDU that has a driver (or only those ``names``) and store the readings.

    Returns one :class:`PduPoll` per PDU, in name order; never raises for a PDU that
    does not answer (its ``error`` says why, and ``Pdu.unreachable_reason`` keeps it).
    At most ``concurrency`` PDUs are read at once; each read is bounded by
    ``pdu_call_timeout_s`` per request. Example, from the power sync job::

        polls = await poll_pdus(services)
        unreachable = [p.pdu for p in polls if p.reading is None]
    """
    jobs = await asyncio.to_thread(_jobs, services, names)
    if not jobs:
        return []
    client = await SnmpClient.open()
    try:
        sem = asyncio.Semaphore(concurrency)
        polls = list(await asyncio.gather(*(_read(job, client, sem) for job in jobs)))
    finally:
        client.close()
    await asyncio.to_thread(_store, services, jobs, polls)
    return polls


async def pdu_status(services: Services, name: str) -> dict[str, Any]:
    """A live read of one PDU (stored like a poll's), or why it cannot be read."""
    polls = await poll_pdus(services, names=[name], concurrency=1)
    if not polls:
        await asyncio.to_thread(_exists, services, name)
        raise Conflict(
            f"PDU {name} has no driver, so it cannot be read",
            hint="PATCH the PDU with driver (e.g. apc_snmp), mgmt_address and credentials",
        )
    return polls[0].to_dict()


def _exists(services: Services, name: str) -> None:
    with services.db.read_session() as session:
        if session.exec(select(Pdu.id).where(Pdu.name == name)).first() is None:
            raise NotFound(f"no PDU named {name!r}", hint="list PDUs: GET /api/v1/pdus")
