"""Prove the outlet map: cut each mapped outlet and see whose BMC goes dark.

For every outlet of the PDU that the inventory maps to a machine, in outlet order:

1. skip it (with the reason) when the machine has no BMC to watch, its BMC does not
   answer with the power on, or it is not idle (:data:`IDLE`: enrolled, available,
   inspect_failed; a machine in maintenance, deploy_failed or release_failed may
   have an operator or a user on it, and one allocated, deploying ... releasing,
   inspecting runs work);
2. take that machine's DB lock (skip it when someone else holds it), then read its
   state again: the lock keeps the allocator off it from here on (a claim passes
   over a locked machine), but it may have been claimed or put into maintenance
   since the first read; skip it unless it is still idle;
3. under the lock (renewed while it is held): switch the outlet off (confirmed by
   read-back), watch the BMCs of every mapped machine that answered before, until
   the expected one stops answering or ``settle_s`` passes;
4. switch the outlet back on (:data:`RESTORE_TRIES` tries) and wait (``recover_s``)
   for the BMCs it darkened to answer again;
5. pass when exactly the expected machine's BMC went dark, else fail saying what was
   seen ("outlet 3 cut vm2's BMC, expected vm1").

Every wait is bounded, and the outlet is switched back on even when a step fails.
When it cannot be (the PDU refuses or stops answering), the outlet's verdict is a
fail saying "outlet N left OFF", with a POWER event on its machine, and the next
outlets are still checked. The verdicts, the outlets' states as last read and the
audit event are written even when the run ends early.

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

from provisiond import events
from provisiond.container import Services
from provisiond.drivers.pdu.base import OutletState, PduDriver, PduError
from provisiond.drivers.power.ipmi_probe import sweep
from provisiond.errors import MachineLocked, NotFound
from provisiond.events import EventKind, audit
from provisiond.lifecycle import State
from provisiond.machines.power_sync import set_power_state
from provisiond.models import Machine, Pdu
from provisiond.pdus.outlets import Feed, machine_locked, pdu_driver, target_of

#: The states in which a machine runs no work and no one uses it: the only ones cut.
IDLE = frozenset({State.NEW, State.ENROLLED, State.AVAILABLE, State.INSPECT_FAILED})
#: Tries to switch an outlet back on, and the pause between them.
RESTORE_TRIES = 3
RESTORE_PAUSE_S = 2.0


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


def _state_now(services: Services, machine_id: int) -> str | None:
    """The machine's state read now, in a transaction of its own (None: it is gone)."""
    with services.db.read_session() as session:
        state = session.exec(select(Machine.state).where(Machine.id == machine_id)).first()
        return None if state is None else str(state)


def _not_idle(item: _Mapped, state: str | None) -> str:
    """Why ``item``'s machine in ``state`` is not cut, or "" when it may be."""
    if state is None:
        return f"{item.machine} no longer exists"
    if state in IDLE:
        return ""
    idle = ", ".join(sorted(s.value for s in IDLE - {State.NEW}))
    return f"{item.machine} is {state}: only idle machines ({idle}) are checked"


async def _restore(driver: PduDriver, outlet: int) -> str:
    """Switch ``outlet`` back on, a bounded number of tries; "" when on, else why not."""
    why = ""
    for attempt in range(RESTORE_TRIES):
        if attempt:
            await asyncio.sleep(RESTORE_PAUSE_S)
        try:
            await driver.set_outlet(outlet, True)
            return ""
        except PduError as exc:
            why = exc.message
    return why


async def _state_of(driver: PduDriver, outlet: int) -> OutletState:
    try:
        return await driver.outlet_state(outlet)
    except PduError:
        return OutletState.UNKNOWN


async def _check_one(
    services: Services,
    feed: Feed,
    item: _Mapped,
    watched: list[_Mapped],
    *,
    probe_s: float,
    settle_s: float,
    recover_s: float,
) -> tuple[OutletVerdict, OutletState]:
    """The outlet's verdict, and its state when done (on, unless it was left off)."""
    dark: set[str] = set()
    cut_failed = left_off = ""
    state = OutletState.ON
    async with pdu_driver(feed.driver, feed.target) as driver:
        try:
            await driver.set_outlet(item.outlet, False)
            deadline = time.monotonic() + settle_s
            while True:
                dark = await _probe(watched, probe_s)
                if item.machine in dark or time.monotonic() >= deadline:
                    break
                await asyncio.sleep(0.2)
        except PduError as exc:
            cut_failed = exc.message
        finally:
            left_off = await _restore(driver, item.outlet)
            if left_off:
                state = await _state_of(driver, item.outlet)
                if state is OutletState.ON:  # it came on after all, late
                    left_off = ""
    if left_off:
        tries = f"{RESTORE_TRIES} tries to switch it back on"
        detail = f"outlet {item.outlet} left OFF: {left_off} ({tries})"
        return OutletVerdict(item.outlet, item.machine, "fail", detail), state
    if cut_failed:
        detail = f"outlet {item.outlet} could not be switched off: {cut_failed}"
        return OutletVerdict(item.outlet, item.machine, "fail", detail), state
    back = await _recover(watched, dark, probe_s, recover_s)
    return _judge(item, dark, back, settle_s=settle_s, recover_s=recover_s), state


