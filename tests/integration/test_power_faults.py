"""Each simulated BMC fault gives the documented error class and retry behaviour.

Driver + robust power service against provisiond's own BMC simulator with faults:
fatal errors (wrong password) fail at once; retryable ones (no session resources,
node busy, packet loss) are retried with backoff and then reported; a BMC that
reboots comes back within the retries.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest

from provisiond.drivers.power import (
    BmcAuthError,
    BmcBusy,
    BmcTarget,
    BmcUnreachable,
    PowerAction,
    PowerState,
)
from provisiond.drivers.power.registry import make_driver
from provisiond.executor import BlockingExecutor
from provisiond.machines import power_calls as power
from provisiond.machines.power_calls import PowerPolicy
from provisiond.rack import BmcFarm, parse_fault

POLICY = PowerPolicy(call_timeout=3, backoff=(0.2, 0.4), confirm_timeout=5, confirm_interval=0.1)
FAULTS = ["wrong-password@0", "no-resources@1", "busy@2", "drop=1@3", "latency=300@4"]


@pytest.fixture(scope="module")
def farm() -> Iterator[BmcFarm]:
    with BmcFarm(count=6, faults=[parse_fault(spec) for spec in FAULTS]) as f:
        yield f


def _run(farm: BmcFarm, index: int, action: PowerAction) -> power.PowerResult:
    host, port = farm.endpoint(index)
    driver = make_driver("ipmi", BmcTarget(host, port, "admin", "password"))
    executor = BlockingExecutor(2)
    try:
        return asyncio.run(power.power(executor, driver, action, POLICY))
    finally:
        executor.shutdown()


def test_wrong_password_is_fatal_and_not_retried(farm: BmcFarm) -> None:
    started = time.monotonic()
    with pytest.raises(BmcAuthError) as exc:
        _run(farm, 0, PowerAction.ON)
    assert time.monotonic() - started < 2
    assert not exc.value.retryable and "check the username and password" in exc.value.hint


@pytest.mark.parametrize("index", [1, 2], ids=["no-resources", "busy"])
def test_busy_bmcs_are_retried_then_reported(farm: BmcFarm, index: int) -> None:
    started = time.monotonic()
    with pytest.raises(BmcBusy) as exc:
        _run(farm, index, PowerAction.ON)
    assert exc.value.retryable
    assert "gave up after 3 attempts" in exc.value.message
    assert time.monotonic() - started >= 0.6  # both backoff sleeps happened
    assert "clears by itself" in exc.value.hint


def test_lost_packets_are_unreachable_after_retries(farm: BmcFarm) -> None:
    with pytest.raises(BmcUnreachable) as exc:
        _run(farm, 3, PowerAction.ON)
    assert "gave up after 3 attempts" in exc.value.message
    assert "address and port" in exc.value.hint


def test_slow_bmc_still_succeeds(farm: BmcFarm) -> None:
    result = _run(farm, 4, PowerAction.ON)
    assert result.state is PowerState.ON and result.changed
    assert farm.call(lambda: farm.bmc(4).machine.is_on())


def test_bmc_reboot_is_ridden_out_by_the_retries(farm: BmcFarm) -> None:
    first = _run(farm, 5, PowerAction.ON)
    assert first.state is PowerState.ON
    farm.call(lambda: farm.bmc(5).reset(2.5))  # reboots: unreachable 2.5 s, sessions lost
    # pyghmi spends ~20 s giving up on the session the reboot killed (measured), and the
    # BMC's key stays busy meanwhile; the default backoff (1, 2, 4, 8) outlasts that.
    policy = PowerPolicy(call_timeout=5, backoff=(1, 2, 4, 8), confirm_timeout=5)
    host, port = farm.endpoint(5)
    driver = make_driver("ipmi", BmcTarget(host, port, "admin", "password"))
    executor = BlockingExecutor(2)
    try:
        result = asyncio.run(power.power(executor, driver, PowerAction.OFF, policy))
    finally:
        executor.shutdown()
    assert result.state is PowerState.OFF and result.attempts >= 2
    assert any("answer" in error for error in result.errors)  # the reboot was seen and retried
