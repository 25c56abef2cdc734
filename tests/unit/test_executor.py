"""The blocking executor: timeouts, one call per key, and no hang behind a stuck call."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from provisiond.executor import BlockingExecutor, CallTimeout


def test_timeouts_and_per_key_serialisation() -> None:
    executor = BlockingExecutor(4)
    release = threading.Event()
    running: list[str] = []

    def stuck() -> str:
        running.append("stuck")
        release.wait(10)
        return "late"

    def quick(tag: str) -> str:
        running.append(tag)
        return tag

    async def scenario() -> None:
        with pytest.raises(CallTimeout, match=r"did not finish within 0\.2s"):
            await executor.run(stuck, timeout=0.2, key="bmc:a", what="stuck")
        # Same key: waits for the stuck call, which still runs, then gives up.
        started = time.monotonic()
        with pytest.raises(CallTimeout, match="still busy"):
            await executor.run(quick, "second", timeout=0.3, key="bmc:a")
        assert 0.3 <= time.monotonic() - started < 2
        assert "second" not in running
        # Another key is not held up.
        assert await executor.run(quick, "other", timeout=1, key="bmc:b") == "other"
        release.set()
        await asyncio.sleep(0.1)  # the stuck thread returns and frees its key
        assert await executor.run(quick, "third", timeout=1, key="bmc:a") == "third"

    asyncio.run(scenario())
    executor.shutdown(wait=True)
    assert running == ["stuck", "other", "third"]