async def _recover(
    watched: list[_Mapped], dark: set[str], probe_s: float, recover_s: float
) -> set[str]:
    """Wait (``recover_s``) for the BMCs in ``dark`` to answer; those that did not."""
    back = dark
    deadline = time.monotonic() + recover_s
    while back and time.monotonic() < deadline:
        await asyncio.sleep(0.3)
        back = await _probe([m for m in watched if m.machine in dark], probe_s)
    return back


def _judge(
    item: _Mapped, dark: set[str], back: set[str], *, settle_s: float, recover_s: float
) -> OutletVerdict:
    """Pass when exactly ``item``'s BMC went dark; else fail saying what was seen."""
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
    verdicts: list[OutletVerdict] = []
    #: outlet -> its state when its check ended (outlets not switched are left out)
    states: dict[int, OutletState] = {}
    try:
        for item in mapped:
            skip = _not_idle(item, item.state)
            if item.no_bmc:
                skip = f"{item.machine} is not checked: {item.no_bmc}"
            elif item.machine in dark_before:
                skip = (
                    f"{item.machine}'s BMC does not answer with the outlet on; nothing to compare"
                )
            if skip:
                verdicts.append(OutletVerdict(item.outlet, item.machine, "skipped", skip))
                continue
            verdict, state = await _locked_check(
                services, feed, item, watched,
                probe_s=probe_s, settle_s=settle_s, recover_s=recover_s,
            )  # fmt: skip
            verdicts.append(verdict)
            if state is not None:
                states[item.outlet] = state
            if state not in (None, OutletState.ON):  # left off: its BMC stays dark
                watched = [m for m in watched if m.machine != item.machine]
    finally:
        by_outlet = {m.outlet: m for m in mapped}
        await asyncio.to_thread(
            _record, services, pdu_name, verdicts, states, by_outlet, actor, request_id
        )
    return verdicts


async def _locked_check(
    services: Services,
    feed: Feed,
    item: _Mapped,
    watched: list[_Mapped],
    *,
    probe_s: float,
    settle_s: float,
    recover_s: float,
) -> tuple[OutletVerdict, OutletState | None]:
    """:func:`_check_one` under the machine's lock, if it is still idle once locked."""
    try:
        async with machine_locked(services, item.machine_id):
            # Read again under the lock: the first read may be stale by now.
            state = await asyncio.to_thread(_state_now, services, item.machine_id)
            skip = _not_idle(item, state)
            if skip:
                return OutletVerdict(item.outlet, item.machine, "skipped", skip), None
            return await _check_one(
                services, feed, item, watched,
                probe_s=probe_s, settle_s=settle_s, recover_s=recover_s,
            )  # fmt: skip
    except (MachineLocked, NotFound) as exc:
        why = f"{exc.message}: not checked"
        return OutletVerdict(item.outlet, item.machine, "skipped", why), None


def _record(
    services: Services,
    pdu_name: str,
    verdicts: list[OutletVerdict],
    states: dict[int, OutletState],
    mapped: dict[int, _Mapped],
    actor: str,
    request_id: str,
) -> None:
    counts = {r: sum(1 for v in verdicts if v.result == r) for r in ("pass", "fail", "skipped")}
    with services.db.transaction() as session:
        pdu = session.exec(select(Pdu).where(Pdu.name == pdu_name)).first()
        for outlet in pdu.outlets if pdu is not None else []:
            state = states.get(outlet.number)
            if state is not None:
                outlet.state = state.value
                if state is OutletState.OFF:
                    outlet.power_watts = 0
                session.add(outlet)
        for verdict in verdicts:
            item = mapped[verdict.outlet]
            if states.get(verdict.outlet, OutletState.ON) is OutletState.ON:
                continue
            # Left off (or unknown): the machine has no power, and someone must know.
            if states[verdict.outlet] is OutletState.OFF:
                set_power_state(session, item.machine_id, OutletState.OFF.value)
            events.record(
                session,
                EventKind.POWER,
                "outlet_left_off",
                machine_id=item.machine_id,
                machine_name=item.machine,
                actor=actor,
                message=f"pdus verify: PDU {pdu_name} {verdict.detail}",
                request_id=request_id,
                details={"pdu": pdu_name, "outlets": [verdict.outlet]},
            )
        audit(
            session,
            "pdu_verify",
            f"verified the outlet map of PDU {pdu_name}: "
            + ", ".join(f"{n} {r}" for r, n in counts.items()),
            actor=actor,
            request_id=request_id,
            details={"verdicts": [v.to_dict() for v in verdicts]},
        )
