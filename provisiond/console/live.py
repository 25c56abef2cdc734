"""The console's live stream: server-sent events for every new event-log row.

The event log is the one place every change lands (state transitions, power, boot
phases, cabling, audits), whichever daemon made it, so the stream follows it through
this process's :class:`~provisiond.console.hub.LiveHub`: one reader of the log for
every open tab. Each row becomes ``event: change`` with its id (the browser's
``Last-Event-ID`` on reconnect) and what a page needs to decide whether to refresh
(the machine's name, the kind and the new state), never the row's message or details.

A stream starts from now (``since`` 0) or from the last id its page saw; a page more
than a batch behind, or one the hub had to drop, gets ``reload`` once instead of a
backlog: the log is never replayed. Bounded: a stream lasts :data:`STREAM_MAX_S` and
the browser reconnects; admission counts it as a ``watch`` (its own bound); the hub
allows a few per signed-in browser. The session is re-checked every
:data:`RECHECK_S`: after a sign-out the stream sends ``signed_out`` and ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

from sqlalchemy.exc import SQLAlchemyError
from starlette.requests import Request

from provisiond.console import hub as hubs
from provisiond.console.auth import COOKIE, ConsoleUser, SignInRequired, console_key, current_user
from provisiond.container import Services
from provisiond.errors import QuotaExceeded
from provisiond.logging import get_logger

log = get_logger(__name__)

RECHECK_S = 5.0
KEEPALIVE_S = 15.0
STREAM_MAX_S = 300.0


def _still_signed_in(services: Services, cookie: str | None) -> bool:
    try:
        with services.db.read_session() as session:
            current_user(session, console_key(services.secrets.mac_key), cookie)
    except SignInRequired:
        return False
    return True


def _frame(event: str, data: dict[str, Any], ident: int | None = None) -> bytes:
    head = f"id: {ident}\n" if ident is not None else ""
    return f"{head}event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


async def stream(
    services: Services, request: Request, user: ConsoleUser, *, since: int
) -> AsyncIterator[bytes]:
    cookie = request.cookies.get(COOKIE)
    hub = hubs.hub_for(services)
    try:
        queue = hub.subscribe(user.session_id)
    except QuotaExceeded as exc:  # this tab shows what it has; it asks again in a minute
        yield b"retry: 60000\n\n" + _frame("busy", {"message": exc.message})
        return
    events = _events(services, request, queue, cookie, since)
    try:
        async for frame in events:
            yield frame
    finally:
        await events.aclose()
        hub.unsubscribe(queue)
        hubs.forget(hub)


async def _events(
    services: Services,
    request: Request,
    queue: asyncio.Queue[list[dict[str, Any]]],
    cookie: str | None,
    since: int,
) -> AsyncGenerator[bytes, None]:
    loop = asyncio.get_running_loop()
    start = last_sent = last_check = loop.time()
    try:
        yield b"retry: 2000\n\n"
        if since > 0:  # a reconnect or a page load: what it missed, if not too much
            missed = await hubs.read(hubs.rows_after, services, since, hubs.BATCH)
            if len(missed) >= hubs.BATCH:
                yield _frame("reload", {})
                since = await hubs.read(hubs.newest, services)
            for row in missed if len(missed) < hubs.BATCH else []:
                since = row["id"]
                yield _frame("change", row, since)
        while loop.time() - start < STREAM_MAX_S:
            if await request.is_disconnected():
                return
            if loop.time() - last_check >= RECHECK_S:
                last_check = loop.time()
                if not await hubs.read(_still_signed_in, services, cookie):
                    yield _frame("signed_out", {})
                    return
            rows: list[dict[str, Any]] | None = None
            with contextlib.suppress(TimeoutError):
                rows = await asyncio.wait_for(queue.get(), hubs.POLL_S)
            if rows is hubs.RELOAD:
                yield _frame("reload", {})
                last_sent = loop.time()
            for row in rows or []:
                if row["id"] > since:
                    since = row["id"]
                    yield _frame("change", row, since)
                    last_sent = loop.time()
            if loop.time() - last_sent >= KEEPALIVE_S:
                yield b": keepalive\n\n"
                last_sent = loop.time()
    except (TimeoutError, SQLAlchemyError) as exc:
        # a slow or failing database ends this stream quietly; the browser reconnects
        log.info("console_live_stream_ended", error=type(exc).__name__)
