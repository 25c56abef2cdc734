"""Event-loop watchdog: say so, with a stack, when the daemon's loop stops turning.

Everything the API, the boot routes and the deploy engine do passes through one
asyncio loop. A blocking call made on it by mistake, or a default thread pool with
every worker waiting, freezes all of them at once, and from outside that only looks
like timeouts. A plain thread (it must not depend on the loop it watches) posts a
no-op to the loop every :data:`TICK_S` seconds; when one has not run after
``stall_s`` seconds it logs ``event_loop_stalled`` once, with what the loop thread
is executing and how many calls wait for a thread of the default pool, and
``event_loop_recovered`` with the stall's length when the loop answers again.

It watches the default thread pool (where ``asyncio.to_thread`` runs database
work) the same way: calls left queued behind busy workers for ``stall_s`` seconds
log ``thread_pool_saturated`` once, with what every worker is doing.
"""

from __future__ import annotations

import asyncio
import sys
import threading
import time
import traceback
from concurrent.futures import ThreadPoolExecutor

from provisiond.logging import get_logger
from provisiond.metrics import Metrics

log = get_logger(__name__)

TICK_S = 0.25


def _stack_of(thread_id: int, limit: int = 12) -> list[str]:
    frame = sys._current_frames().get(thread_id)
    if frame is None:
        return []
    return [line.rstrip() for line in traceback.format_stack(frame, limit=limit)]


class LoopWatchdog:
    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        *,
        stall_s: float = 2.0,
        pool: ThreadPoolExecutor | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.metrics = metrics
        self.loop = loop
        self.stall_s = stall_s
        self.pool = pool
        self.stalls = 0
        self.saturations = 0
        self.longest_s = 0.0
        self._loop_thread = threading.get_ident()
        self._last_answer = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="loop-watchdog", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)

    def _answer(self) -> None:
        self._last_answer = time.monotonic()

    def _backlog(self) -> int | None:
        queue = getattr(self.pool, "_work_queue", None)
        return queue.qsize() if queue is not None else None

    def _worker_stacks(self) -> dict[str, list[str]]:
        names = {t.ident: t.name for t in threading.enumerate()}
        prefix = getattr(self.pool, "_thread_name_prefix", None) or "\0"
        return {
            names[ident]: _stack_of(ident, limit=6)
            for ident in list(names)
            if ident is not None and names[ident].startswith(prefix)
        }

    def _check_pool(self, queued_since: float | None) -> float | None:
        backlog = self._backlog()
        now = time.monotonic()
        if not backlog:
            return None
        if queued_since is None:
            return now
        if now - queued_since > self.stall_s:
            self.saturations += 1
            if self.metrics is not None:
                self.metrics.thread_pool_saturations.inc()
            log.warning(
                "thread_pool_saturated",
                backlog=backlog,
                queued_s=round(now - queued_since, 1),
                workers=self._worker_stacks(),
            )
            return float("inf")  # logged once per episode; reset when the queue drains
        return queued_since

    def _watch(self) -> None:
        stalled_since: float | None = None
        queued_since: float | None = None
        while not self._stop.wait(TICK_S):
            queued_since = self._check_pool(queued_since)
            try:
                self.loop.call_soon_threadsafe(self._answer)
            except RuntimeError:  # the loop is closed: nothing left to watch
                return
            silent = time.monotonic() - self._last_answer
            if stalled_since is None and silent > self.stall_s:
                stalled_since = self._last_answer
                self.stalls += 1
                if self.metrics is not None:
                    self.metrics.event_loop_stalls.inc()
                log.warning(
                    "event_loop_stalled",
                    silent_s=round(silent, 1),
                    default_pool_backlog=self._backlog(),
                    loop_stack=_stack_of(self._loop_thread),
                )
            elif stalled_since is not None and silent < self.stall_s:
                length = self._last_answer - stalled_since
                self.longest_s = max(self.longest_s, length)
                log.warning("event_loop_recovered", stalled_s=round(length, 1))
                stalled_since = None
