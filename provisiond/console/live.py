"""The console's live stream: server-sent events for every new event-log row.

The event log is the one place every change lands (state transitions, power, boot
phases, cabling, audits), whichever daemon made it, so the stream follows it: one
indexed read of the rows after the last id sent, every :data:`POLL_S`. Each row
becomes ``event: change`` with its id (the browser's ``Last-Event-ID`` on reconnect)
and what a page needs to decide whether to refresh (the machine's name, the kind and
the new state), never the row's message or details.

Bounded: a stream lasts :data:`STREAM_MAX_S` and the browser reconnects; admission
counts it as a ``watch`` (its own bound). The session is re-checked every
:data:`RECHECK_S`: after a sign-out the stream sends ``signed_out`` and ends.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import SQLAlchemyError
from sqlmodel import col
from starlette.requests import Request

from provisiond.console.auth import COOKIE, ConsoleUser, SignInRequired, console_key, current_user
from provisiond.container import Services
from provisiond.logging import get_logger
from provisiond.models import Event

log = get_logger(__name__)

POLL_S = 1.0
RECHECK_S = 5.0
KEEPALIVE_S = 15.0
STREAM_MAX_S = 300.0
READ_TIMEOUT_S = 10.0
BATCH = 200


def _rows(services: Services, since: int) -> list[dict[str, Any]]:
    with services.db.read_session() as session:
        rows = session.execute(
            select(
                col(Event.id), col(Event.machine_name), col(Event.kind), col(Event.event),
                col(Event.to_state),
            )
            .where(col(Event.id) > since)
            .order_by(col(Event.id))
            .limit(BATCH)
        ).all()  # fmt: skip
    return [
        {"id": r[0], "machine": r[1], "kind": r[2], "event": r[3], "to_state": r[4]} for r in rows
    ]


def _still_signed_in(services: Services, cookie: str | None) -> bool:
    try:
        with services.db.read_session() as session:
            current_user(session, console_key(services.secrets.mac_key), cookie)
    except SignInRequired:
        return False
    return True


async def _read(fn: Any, *args: Any) -> Any:
    return await asyncio.wait_for(asyncio.to_thread(fn, *args), READ_TIMEOUT_S)


def _head(services: Services) -> int:
    with services.db.read_session() as session:
        return int(session.execute(select(func.max(col(Event.id)))).scalar() or 0)


async def stream(
    services: Services, request: Request, user: ConsoleUser, *, since: int
) -> AsyncIterator[bytes]:
    """``since`` is the last event the page has seen (0: start from now). A page that
    is more than a batch behind is told to ``reload`` once and the stream skips to the
    newest event: it never replays the log."""
    del user  # authenticated by the route; re-checked by cookie below
    cookie = request.cookies.get(COOKIE)
    loop = asyncio.get_running_loop()
    start = loop.time()
    last_sent = last_check = start
    yield b"retry: 2000\n\n"
    try:
        if since <= 0:
            since = await _read(_head, services)
        while loop.time() - start < STREAM_MAX_S:
            if await request.is_disconnected():
                return
            now = loop.time()
            if now - last_check >= RECHECK_S:
                last_check = now
                if not await _read(_still_signed_in, services, cookie):
                    yield b"event: signed_out\ndata: {}\n\n"
                    return
            rows = await _read(_rows, services, since)
            if len(rows) >= BATCH:  # far behind: refresh once, from the newest event on
                since = await _read(_head, services)
                yield f"id: {since}\nevent: reload\ndata: {{}}\n\n".encode()
                rows = []
            for row in rows:
                since = row["id"]
                payload = json.dumps(row, separators=(",", ":"))
                yield f"id: {since}\nevent: change\ndata: {payload}\n\n".encode()
                last_sent = loop.time()
            if loop.time() - last_sent >= KEEPALIVE_S:
                yield b": keepalive\n\n"
                last_sent = loop.time()
            await asyncio.sleep(POLL_S)
    except (TimeoutError, SQLAlchemyError) as exc:
        # a slow or failing database ends this stream quietly; the browser reconnects
        log.info("console_live_stream_ended", error=type(exc).__name__)
