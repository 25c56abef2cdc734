"""Waiting on an allocation: the long-poll (``?wait=``) and the server-sent event stream.

Neither polls the database in a tight loop. Each waits on the process's
:class:`~provisiond.allocations.leases.AllocationHub`, which the service
and the queue job notify right after they commit a change, and re-reads the row
every :data:`RECHECK_S` seconds as well, for changes another daemon made. Both are
bounded: a long-poll by :data:`WAIT_MAX_S`, a stream by :data:`STREAM_MAX_S`; the
client simply asks again.

The stream sends ``event: allocation`` with the allocation as JSON whenever it
changes, ``event: log`` for each new event-log row about it or its machine (deploy
phases, retries, expiry), ``: keepalive`` comments, and a final ``event: end``
when the allocation reaches a final state or the stream its time limit.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

from sqlmodel import Session, and_, col, or_, select

from provisiond.allocations.leases import hub_for
from provisiond.allocations.service import find, to_out
from provisiond.allocations.states import FINAL_STATES, STATES
from provisiond.container import Services
from provisiond.errors import ClientGone, Problem, ValidationFailed
from provisiond.models import ApiToken, Event
from provisiond.schemas.allocations import AllocationOut

#: The longest one long-poll may wait.
WAIT_MAX_S = 300.0
#: The longest one event stream stays open.
STREAM_MAX_S = 300.0
#: How often a waiter re-reads the database (changes by other daemons).
RECHECK_S = 2.0
KEEPALIVE_S = 15.0
#: A database read that takes longer than this is abandoned (the client may retry).
READ_TIMEOUT_S = 30.0
LOG_BATCH = 200


async def _in_thread(fn: Any, *args: Any) -> Any:
    return await asyncio.wait_for(asyncio.to_thread(fn, *args), READ_TIMEOUT_S)


def read(services: Services, token: ApiToken, ident: str) -> AllocationOut:
    with services.db.read_session() as session:
        return to_out(session, find(session, token, ident))


async def wait_for_change(
    services: Services,
    token: ApiToken,
    ident: str,
    *,
    wait: float,
    since_state: str | None = None,
    gone: asyncio.Event | None = None,
) -> AllocationOut:
    """The allocation once its state differs from ``since_state`` (default: as it is now),
    or as it is after ``wait`` seconds (at most :data:`WAIT_MAX_S`). Ends early, with
    :class:`ClientGone`, when ``gone`` is set: the client disconnected."""
    if since_state is not None and since_state not in STATES:
        raise ValidationFailed(
            [Problem("since_state", f"unknown state {since_state!r}")],
            hint="one of: " + ", ".join(STATES),
        )
    hub = hub_for(services.db)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + max(0.0, min(wait, WAIT_MAX_S))
    while True:
        woken = hub.subscribe(ident)  # before the read: a change after it still wakes us
        try:
            out: AllocationOut = await _in_thread(read, services, token, ident)
            since_state = since_state or out.state
            remaining = deadline - loop.time()
            if out.state != since_state or remaining <= 0:
                return out
            await _wake_or_gone(woken, gone, min(RECHECK_S, remaining))
        finally:
            hub.unsubscribe(ident, woken)


async def _wake_or_gone(woken: asyncio.Event, gone: asyncio.Event | None, within: float) -> None:
    """Wait for a change notice, at most ``within`` seconds; raise when the client left."""
    waits = [asyncio.ensure_future(woken.wait())]
    if gone is not None:
        waits.append(asyncio.ensure_future(gone.wait()))
    try:
        await asyncio.wait(waits, timeout=within, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waits:
            w.cancel()
    if gone is not None and gone.is_set():
        raise ClientGone("the client went away during a long-poll")


def _log_rows(
    session: Session, allocation_id: int, machine_id: int | None, since: datetime, after_id: int
) -> list[Event]:
    """This allocation's own events, and its machine's (not other allocations') since it
    was made: one indexed query (events carry allocation_id)."""
    about = col(Event.allocation_id) == allocation_id
    if machine_id is not None:
        about = or_(
            about, and_(col(Event.machine_id) == machine_id, col(Event.kind) != "allocation")
        )
    return list(
        session.exec(
            select(Event)
            .where(col(Event.id) > after_id, col(Event.at) >= since, about)
            .order_by(col(Event.id))
            .limit(LOG_BATCH)
        ).all()
    )


def _snapshot(
    services: Services, token: ApiToken, ident: str, after_id: int
) -> tuple[AllocationOut, list[dict[str, Any]], int]:
    with services.db.read_session() as session:
        allocation = find(session, token, ident)
        assert allocation.id is not None
        rows = _log_rows(
            session, allocation.id, allocation.machine_id, allocation.created_at, after_id
        )
        out = to_out(session, allocation)
    last = max([after_id, *(r.id or 0 for r in rows)])
    log = [
        {
            "id": r.id,
            "at": r.at.isoformat(),
            "machine": r.machine_name or None,
            "kind": r.kind,
            "event": r.event,
            "from_state": r.from_state,
            "to_state": r.to_state,
            "message": r.message,
        }
        for r in rows
    ]
    return out, log, last


def _sse(event: str, data: str) -> str:
    return f"event: {event}\ndata: {data}\n\n"


async def stream(
    services: Services, token: ApiToken, ident: str, *, duration: float = STREAM_MAX_S
) -> AsyncIterator[str]:
    """Server-sent events for one allocation until it is final or ``duration`` seconds pass."""
    hub = hub_for(services.db)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + max(1.0, min(duration, STREAM_MAX_S))
    next_keepalive = loop.time() + KEEPALIVE_S
    last_body, after_id = "", 0
    while True:
        woken = hub.subscribe(ident)
        try:
            out, log, after_id = await _in_thread(_snapshot, services, token, ident, after_id)
            for row in log:
                yield _sse("log", json.dumps(row))
            body = out.model_dump_json()
            if body != last_body:
                yield _sse("allocation", body)
                last_body = body
            remaining = deadline - loop.time()
            if out.state in FINAL_STATES or remaining <= 0:
                reason = "final" if out.state in FINAL_STATES else "timeout"
                yield _sse("end", json.dumps({"state": out.state, "reason": reason}))
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(woken.wait(), min(RECHECK_S, remaining))
            if loop.time() >= next_keepalive:
                next_keepalive = loop.time() + KEEPALIVE_S
                yield ": keepalive\n\n"
        finally:
            hub.unsubscribe(ident, woken)
