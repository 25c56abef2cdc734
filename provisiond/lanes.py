"""Lanes: API requests, machines' boot traffic and the daemon's own jobs never queue
behind one another for a thread or a database connection.

A flood of API requests used to take every pooled connection and every worker thread,
so the reaper, the deploy engine and ``/healthz`` waited behind requests whose clients
had long gone (minutes of stall). Now each piece of work runs in a lane:

``api``
    ``/api/v1`` requests (ordinary calls, long-polls and event streams).
``boot``
    the machines' routes: iPXE scripts, seeds, images, the OS callback, the agent.
``system``
    everything the daemon does by itself (scheduler jobs, the deploy engine, dnsmasq
    supervision) and ``/healthz``/``/metrics``. The default: work that nobody marked.

The lane is a context variable, set once per request by the admission middleware
(:mod:`provisiond.api.admission`). asyncio tasks, ``asyncio.to_thread`` and anyio's
worker threads all copy the context, so the lane follows the work without being
passed around. Two things read it:

- :class:`provisiond.db.Database` hands out sessions from the lane's own connection
  pool;
- :class:`LaneExecutor`, installed as the event loop's default executor, runs
  ``asyncio.to_thread`` work on the lane's own threads.

Requests are bounded per lane by admission, so a lane's pool only has to cover its own
admitted work, and a full lane refuses quickly instead of borrowing from another.
"""

from __future__ import annotations

import contextvars
import enum
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from typing import ParamSpec, TypeVar

P = ParamSpec("P")
T = TypeVar("T")


class Lane(enum.StrEnum):
    API = "api"
    BOOT = "boot"
    SYSTEM = "system"


_LANE: contextvars.ContextVar[Lane] = contextvars.ContextVar("provisiond_lane", default=Lane.SYSTEM)


def current() -> Lane:
    return _LANE.get()


def enter(lane: Lane) -> contextvars.Token[Lane]:
    """Set the lane for the rest of this task (and the threads and tasks it starts)."""
    return _LANE.set(lane)


@contextmanager
def lane(which: Lane) -> Iterator[None]:
    token = _LANE.set(which)
    try:
        yield
    finally:
        _LANE.reset(token)


class LaneExecutor(ThreadPoolExecutor):
    """A thread pool per lane behind one executor: ``submit`` runs the work on the pool
    of the caller's lane. Installed with ``loop.set_default_executor``, it splits every
    ``asyncio.to_thread`` call by lane without touching the call sites. (A
    ThreadPoolExecutor only because asyncio accepts nothing else as its default; its
    own single thread is never started.)"""

    def __init__(self, threads: dict[Lane, int]) -> None:
        super().__init__(1, thread_name_prefix="lane-unused")
        self.pools = {
            name: ThreadPoolExecutor(n, thread_name_prefix=f"{name.value}-pool")
            for name, n in threads.items()
        }
        self._fallback = self.pools.get(Lane.SYSTEM) or next(iter(self.pools.values()))

    def pool(self, which: Lane | None = None) -> ThreadPoolExecutor:
        return self.pools.get(which or current(), self._fallback)

    def submit(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> Future[T]:
        return self.pool().submit(fn, *args, **kwargs)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        for p in self.pools.values():
            p.shutdown(wait=wait, cancel_futures=cancel_futures)
        super().shutdown(wait=wait, cancel_futures=cancel_futures)
