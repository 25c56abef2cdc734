"""The daemon's one reconciler loop: run a pass, wait for a wake-up or an interval, repeat.

A reconciler's pass reads what needs doing from the database and does it, so an
extra pass is harmless and a missed wake-up costs at most one interval. The API
sets the reconciler's :class:`Wakeup` right after it commits something the
reconciler should act on, so the next pass starts at once instead of within the
interval (the allocation queue answers a queued request in milliseconds, not a
second).

:func:`run_loop` gives each reconciler the same guarantees:

- passes never overlap (one task runs them one after another);
- a wake-up that arrives *during* a pass is not lost: the flag is cleared before the
  pass, so the next pass starts as soon as this one ends, and any number of wake-ups
  during one pass make one extra pass, not a backlog;
- a pass that raises is logged as ``<name>_failed`` and the loop goes on;
- setting ``stop`` ends the wait at once; a pass under way is finished, not cancelled.

    >>> await run_loop(queue.pass_once, wakeup=services.allocation_wakeup,
    ...                interval_s=1.0, stop=stop, name="allocation_queue")
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Awaitable, Callable

from provisiond.logging import get_logger

log = get_logger(__name__)


class Wakeup(threading.Event):
    """A :class:`threading.Event` that asyncio code can also await without a thread.

    Any thread may :meth:`set` it (API routes run in worker threads); :meth:`wait_async`
    wakes within one event-loop turn.
    """

    def __init__(self) -> None:
        super().__init__()
        self._lock = threading.Lock()
        self._waiters: set[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = set()

    def set(self) -> None:
        super().set()
        with self._lock:
            waiters = list(self._waiters)
        for loop, event in waiters:
            if not loop.is_closed():
                loop.call_soon_threadsafe(event.set)

    async def wait_async(self, timeout: float) -> bool:  # noqa: ASYNC109
        """True once set (already, or within ``timeout`` seconds); False on timeout."""
        event = asyncio.Event()
        item = (asyncio.get_running_loop(), event)
        with self._lock:
            self._waiters.add(item)
        try:
            # Registered before the check: a set() between the two still wakes us.
            if self.is_set():
                return True
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await event.wait()
            return self.is_set()
        finally:
            with self._lock:
                self._waiters.discard(item)


async def run_loop(
    pass_fn: Callable[[], Awaitable[object]],
    *,
    wakeup: Wakeup,
    interval_s: float,
    stop: asyncio.Event,
    name: str,
    min_gap_s: float = 0.0,
) -> None:
    """Run ``pass_fn`` now, then at each wake-up or every ``interval_s``, until ``stop``.

    ``min_gap_s``: passes start at least this far apart, so a stream of wake-ups (one
    per API request under load) coalesces into a few passes a second instead of a
    pass per request.
    """
    stopped = asyncio.ensure_future(stop.wait())
    loop = asyncio.get_running_loop()
    try:
        while not stop.is_set():
            began = loop.time()
            wakeup.clear()
            try:
                await pass_fn()
            except Exception:  # a failed pass is logged; the next one tries again
                log.exception(f"{name}_failed")
            if stop.is_set():
                break
            woken = asyncio.ensure_future(wakeup.wait_async(interval_s))
            await asyncio.wait({woken, stopped}, return_when=asyncio.FIRST_COMPLETED)
            woken.cancel()
            gap = min_gap_s - (loop.time() - began)
            if gap > 0 and not stop.is_set():
                await asyncio.wait({stopped}, timeout=gap)
    finally:
        stopped.cancel()
