"""The event-loop watchdog notices a blocked loop and a saturated thread pool.

The watchdog reads time from a clock it is given, and one ``tick()`` is one look at
its probes. These tests pass a clock that moves only when they say so and tick by
hand, so a stall is staged, not waited for: a loaded machine that is slow to run
the test cannot invent a stall or hide one.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import pytest
from prometheus_client import CollectorRegistry
from structlog.testing import capture_logs

from provisiond.metrics import Metrics
from provisiond.watchdog import LoopWatchdog


def _metrics() -> Metrics:
    return Metrics(CollectorRegistry())


class Clock:
    """A monotonic clock that moves only when the test moves it."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.reads = 0

    def __call__(self) -> float:
        self.reads += 1
        return self.now


async def _until(condition: Callable[[], bool]) -> None:
    """Let the loop turn until ``condition`` holds (the bound only ends a hung test)."""
    deadline = time.monotonic() + 30
    while not condition():
        assert time.monotonic() < deadline, "the condition never held"
        await asyncio.sleep(0.001)


def _blocking_call_on_the_loop(entered: threading.Event, release: threading.Event) -> None:
    entered.set()
    release.wait(30)  # stands for a blocking call made on the loop by mistake


def test_a_blocked_loop_is_reported_with_its_stack_and_its_recovery() -> None:
    metrics = Metrics(CollectorRegistry())
    clock = Clock()

    async def main() -> tuple[LoopWatchdog, list[int]]:
        dog = LoopWatchdog(asyncio.get_running_loop(), stall_s=2.0, metrics=metrics, clock=clock)
        # A turning loop answers every probe, however far apart the ticks: nothing to say.
        for _ in range(3):
            dog.tick()
            await _until(lambda: dog._loop_probe is None)
            clock.now += 60
        assert dog.stalls == 0

        # The loop blocks; the watchdog thread goes on ticking meanwhile.
        entered, release = threading.Event(), threading.Event()
        stalls_seen: list[int] = []

        def watchdog_thread() -> None:
            try:
                entered.wait(30)
                for step in (0.0, 1.9, 0.2, 5.0):  # 1.9 s is within stall_s, 2.1 s is not
                    clock.now += step
                    dog.tick()
                    stalls_seen.append(dog.stalls)
            finally:
                release.set()

        thread = threading.Thread(target=watchdog_thread)
        thread.start()
        _blocking_call_on_the_loop(entered, release)
        thread.join(30)
        await _until(lambda: dog._loop_probe is None)  # the loop answers: recovered
        return dog, stalls_seen

    with capture_logs() as logs:
        dog, stalls_seen = asyncio.run(main())
    assert stalls_seen == [0, 0, 1, 1]  # reported past stall_s, and once
    assert dog.stalls == 1
    assert dog.longest_s == pytest.approx(
        7.1
    )  # from the probe's posting to its answer, by the clock
    [stalled] = [e for e in logs if e["event"] == "event_loop_stalled"]
    assert stalled["silent_s"] == 2.1
    assert any("_blocking_call_on_the_loop" in line for line in stalled["loop_stack"])
    [recovered] = [e for e in logs if e["event"] == "event_loop_recovered"]
    assert recovered["stalled_s"] == 7.1
    assert metrics.event_loop_stalls._value.get() == 1


def test_a_late_watchdog_thread_is_not_a_stall() -> None:
    """Time counts from when the probe was posted: a watchdog that was itself held up
    (stopped process, steal time) finds its fresh probe answered, not a stall."""
    clock = Clock()

    async def main() -> LoopWatchdog:
        dog = LoopWatchdog(asyncio.get_running_loop(), stall_s=0.3, clock=clock, metrics=_metrics())
        dog.tick()  # posts a probe
        await _until(lambda: dog._loop_probe is None)  # the loop answers it
        clock.now += 5  # 5 s later for the watchdog: a new probe, not a stall
        dog.tick()
        await _until(lambda: dog._loop_probe is None)
        dog.tick()
        return dog

    assert asyncio.run(main()).stalls == 0


def test_calls_queued_behind_busy_workers_are_reported_once() -> None:
    pool = ThreadPoolExecutor(1, thread_name_prefix="wd-test")
    clock = Clock()
    entered, release = threading.Event(), threading.Event()

    def stuck_worker() -> None:
        entered.set()
        release.wait(30)

    async def main() -> LoopWatchdog:
        loop = asyncio.get_running_loop()
        dog = LoopWatchdog(loop, stall_s=2.0, pool=pool, clock=clock, metrics=_metrics())
        first = loop.run_in_executor(pool, stuck_worker)
        second = loop.run_in_executor(pool, time.sleep, 0)  # queued behind the first
        try:
            await asyncio.to_thread(entered.wait, 30)
            for step in (0.0, 2.5, 10.0):  # posted; waited past stall_s; still the same episode
                clock.now += step
                dog.tick()
                await _until(lambda: dog._loop_probe is None)  # the loop itself keeps turning
        finally:
            release.set()
        await asyncio.gather(first, second)
        await _until(lambda: dog._pool_probe is None)  # the pool answers: the episode ends
        return dog

    with capture_logs() as logs:
        dog = asyncio.run(main())
    pool.shutdown()
    assert dog.saturations == 1
    assert dog.stalls == 0
    [saturated] = [e for e in logs if e["event"] == "thread_pool_saturated"]
    assert saturated["queued_s"] == 2.5
    assert saturated["backlog"] == 2  # the queued call and the probe
    [busy] = saturated["workers"]
    assert busy["threads"] == 1 and any("stuck_worker" in line for line in busy["stack"])


def test_the_watchdog_thread_ticks_until_stopped() -> None:
    clock = Clock()

    async def main() -> LoopWatchdog:
        dog = LoopWatchdog(asyncio.get_running_loop(), clock=clock, metrics=_metrics())
        dog.start()
        await _until(lambda: clock.reads >= 3)  # three ticks, each probe answered
        dog.stop()
        assert not dog._thread.is_alive()
        return dog

    assert asyncio.run(main()).stalls == 0
