"""One reader of the event log for every open console stream in this process.

However many tabs are open, the daemon reads new event rows once per
:data:`POLL_S` (one indexed query) and hands each batch to every subscriber's
bounded queue. A subscriber that falls behind (its queue full) is told to reload
instead of being fed a backlog. The poller runs only while someone listens, on the
event loop the streams run on, and reads in a worker thread with a time bound.

Also bounded per session: at most :data:`MAX_PER_SESSION` streams for one signed-in
browser (tabs beyond that get 429 and simply do not update live).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import SQLAlchemyError
from sqlmodel import Session, col

from provisiond.container import Services
from provisiond.errors import QuotaExceeded
from provisiond.logging import get_logger
from provisiond.models import Event

log = get_logger(__name__)

POLL_S = 1.0
#: After a poke (events committed, provisiond.cluster.notify), read this much later.
POKE_GAP_S = 0.05
READ_TIMEOUT_S = 10.0
BATCH = 200
QUEUE_BATCHES = 32
MAX_PER_SESSION = 8
#: Put in a subscriber's queue instead of rows it can no longer catch up with.
RELOAD: list[dict[str, Any]] = []


def rows_after(services: Services, since: int, limit: int = BATCH) -> list[dict[str, Any]]:
    with services.db.read_session() as session:
        rows = session.execute(
            select(
                col(Event.id), col(Event.machine_name), col(Event.kind), col(Event.event),
                col(Event.to_state),
            )
            .where(col(Event.id) > since)
            .order_by(col(Event.id))
            .limit(limit)
        ).all()  # fmt: skip
    return [
        {"id": r[0], "machine": r[1], "kind": r[2], "event": r[3], "to_state": r[4]} for r in rows
    ]


def newest_id(session: Session) -> int:
    """The newest event's id (0 for an empty log): where a live stream starts."""
    return int(session.execute(select(func.max(col(Event.id)))).scalar() or 0)


def newest(services: Services) -> int:
    with services.db.read_session() as session:
        return newest_id(session)


async def read(fn: Any, *args: Any) -> Any:
    return await asyncio.wait_for(asyncio.to_thread(fn, *args), READ_TIMEOUT_S)


class LiveHub:
    def __init__(self, services: Services) -> None:
        self.services = services
        self.queues: dict[asyncio.Queue[list[dict[str, Any]]], int] = {}
        self.per_session: Counter[int] = Counter()
        self.last = 0
        self.task: asyncio.Task[None] | None = None
        self.polls = 0
        #: Set (from any thread, :meth:`poke`) to read the log now rather than at POLL_S.
        self._poked = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None

    def subscribe(self, session_id: int) -> asyncio.Queue[list[dict[str, Any]]]:
        if self.per_session[session_id] >= MAX_PER_SESSION:
            raise QuotaExceeded(
                f"this browser already has {MAX_PER_SESSION} live console streams open",
                hint="close some console tabs; this one shows what it has without live updates",
            )
        queue: asyncio.Queue[list[dict[str, Any]]] = asyncio.Queue(QUEUE_BATCHES)
        self.queues[queue] = session_id
        self.per_session[session_id] += 1
        if self.task is None or self.task.done():
            self._loop = asyncio.get_running_loop()
            self.task = self._loop.create_task(self._run())
        return queue

    def unsubscribe(self, queue: asyncio.Queue[list[dict[str, Any]]]) -> None:
        session_id = self.queues.pop(queue, None)
        if session_id is not None:
            self.per_session[session_id] -= 1
            if self.per_session[session_id] <= 0:
                del self.per_session[session_id]
        if not self.queues and self.task is not None:
            self.task.cancel()
            self.task = None

    async def _run(self) -> None:
        try:
            self.last = await read(newest, self.services)
            while self.queues:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._poked.wait(), POLL_S)
                    await asyncio.sleep(POKE_GAP_S)  # a burst of commits: one read
                self._poked.clear()
                try:
                    rows = await read(rows_after, self.services, self.last)
                except (TimeoutError, SQLAlchemyError) as exc:
                    log.info("console_live_read_failed", error=type(exc).__name__)
                    continue
                self.polls += 1
                if len(rows) >= BATCH:  # a burst: everyone reloads, from the newest on
                    self.last = await read(newest, self.services)
                    self._publish(RELOAD)
                elif rows:
                    self.last = rows[-1]["id"]
                    self._publish(rows)
        except (TimeoutError, SQLAlchemyError) as exc:
            log.info("console_live_hub_stopped", error=type(exc).__name__)
            for queue in list(self.queues):
                self._offer(queue, RELOAD)

    def poke(self) -> None:
        """Read the log now (new events were committed); safe from any thread."""
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._poked.set)

    def _publish(self, rows: list[dict[str, Any]]) -> None:
        for queue in list(self.queues):
            self._offer(queue, rows)

    @staticmethod
    def _offer(queue: asyncio.Queue[list[dict[str, Any]]], rows: list[dict[str, Any]]) -> None:
        try:
            queue.put_nowait(rows)
        except asyncio.QueueFull:  # behind by QUEUE_BATCHES polls: drop them, reload once
            with contextlib.suppress(asyncio.QueueEmpty):
                while True:
                    queue.get_nowait()
            queue.put_nowait(RELOAD)


_HUBS: dict[tuple[int, int], LiveHub] = {}


def hub_for(services: Services) -> LiveHub:
    """This process's hub for ``services`` on the running event loop."""
    key = (id(services), id(asyncio.get_running_loop()))
    hub = _HUBS.get(key)
    if hub is None or hub.services is not services:
        hub = _HUBS[key] = LiveHub(services)
    return hub


def poke(services: Services) -> None:
    """Make every live hub of ``services`` read the log now (any thread)."""
    for hub in list(_HUBS.values()):
        if hub.services is services and hub.queues:
            hub.poke()


def forget(hub: LiveHub) -> None:
    """Drop a hub nobody listens to (keeps the map from growing across loops)."""
    if not hub.queues:
        for key, value in list(_HUBS.items()):
            if value is hub:
                del _HUBS[key]
