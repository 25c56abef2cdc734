"""The console's live hub: one reader of the event log for every open stream, bounded
queues, a bound per browser (against the real database, SQLite and PostgreSQL)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from provisiond import events
from provisiond.console import hub as hubs
from provisiond.container import Services
from provisiond.errors import QuotaExceeded
from tests.support.statements import counting

pytestmark = pytest.mark.postgres


def _event(services: Services, name: str) -> None:
    with services.db.transaction() as session:
        events.record(session, events.EventKind.AUDIT, "test", message=name, actor="t")


async def _drain(queue: asyncio.Queue[list[dict[str, Any]]], within_s: float) -> list[Any]:
    got: list[Any] = []
    loop = asyncio.get_running_loop()
    end = loop.time() + within_s
    while loop.time() < end:
        try:
            got.append(await asyncio.wait_for(queue.get(), end - loop.time()))
        except TimeoutError:
            break
    return got


def test_five_streams_share_one_reader(services: Services, monkeypatch: Any) -> None:
    monkeypatch.setattr(hubs, "POLL_S", 0.2)

    async def run() -> tuple[list[list[Any]], list[str], int]:
        hub = hubs.hub_for(services)
        queues = [hub.subscribe(session_id=i) for i in range(5)]
        await asyncio.sleep(0.3)  # the hub has read where the log ends
        with counting(services.db) as seen:
            await asyncio.to_thread(_event, services, "one")
            got = await asyncio.gather(*(_drain(q, 1.0) for q in queues))
        polls = hub.polls
        for q in queues:
            hub.unsubscribe(q)
        assert hub.task is None
        return got, seen, polls

    got, seen, polls = asyncio.run(run())
    for batches in got:
        rows = [row for batch in batches for row in batch]
        assert [r["kind"] for r in rows] == ["audit"], batches
    selects = seen.count("SELECT")
    # one read per poll for all five subscribers, not one per subscriber
    assert 1 <= selects <= polls + 1, (selects, polls, seen)


def test_a_browser_gets_at_most_eight_streams(services: Services) -> None:
    async def run() -> None:
        hub = hubs.hub_for(services)
        queues = [hub.subscribe(session_id=7) for _ in range(hubs.MAX_PER_SESSION)]
        with pytest.raises(QuotaExceeded):
            hub.subscribe(session_id=7)
        other = hub.subscribe(session_id=8)  # another browser is not affected
        hub.unsubscribe(queues.pop())
        queues.append(hub.subscribe(session_id=7))  # a closed tab frees its slot
        for q in [*queues, other]:
            hub.unsubscribe(q)
        assert hub.per_session == {}

    asyncio.run(run())


def test_a_subscriber_that_falls_behind_gets_one_reload(services: Services) -> None:
    async def run() -> list[Any]:
        hub = hubs.hub_for(services)
        queue = hub.subscribe(session_id=1)
        for i in range(hubs.QUEUE_BATCHES + 5):
            hub._publish([{"id": i, "machine": "m", "kind": "k", "event": "", "to_state": None}])
        got = await _drain(queue, 0.1)
        hub.unsubscribe(queue)
        return got

    got = asyncio.run(run())
    assert got[0] is hubs.RELOAD
    assert len(got) < hubs.QUEUE_BATCHES
