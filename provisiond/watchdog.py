"""Event-loop watchdog: say so, with a stack, when the daemon's loop stops turning.

The boot routes' async parts, the deploy engine, the scheduler and uvicorn itself
share one asyncio loop (sync API routes run on anyio's own worker threads, but get
there through it). A blocking call made on it by mistake freezes all of them at
once, and from outside that only looks like timeouts. A plain thread (it must not
depend on the loop it watches) posts a no-op probe to the loop every
:data:`TICK_S` seconds; when a probe has waited more than ``stall_s`` seconds it
logs ``event_loop_stalled`` once, with what the loop thread is executing, and
``event_loop_recovered`` with the stall's length when the probe runs. Time is
counted from when the probe was posted, so a watchdog thread that was itself late
(a stopped process, steal time) reports nothing.

The default thread pool (where ``asyncio.to_thread`` runs database work) is probed
the same way: a no-op submitted to it that waits ``stall_s`` seconds for a worker
logs ``thread_pool_saturated`` once per episode, with the distinct stacks the
workers are in and how many share each.

Time comes from ``clock`` (``time.monotonic`` unless a test passes its own), and one
:meth:`LoopWatchdog.tick` is one look at both probes, so a test can stage a stall
without waiting for one.
"""

from __future__ import annotations

import asyncio
import collections
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from provisiond.logging import get_logger, thread_stack
from provisiond.metrics import Metrics

log = get_logger(__name__)

TICK_S = 0.25
#: Distinct worker stacks shown in one thread_pool_saturated line.
MAX_STACKS = 5


class LoopWatchdog:
    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        *,
        metrics: Metrics,
        stall_s: float = 2.0,
        pool: ThreadPoolExecutor | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.loop = loop
        self.clock = clock
        self.stall_s = stall_s
        self.pool = pool
        self.metrics = metrics
        self.stalls = 0
        self.saturations = 0
        self.longest_s = 0.0
        self._loop_thread = threading.get_ident()
        # When the pending probe was posted (None: none pending). Plain attribute
        # stores: the watchdog thread sets them, the loop or a pool worker clears them.
        self._loop_probe: float | None = None
        self._pool_probe: float | None = None
        self._stall_logged = False
        self._saturation_logged = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="loop-watchdog", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=2)

    # --- probes: run on the loop / in the pool ----------------------------------------

    def _loop_answer(self) -> None:
        posted, self._loop_probe = self._loop_probe, None
        if self._stall_logged and posted is not None:
            length = self.clock() - posted
            self.longest_s = max(self.longest_s, length)
            self._stall_logged = False
            log.warning("event_loop_recovered", stalled_s=round(length, 1))

    def _pool_answer(self) -> None:
        self._pool_probe = None
        self._saturation_logged = False

    # --- the watchdog thread ----------------------------------------------------------

    def _watch(self) -> None:
        while not self._stop.wait(TICK_S):
            if not self.tick():
                return

    def tick(self) -> bool:
        """Post a probe where none is pending, report one that waited too long; False
        once the loop or the pool is gone."""
        now = self.clock()
        return self._check_loop(now) and self._check_pool(now)

    def _check_loop(self, now: float) -> bool:
        posted = self._loop_probe
        if posted is None:
            self._loop_probe = now
            try:
                self.loop.call_soon_threadsafe(self._loop_answer)
            except RuntimeError:  # the loop is closed: nothing left to watch
                return False
        elif not self._stall_logged and now - posted > self.stall_s:
            self._stall_logged = True
            self.stalls += 1
            self.metrics.event_loop_stalls.inc()
            log.warning(
                "event_loop_stalled",
                silent_s=round(now - posted, 1),
                loop_stack=thread_stack(self._loop_thread),
            )
        return True

    def _check_pool(self, now: float) -> bool:
        if self.pool is None:
            return True
        posted = self._pool_probe
        if posted is None:
            self._pool_probe = now
            try:
                self.pool.submit(self._pool_answer)
            except RuntimeError:  # shut down
                return False
        elif not self._saturation_logged and now - posted > self.stall_s:
            self._saturation_logged = True
            self.saturations += 1
            self.metrics.thread_pool_saturations.inc()
            queue = getattr(self.pool, "_work_queue", None)
            log.warning(
                "thread_pool_saturated",
                queued_s=round(now - posted, 1),
                backlog=queue.qsize() if queue is not None else None,
                workers=self._worker_stacks(),
            )
        return True

    def _worker_stacks(self) -> list[dict[str, object]]:
        prefix = getattr(self.pool, "_thread_name_prefix", None) or "\0"
        stacks = collections.Counter(
            tuple(thread_stack(t.ident, limit=6))
            for t in threading.enumerate()
            if t.ident is not None and t.name.startswith(prefix)
        )
        return [
            {"threads": count, "stack": list(stack)}
            for stack, count in stacks.most_common(MAX_STACKS)
        ]
