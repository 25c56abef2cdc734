"""run_loop: prompt wake-ups, no lost or overlapping passes, failures logged, a prompt stop.

Waits are on conditions (events set by the pass), each bounded by a generous
timeout, so a loaded machine makes these tests slower, not red. The loops use a
60 s interval: any pass seen within the bound came from a wake-up, not the timer.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from collections.abc import Awaitable, Callable

from structlog.testing import capture_logs

from provisiond.reconciler import Wakeup, run_loop

INTERVAL_S = 60.0
BOUND_S = 10.0  # far above any expected latency, far below the interval


class Passes:
    """A pass function that counts its runs and lets a test wait for the n-th."""

    def __init__(self, body: Callable[[int], Awaitable[None]] | None = None) -> None:
        self.count = 0
        self.active = 0
        self.most_active = 0
        self.body = body
        self._changed = asyncio.Event()

    async def __call__(self) -> None:
        self.count += 1
        self.active += 1
        self.most_active = max(self.most_active, self.active)
        try:
            if self.body is not None:
                await self.body(self.count)
        finally:
            self.active -= 1
            self._changed.set()

    async def reach(self, n: int) -> None:
        async with asyncio.timeout(BOUND_S):
            while self.count < n or self.active:
                self._changed.clear()
                await self._changed.wait()


def _start(passes: Passes, wakeup: Wakeup, stop: asyncio.Event) -> asyncio.Task[None]:
    return asyncio.create_task(
        run_loop(passes, wakeup=wakeup, interval_s=INTERVAL_S, stop=stop, name="test_loop")
    )


def test_a_wakeup_from_another_thread_starts_a_pass_at_once() -> None:
    async def main() -> list[float]:
        wakeup, stop, passes = Wakeup(), asyncio.Event(), Passes()
        task = _start(passes, wakeup, stop)
        await passes.reach(1)  # the first pass runs at start, without a wake-up
        latencies = []
        for n in range(2, 5):
            started = time.monotonic()
            threading.Thread(target=wakeup.set).start()  # as an API route's thread does
            await passes.reach(n)
            latencies.append(time.monotonic() - started)
        stop.set()
        await asyncio.wait_for(task, BOUND_S)
        return latencies

    latencies = asyncio.run(main())
    # Typically well under 10 ms; the interval is 60 s.
    assert max(latencies) < 2.0, latencies


def test_a_failing_pass_is_logged_and_the_loop_goes_on() -> None:
    async def fail_first(n: int) -> None:
        if n == 1:
            raise RuntimeError("database went away")

    async def main() -> int:
        wakeup, stop = Wakeup(), asyncio.Event()
        passes = Passes(fail_first)
        task = _start(passes, wakeup, stop)
        await passes.reach(1)
        wakeup.set()
        await passes.reach(2)
        stop.set()
        await asyncio.wait_for(task, BOUND_S)
        return passes.count

    with capture_logs() as logs:
        assert asyncio.run(main()) == 2
    failed = [e for e in logs if e["event"] == "test_loop_failed"]
    assert len(failed) == 1
    assert failed[0]["log_level"] == "error"


def test_passes_never_overlap_and_wakeups_during_a_pass_make_one_more() -> None:
    async def main() -> Passes:
        wakeup, stop = Wakeup(), asyncio.Event()
        in_first = asyncio.Event()
        release_first = asyncio.Event()

        async def body(n: int) -> None:
            if n == 1:
                in_first.set()
                await release_first.wait()

        passes = Passes(body)
        task = _start(passes, wakeup, stop)
        await asyncio.wait_for(in_first.wait(), BOUND_S)
        setters = [threading.Thread(target=wakeup.set) for _ in range(20)]
        for t in setters:
            t.start()
        for t in setters:
            t.join()
        release_first.set()
        await passes.reach(2)
        # Twenty wake-ups during pass 1 were one request for "run again", not twenty.
        await asyncio.sleep(0.3)
        stop.set()
        await asyncio.wait_for(task, BOUND_S)
        return passes

    passes = asyncio.run(main())
    assert passes.most_active == 1
    assert passes.count == 2


def test_stop_while_waiting_ends_the_loop_at_once() -> None:
    async def main() -> float:
        wakeup, stop, passes = Wakeup(), asyncio.Event(), Passes()
        task = _start(passes, wakeup, stop)
        await passes.reach(1)  # now waiting out the 60 s interval
        started = time.monotonic()
        stop.set()
        await asyncio.wait_for(task, BOUND_S)
        return time.monotonic() - started

    assert asyncio.run(main()) < 2.0


def test_stop_during_a_pass_lets_it_finish_and_starts_no_other() -> None:
    finished = []

    async def body(n: int) -> None:
        stop.set()  # stop arrives in the middle of the pass
        wakeup.set()  # and so does a wake-up, which must not start another
        await asyncio.sleep(0.05)
        finished.append(n)

    async def main() -> Passes:
        passes = Passes(body)
        await asyncio.wait_for(_start(passes, wakeup, stop), BOUND_S)
        return passes

    wakeup, stop = Wakeup(), asyncio.Event()
    assert asyncio.run(main()).count == 1
    assert finished == [1]


def test_a_wakeup_set_before_the_wait_is_not_lost() -> None:
    async def main() -> tuple[bool, bool]:
        wakeup = Wakeup()
        wakeup.set()
        early = await wakeup.wait_async(INTERVAL_S)
        wakeup.clear()
        late = await wakeup.wait_async(0.01)
        return early, late

    assert asyncio.run(main()) == (True, False)


def test_min_gap_coalesces_a_stream_of_wakeups() -> None:
    """A wake-up per request under load: passes start at least min_gap_s apart, and
    the last wake-up of the stream still gets its pass (none is lost)."""

    async def main() -> tuple[int, list[float], float]:
        wakeup, stop, passes = Wakeup(), asyncio.Event(), Passes()
        starts: list[float] = []

        async def body(_: int) -> None:
            starts.append(time.monotonic())

        passes.body = body
        task = asyncio.create_task(
            run_loop(
                passes, wakeup=wakeup, interval_s=INTERVAL_S, stop=stop, name="t", min_gap_s=0.2
            )
        )
        await passes.reach(1)
        end = time.monotonic() + 1.0
        last = 0.0
        while time.monotonic() < end:  # 100 wake-ups in one second, bounded
            wakeup.set()
            last = time.monotonic()
            await asyncio.sleep(0.01)
        while starts[-1] < last:  # the stream's last wake-up gets a pass after it
            await passes.reach(passes.count + 1)
        stop.set()
        await asyncio.wait_for(task, BOUND_S)
        return passes.count, starts, last

    count, starts, last = asyncio.run(main())
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    assert min(gaps) >= 0.19, gaps
    assert starts[-1] >= last
    assert 3 <= count <= 9, count  # about 1 s / 0.2 s, not 100
