"""The ipmi power driver and the robust power service against OpenIPMI's ipmi_sim."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from provisiond.drivers.power import (
    BmcAuthError,
    BmcTarget,
    BmcUnreachable,
    BootDevice,
    PowerAction,
    PowerState,
)
from provisiond.drivers.power.registry import POWER_DRIVERS, make_driver
from provisiond.executor import BlockingExecutor
from provisiond.machines import power_calls as power
from provisiond.machines.power_calls import PowerPolicy
from tests.support.ipmisim import IpmiSim, free_udp_port, require_tools

FAST = PowerPolicy(call_timeout=10, backoff=(0.1, 0.2), confirm_timeout=10, confirm_interval=0.1)


def _target(ipmi_sim: IpmiSim, password: str | None = None) -> BmcTarget:
    return BmcTarget(
        "127.0.0.1",
        ipmi_sim.port,
        ipmi_sim.username,
        ipmi_sim.password if password is None else password,
        credential_source="credential set 'default'",
    )


def test_registry_names_each_driver_once() -> None:
    assert set(POWER_DRIVERS) >= {"ipmi", "manual"}
    assert all(cls.name == name for name, cls in POWER_DRIVERS.items())
    assert any(s.secret and s.name == "password" for s in POWER_DRIVERS["ipmi"].settings)


def test_driver_reads_and_sets_power_and_boot_device(ipmi_sim: IpmiSim) -> None:
    driver = make_driver("ipmi", _target(ipmi_sim))
    assert driver.get_power() is PowerState.OFF
    driver.set_power(PowerAction.ON)
    assert ipmi_sim.power() == "on" and driver.get_power() is PowerState.ON
    ipmi_sim.set_power(False)  # changed behind the driver's back
    assert driver.get_power() is PowerState.OFF
    driver.set_boot_device(BootDevice.PXE)
    assert (ipmi_sim.state_dir / "boot").read_text().strip() == "pxe"
    identity = driver.read_identity()
    assert identity.vendor == "OpenIPMI" and identity.firmware == "9.08"
    assert "password" not in repr(driver.target)


def test_wrong_password_is_a_fatal_auth_error_with_a_hint(ipmi_sim: IpmiSim) -> None:
    driver = make_driver("ipmi", _target(ipmi_sim, password="wrong"))
    with pytest.raises(BmcAuthError) as exc:
        driver.get_power()
    assert f"127.0.0.1:{ipmi_sim.port}" in exc.value.message
    assert exc.value.hint == "check the username and password in credential set 'default'"
    assert not exc.value.retryable
    assert "wrong" not in exc.value.message + exc.value.hint


def test_power_service_is_idempotent_and_confirms(ipmi_sim: IpmiSim) -> None:
    executor = BlockingExecutor(4)
    driver = make_driver("ipmi", _target(ipmi_sim))

    async def scenario() -> None:
        first = await power.power(executor, driver, PowerAction.ON, FAST)
        assert (first.state, first.changed) == (PowerState.ON, True)
        again = await power.power(executor, driver, PowerAction.ON, FAST)
        assert (again.state, again.changed, again.attempts) == (PowerState.ON, False, 1)
        cycled = await power.power(executor, driver, PowerAction.CYCLE, FAST)
        assert cycled.state is PowerState.ON and cycled.changed
        off = await power.power(executor, driver, PowerAction.OFF, FAST)
        assert off.state is PowerState.OFF and ipmi_sim.power() == "off"
        await power.set_boot_device(executor, driver, BootDevice.PXE, policy=FAST)

    asyncio.run(scenario())
    executor.shutdown()


def test_fatal_errors_are_not_retried(ipmi_sim: IpmiSim) -> None:
    executor = BlockingExecutor(2)
    driver = make_driver("ipmi", _target(ipmi_sim, password="wrong"))
    started = time.monotonic()
    with pytest.raises(BmcAuthError):
        asyncio.run(power.power(executor, driver, PowerAction.ON, FAST))
    assert time.monotonic() - started < 2  # no backoff was slept
    executor.shutdown()


def test_unreachable_bmc_is_retried_then_reported(tmp_path: Path) -> None:
    require_tools()
    executor = BlockingExecutor(2)
    port = free_udp_port()  # nothing listens there
    driver = make_driver("ipmi", BmcTarget("127.0.0.1", port, "admin", "password"))
    policy = PowerPolicy(call_timeout=1.5, backoff=(0.1, 0.1))
    started = time.monotonic()
    with pytest.raises(BmcUnreachable) as exc:
        asyncio.run(power.power(executor, driver, PowerAction.ON, policy))
    elapsed = time.monotonic() - started
    assert "gave up after 3 attempts" in exc.value.message
    assert exc.value.retryable and "address and port" in exc.value.hint
    assert 3 * 1.5 <= elapsed < 3 * 1.5 + 8  # three timed-out calls, bounded
    executor.shutdown(wait=True)
