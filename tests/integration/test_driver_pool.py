"""The driver pool under threads, against provisiond's simulated BMCs (issue 11, defect 3).

The pool is shared by every thread that talks to BMCs. Many threads asking for one
BMC's driver at once must share one driver and one login; a settings change must
not close a driver under a thread that is in the middle of a call with it.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from pyghmi.ipmi import command as ipmi_command

from provisiond.drivers.power import BmcAuthError, BmcTarget, PowerDriver, PowerState
from provisiond.drivers.power import pool as pool_module
from provisiond.drivers.power.pool import DriverPool
from provisiond.drivers.power.registry import make_driver
from provisiond.rack import BmcFarm, parse_fault

THREADS = 16


@pytest.fixture
def farm() -> Iterator[BmcFarm]:
    # 100 ms per reply: a login (four round trips) and a call are long enough for
    # other threads to arrive while they are in flight, as on a real, slow BMC.
    with BmcFarm(count=1, faults=[parse_fault("latency=100")]) as f:
        yield f


def _target(farm: BmcFarm, password: str = "password") -> BmcTarget:
    host, port = farm.endpoint(0)
    return BmcTarget(host, port, "admin", password)


def _sessions(farm: BmcFarm) -> int:
    """How many sessions the BMC has opened and not seen closed."""
    return farm.call(lambda: len(farm.bmc(0).sessions))


def _received(farm: BmcFarm) -> int:
    return farm.call(lambda: farm.bmc(0).received)


def test_many_threads_share_one_driver_and_one_session(
    farm: BmcFarm, monkeypatch: pytest.MonkeyPatch
) -> None:
    made: list[PowerDriver] = []
    logins: list[object] = []
    arrived = threading.Barrier(THREADS)

    def slow_make_driver(name: str, target: BmcTarget) -> PowerDriver:
        # Widen the window between a miss and the insert: wait (briefly) for the other
        # threads to miss too. With the pool's lock only one is ever here, so it times out.
        with contextlib.suppress(threading.BrokenBarrierError):
            arrived.wait(0.5)
        made.append(make_driver(name, target))
        return made[-1]

    class CountedCommand(ipmi_command.Command):  # type: ignore[misc]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            logins.append(self)
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(pool_module, "make_driver", slow_make_driver)
    monkeypatch.setattr(ipmi_command, "Command", CountedCommand)
    pool = DriverPool()
    start = threading.Barrier(THREADS)

    def worker() -> tuple[PowerDriver, PowerState]:
        start.wait()
        driver = pool.get("ipmi", _target(farm))
        return driver, driver.get_power()

    try:
        with ThreadPoolExecutor(THREADS) as threads:
            results = [f.result(60) for f in [threads.submit(worker) for _ in range(THREADS)]]
        assert {state for _, state in results} == {PowerState.OFF}
        assert len(made) == 1 and {id(driver) for driver, _ in results} == {id(made[0])}
        assert len(logins) == 1  # one pyghmi Command: one login
        assert _sessions(farm) == 1 and len(pool) == 1
    finally:
        pool.close()


def test_a_settings_change_does_not_break_a_call_in_flight(farm: BmcFarm) -> None:
    pool = DriverPool()
    old = pool.get("ipmi", _target(farm))
    try:
        assert old.get_power() is PowerState.OFF  # logged in
        before = _received(farm)
        with ThreadPoolExecutor(1) as threads:
            in_flight = threads.submit(old.get_power)
            # Wait until the BMC has the request: the call is now waiting for its reply.
            while _received(farm) == before and not in_flight.done():
                threading.Event().wait(0.005)
            changed = pool.get("ipmi", _target(farm, password="a-new-password"))
            assert changed is not old and len(pool) == 1
            assert in_flight.result(30) is PowerState.OFF
        # The replaced driver retired its session once its last call returned.
        assert _sessions(farm) == 0
        with pytest.raises(BmcAuthError):
            changed.get_power()  # the BMC does not know the new password
        assert pool.get("ipmi", _target(farm)).get_power() is PowerState.OFF
    finally:
        pool.close()
