"""Prove the outlet map: cut each mapped outlet and see whose BMC goes dark.

For every outlet of the PDU that the inventory maps to a machine, in outlet order:

1. skip it (with the reason) when the machine is in use (allocated, deploying,
   installing its agent, active, releasing, inspecting), has no BMC to watch, or its
   BMC does not answer with the power on;
2. under that machine's DB lock: switch the outlet off (confirmed by read-back),
   watch the BMCs of every mapped machine that answered before, until the expected
   one stops answering or ``settle_s`` passes;
3. switch the outlet back on and wait (``recover_s``) for the BMCs it darkened to
   answer again;
4. pass when exactly the expected machine's BMC went dark, else fail saying what was
   seen ("outlet 3 cut vm2's BMC, expected vm1").

Every wait is bounded, and the outlet is switched back on even when a step fails.

"Answers" is the sessionless probe discovery uses (:func:`ipmi_probe.sweep`: Get
Channel Auth Caps plus an ASF ping) for IPMI BMCs, and a TCP connect to the HTTPS
port for Redfish ones. Not a power read through the pooled pyghmi session: after a
BMC loses power that session hangs in pyghmi's own retries, which serialise the
next reads of that BMC (measured: a verify of two outlets took 37 s, and a BMC that
was back was still "not answering" 15 s later); the probe needs no session, so it
sees a dark BMC within one ``probe_s`` and a live one as soon as it answers.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import asdict, dataclass

from sqlmodel import select

from provisiond.container import Services
from provisiond.drivers.power.ipmi_probe import sweep
from provisiond.errors import NotFound
from provisiond.events import audit
from provisiond.lifecycle import State
from provisiond.models import Machine, Pdu
from provisiond.pdus.outlets import Feed, machine_locked, pdu_driver, target_of

IN_USE = frozenset(
    {
        State.ALLOCATED,
        State.DEPLOYING,
        State.INSTALLING_AGENT,
        State.ACTIVE,
        State.RELEASING,
        State.INSPECTING,
    }
)


@dataclass
class OutletVerdict:
    outlet: int
    machine: str
    result: str  # pass | fail | skipped
    detail: str

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


@dataclass
class _Mapped:
    outlet: int
    machine_id: int
    machine: str
    state: str
    #: (driver, address, port) of its BMC, or None with the reason in ``no_bmc``
    bmc: tuple[str, str, int] | None
    no_bmc: str = ""


def _load(services: Services, pdu_name: str) -> tuple[Feed, list[_Mapped]]:
    with services.db.read_session() as session:
        pdu = session.exec(select(Pdu).where(Pdu.name == pdu_name)).first()
        if pdu is None:
            raise NotFound(f"no PDU named {pdu_name!r}", hint="list PDUs: GET /api/v1/pdus")
        feed = Feed(pdu.name, pdu.driver, target_of(services, pdu), ())
        mapped = []
        for outlet in pdu.outlets:
            machine = session.get(Machine, outlet.machine_id) if outlet.machine_id else None
            if machine is None or machine.id is None:
                continue
            bmc: tuple[str, str, int] | None = None
            why = ""
            if machine.bmc is None or machine.bmc.driver == "manual":
                why = "it has no BMC to watch"
            elif not machine.bmc.address:
                why = "its BMC has no address"
            else:
                bmc = (machine.bmc.driver, machine.bmc.address, machine.bmc.port)
            mapped.append(_Mapped(outlet.number, machine.id, machine.name, machine.state, bmc, why))
        return feed, mapped


async def _tcp_answers(address: str, port: int, probe_s: float) -> bool:
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(address, port), probe_s)
    except (OSError, TimeoutError):
        return False
    writer.close()
    return True


async def _probe(watched: list[_Mapped], probe_s: float) -> set[str]:
    """The names of the machines whose BMC does not answer now (bounded by ``probe_s``)."""
    ipmi = {m.bmc[1:]: m.machine for m in watched if m.bmc and m.bmc[0] == "ipmi"}
    tcp = [m for m in watched if m.bmc and m.bmc[0] != "ipmi"]
    replies = await sweep(list(ipmi), timeout=probe_s / 2, rounds=2) if ipmi else {}
    answers = await asyncio.gather(
        *(_tcp_answers(m.bmc[1], m.bmc[2], probe_s) for m in tcp if m.bmc)
    )
    dark = {name for where, name in ipmi.items() if where not in replies}
    return dark | {m.machine for m, ok in zip(tcp, answers, strict=True) if not ok}


def _names(machines: set[str]) -> str:
    listed = sorted(machines)
    return " and ".join(f"{m}'s" for m in listed) + (" BMCs" if len(listed) > 1 else " BMC")


async def _check_one(
    services: Services,
    feed: Feed,
    item: _Mapped,
    watched: list[_Mapped],
    *,
    probe_s: float,
    settle_s: float,
    recover_s: float,
) -> OutletVerdict:
    dark: set[str] = set()
    async with pdu_driver(feed.driver, feed.target) as driver:
        await driver.set_outlet(item.outlet, False)
        try:
            deadline = time.monotonic() + settle_s
            while True:
                dark = await _probe(watched, probe_s)
                if item.machine in dark or time.monotonic() >= deadline:
                    break
                await asyncio.sleep(0.2)
        finally:
            await driver.set_outlet(item.outlet, True)
    back = dark
    deadline = time.monotonic() + recover_s
    while back and time.monotonic() < deadline:
        await asyncio.sleep(0.3)
        back = await _probe([m for m in watched if m.machine in dark], probe_s)
    late = f"; {_names(back)} did not answer again within {recover_s:g}s" if back else ""
    if dark == {item.machine}:
        return OutletVerdict(
            item.outlet, item.machine, "pass", f"outlet {item.outlet} cut {item.machine}'s BMC"
            + late,
        )  # fmt: skip
    if not dark:
        seen = f"no BMC went dark ({item.machine}'s kept answering for {settle_s:g}s)"
    elif item.machine in dark:
        seen = f"cut {_names(dark)}, expected only {item.machine}'s"
    else:
        seen = f"cut {_names(dark)}, expected {item.machine}"
    return OutletVerdict(item.outlet, item.machine, "fail", f"outlet {item.outlet} {seen}" + late)


async def verify_pdu(
    services: Services,
    pdu_name: str,
    *,
    actor: str,
    request_id: str = "",
    probe_s: float = 3.0,
    settle_s: float = 10.0,
    recover_s: float = 60.0,
) -> list[OutletVerdict]:
    """Check each mapped outlet of ``pdu_name`` (see the module doc); one verdict each."""
    feed, mapped = await asyncio.to_thread(_load, services, pdu_name)
    watched_all = [m for m in mapped if m.bmc is not None]
    dark_before = await _probe(watched_all, probe_s)
    watched = [m for m in watched_all if m.machine not in dark_before]
    verdicts = []
    for item in mapped:
        skip = ""
        if item.state in IN_USE:
            skip = f"{item.machine} is {item.state}: only machines not in use are checked"
        elif item.no_bmc:
            skip = f"{item.machine} is not checked: {item.no_bmc}"
        elif item.machine in dark_before:
            skip = f"{item.machine}'s BMC does not answer with the outlet on; nothing to compare"
        if skip:
            verdicts.append(OutletVerdict(item.outlet, item.machine, "skipped", skip))
            continue
        async with machine_locked(services, item.machine_id):
            verdict = await _check_one(
                services, feed, item, watched,
                probe_s=probe_s, settle_s=settle_s, recover_s=recover_s,
            )  # fmt: skip
        verdicts.append(verdict)
    await asyncio.to_thread(_record, services, pdu_name, verdicts, actor, request_id)
    return verdicts


def _record(
    services: Services, pdu: str, verdicts: list[OutletVerdict], actor: str, request_id: str
) -> None:
    counts = {r: sum(1 for v in verdicts if v.result == r) for r in ("pass", "fail", "skipped")}
    with services.db.transaction() as session:
        audit(
            session,
            "pdu_verify",
            f"verified the outlet map of PDU {pdu}: "
            + ", ".join(f"{n} {r}" for r, n in counts.items()),
            actor=actor,
            request_id=request_id,
            details={"verdicts": [v.to_dict() for v in verdicts]},
        )
