"""The event-loop watchdog notices a blocked loop and a saturated thread pool."""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor

from prometheus_client import CollectorRegistry
from structlog.testing import capture_logs

from provisiond.metrics import Metrics
from provisiond.watchdog import LoopWatchdog


def _blocking_sleep_on_the_loop() -> None:
    time.sleep(1.5)  # stands for a blocking call made on the loop by mistake


def test_a_blocked_loop_is_reported_with_its_stack_and_its_recovery() -> None:
    metrics = Metrics(CollectorRegistry())

    async def main() -> LoopWatchdog:
        dog = LoopWatchdog(asyncio.get_running_loop(), stall_s=0.5, metrics=metrics)
        dog.start()
        await asyncio.sleep(0.6)  # a turning loop: nothing to say
        assert dog.stalls == 0
        _blocking_sleep_on_the_loop()
        await asyncio.sleep(0.6)  # the loop answers again
        dog.stop()
        return dog

    with capture_logs() as logs:
        dog = asyncio.run(main())
    assert dog.stalls == 1
    assert 1.0 <= dog.longest_s < 3.0
    stalled = [e for e in logs if e["event"] == "event_loop_stalled"]
    assert len(stalled) == 1
    assert any("_blocking_sleep_on_the_loop" in line for line in stalled[0]["loop_stack"])
    assert [e["event"] for e in logs if e["event"] == "event_loop_recovered"]
    assert metrics.event_loop_stalls._value.get() == 1


def test_a_late_watchdog_thread_is_not_a_stall() -> None:
    """Time counts from when the probe was posted: a watchdog that was itself held up
    (stopped process, steal time) finds its fresh probe answered, not a stall."""

    async def main() -> LoopWatchdog:
        dog = LoopWatchdog(asyncio.get_running_loop(), stall_s=0.3)
        dog._check_loop(time.monotonic())  # posts a probe
        await asyncio.sleep(0.05)  # the loop answers it
        dog._check_loop(time.monotonic() + 5)  # 5 s later for the watchdog: a new probe
        await asyncio.sleep(0.05)
        dog._check_loop(time.monotonic())
        return dog

    assert asyncio.run(main()).stalls == 0


def test_calls_queued_behind_busy_workers_are_reported_once() -> None:
    pool = ThreadPoolExecutor(1, thread_name_prefix="wd-test")

    def stuck_worker() -> None:
        time.sleep(1.5)

    async def main() -> LoopWatchdog:
        loop = asyncio.get_running_loop()
        dog = LoopWatchdog(loop, stall_s=0.5, pool=pool)
        dog.start()
        first = loop.run_in_executor(pool, stuck_worker)
        second = loop.run_in_executor(pool, time.sleep, 0)  # queued behind the first
        await asyncio.gather(first, second)
        await asyncio.sleep(0.5)
        dog.stop()
        return dog

    with capture_logs() as logs:
        dog = asyncio.run(main())
    pool.shutdown()
    assert dog.saturations == 1
    assert dog.stalls == 0  # the loop itself kept turning
    saturated = [e for e in logs if e["event"] == "thread_pool_saturated"]
    assert len(saturated) == 1 and saturated[0]["backlog"] >= 1  # the probe, at least
    [busy] = saturated[0]["workers"]
    assert busy["threads"] == 1 and any("stuck_worker" in line for line in busy["stack"])
