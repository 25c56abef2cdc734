"""One bounded thread pool for blocking libraries (pyghmi, paramiko), with timeouts.

    result = await executor.run(driver.get_power, timeout=10, key="bmc:10.0.3.17:623")

Calls that share a ``key`` run one at a time: at most one in-flight session per
BMC. A call that times out keeps its key busy until its thread really returns,
so a slow BMC never gets a second concurrent session behind our back.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from provisiond.errors import CallTimeout as CallTimeout  # re-exported

T = TypeVar("T")


class BlockingExecutor:
    def __init__(self, max_workers: int = 32) -> None:
        self.max_workers = max_workers
        self._pool = ThreadPoolExecutor(max_workers, thread_name_prefix="blocking")
        self._keys: dict[str, asyncio.Lock] = {}

    async def run(
        self,
        fn: Callable[..., T],
        *args: Any,
        timeout: float,  # noqa: ASYNC109  (the thread's deadline, not a cancel scope)
        key: str | None = None,
        what: str = "",
        **kwargs: Any,
    ) -> T:
        loop = asyncio.get_running_loop()
        lock = self._keys.setdefault(key, asyncio.Lock()) if key else None
        if lock is not None:
            try:
                await asyncio.wait_for(lock.acquire(), timeout)
            except TimeoutError:
                raise CallTimeout(
                    f"{what or 'call'}: {key} is still busy with an earlier call that has "
                    f"not returned after its own time limit",
                    hint="the peer or its client library is stuck; see the daemon's log",
                ) from None
        future = loop.run_in_executor(self._pool, functools.partial(fn, *args, **kwargs))
        try:
            return await asyncio.wait_for(asyncio.shield(future), timeout)
        except TimeoutError:
            raise CallTimeout(
                f"{what or getattr(fn, '__name__', 'call')} did not finish within {timeout:g}s",
                hint="the peer is slow or unreachable; it is retried on the next attempt",
            ) from None
        finally:
            if lock is not None:
                if future.done():
                    lock.release()
                else:
                    future.add_done_callback(lambda _f: lock.release())

    def shutdown(self, *, wait: bool = False) -> None:
        self._pool.shutdown(wait=wait, cancel_futures=True)
