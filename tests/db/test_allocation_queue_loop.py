"""The allocation queue on the reconciler loop, on SQLite and PostgreSQL.

The API's wake-up (``services.wake_allocator()`` after it queues a request) runs the
next pass at once: a machine freed for the oldest pending request is matched in
milliseconds although the queue's interval here is 60 s. Waits are on the
allocation hub's change notices, bounded generously, so a slow machine is not red.
"""

from __future__ import annotations

import asyncio
import time

from structlog.testing import capture_logs

from provisiond.allocations import service as allocations
from provisiond.allocations.leases import hub_for
from provisiond.allocations.queue import AllocationQueue, QueueReport
from provisiond.auth import create_token
from provisiond.container import Services
from provisiond.models import ApiToken
from provisiond.schemas.allocations import AllocationIn, AllocationOut
from tests.support.allocations import KEY, add_image, add_machines, fleet

INTERVAL_S = 60.0
BOUND_S = 10.0


class CountingQueue(AllocationQueue):
    """The real queue; each finished pass is counted, and ``fail_first`` breaks pass 1."""

    def __init__(self, services: Services, *, fail_first: bool = False) -> None:
        super().__init__(services, interval_s=INTERVAL_S)
        self.fail_first = fail_first
        self.passes = 0
        self.done = asyncio.Event()

    async def pass_once(self) -> QueueReport:
        try:
            if self.fail_first and self.passes == 0:
                raise RuntimeError("a broken pass")
            return await super().pass_once()
        finally:
            self.passes += 1
            self.done.set()

    async def after(self, n: int) -> None:
        async with asyncio.timeout(BOUND_S):
            while self.passes < n:
                self.done.clear()
                await self.done.wait()


def _token(services: Services) -> ApiToken:
    with services.db.transaction() as session:
        return create_token(session, name="ci-loop", role="ci")[0]


SPEC = AllocationIn.model_validate({"image": "debian-12", "ssh_keys": [KEY]})


def _create(services: Services, token: ApiToken) -> AllocationOut:
    return allocations.create(services, token, SPEC, actor="token:ci-loop")[0]


def test_a_queued_request_wakes_the_queue_well_inside_its_interval(services: Services) -> None:
    add_image(services.db)
    add_machines(services.db, fleet(1))
    token = _token(services)
    first = _create(services, token)
    waiting = _create(services, token)
    assert (first.state, waiting.state) == ("deploying", "pending")

    async def main() -> float:
        stop = asyncio.Event()
        queue = CountingQueue(services)
        task = asyncio.create_task(queue.run(stop))
        await queue.after(1)  # the start-up pass: nothing free for ``waiting``
        await asyncio.to_thread(add_machines, services.db, fleet(1, prefix="late"))
        hub = hub_for(services.db)
        changed = hub.subscribe(waiting.id)
        try:
            started = time.monotonic()
            # The API queues a third request behind ``waiting`` and wakes the queue,
            # whose pass gives the free machine to the oldest request, ``waiting``.
            third = await asyncio.to_thread(_create, services, token)
            assert third.state == "pending"
            await asyncio.wait_for(changed.wait(), BOUND_S)
            latency = time.monotonic() - started
        finally:
            hub.unsubscribe(waiting.id, changed)
        stop.set()
        await asyncio.wait_for(task, BOUND_S)
        return latency

    latency = asyncio.run(main())
    assert latency < 5.0, latency  # typically tens of milliseconds; the interval is 60 s
    with services.db.read_session() as session:
        assert allocations.get(session, token, waiting.id).state == "deploying"


def test_a_failing_pass_is_logged_and_the_queue_goes_on(services: Services) -> None:
    async def main() -> int:
        stop = asyncio.Event()
        queue = CountingQueue(services, fail_first=True)
        task = asyncio.create_task(queue.run(stop))
        await queue.after(1)
        services.wake_allocator()
        await queue.after(2)
        stop.set()
        await asyncio.wait_for(task, BOUND_S)
        return queue.passes

    with capture_logs() as logs:
        assert asyncio.run(main()) == 2
    # The name tests/integration/test_overload.py watches for.
    assert [e["event"] for e in logs if e["event"].endswith("_failed")] == [
        "allocation_queue_failed"
    ]


def test_stop_ends_the_queue_without_waiting_out_the_interval(services: Services) -> None:
    async def main() -> float:
        stop = asyncio.Event()
        queue = CountingQueue(services)
        task = asyncio.create_task(queue.run(stop))
        await queue.after(1)
        started = time.monotonic()
        stop.set()
        await asyncio.wait_for(task, BOUND_S)
        return time.monotonic() - started

    assert asyncio.run(main()) < 2.0
