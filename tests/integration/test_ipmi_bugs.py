"""A bug in our IPMI code is not a BMC error (issue 11, defect 4).

Against a simulated BMC, through the real retry loop: a typo in a driver (here a
pyghmi method name) raises AttributeError once, with its traceback, instead of
being retried as "the session broke" and reported with the hint to log in again.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest

from provisiond.drivers.power import BmcTarget, PowerState
from provisiond.drivers.power.ipmi import IpmiPower
from provisiond.executor import BlockingExecutor
from provisiond.machines import power_calls as power
from provisiond.machines.power_calls import PowerPolicy
from provisiond.rack import BmcFarm

POLICY = PowerPolicy(call_timeout=5, backoff=(0.5, 0.5))


class TypoPower(IpmiPower):
    """An ipmi driver with a bug of ours: it asks pyghmi for a method that does not exist."""

    def get_power(self) -> PowerState:
        self._call("read power state", "get_powr")
        raise AssertionError("unreachable")


@pytest.fixture
def farm() -> Iterator[BmcFarm]:
    with BmcFarm(count=1) as f:
        yield f


def test_a_bug_of_ours_propagates_and_is_not_retried(farm: BmcFarm) -> None:
    host, port = farm.endpoint(0)
    driver = TypoPower(BmcTarget(host, port, "admin", "password"))
    executor = BlockingExecutor(2)
    started = time.monotonic()
    try:
        with pytest.raises(AttributeError, match="get_powr"):
            asyncio.run(power.get_power(executor, driver, POLICY))
    finally:
        executor.shutdown()
        driver.close()
    assert time.monotonic() - started < 0.5  # no backoff sleep: one attempt only
