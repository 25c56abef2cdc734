"""The apc_snmp driver against the PDU simulator over real UDP on 127.0.0.1."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import TypeVar

import pytest

from provisiond.drivers.pdu.apc_snmp import ApcSnmpPdu
from provisiond.drivers.pdu.base import (
    OutletState,
    PduAuthError,
    PduTarget,
    PduUnreachable,
    PduUnsupported,
)
from provisiond.drivers.pdu.snmp import SnmpClient
from provisiond.rack.bmc_sim import BmcFarm
from provisiond.rack.pdu_sim import PduSim

T = TypeVar("T")
AUTH, PRIV = "auth-key-123", "priv-key-456"


@pytest.fixture
def rack() -> Iterator[tuple[BmcFarm, PduSim]]:
    with (
        BmcFarm(2) as farm,
        PduSim.attached(farm, outlets=4, v3_auth_key=AUTH, v3_priv_key=PRIV) as pdus,
    ):
        yield farm, pdus


def run(pdus: PduSim, fn: Callable[[ApcSnmpPdu], Awaitable[T]], **target: object) -> T:
    host, port = pdus.endpoint(0)
    settings: dict[str, object] = {"community": "private", "timeout": 1.0, "retries": 0}
    settings.update(target)

    async def main() -> T:
        client = await SnmpClient.open()
        try:
            return await fn(ApcSnmpPdu(PduTarget("pdu1", host, port, **settings), client))  # type: ignore[arg-type]
        finally:
            client.close()

    return asyncio.run(main())


def test_switch_confirmed_by_read_back_cuts_the_machine(rack: tuple[BmcFarm, PduSim]) -> None:
    farm, pdus = rack
    farm.set_power(0, True)

    async def off_then_on(d: ApcSnmpPdu) -> list[object]:
        seen: list[object] = [await d.set_outlet(1, False), await d.outlet_state(1)]
        seen.append(farm.state(0).power)
        seen += [await d.set_outlet(1, False)]  # already off: no change
        seen += [await d.set_outlet(1, True), await d.outlet_state(1)]
        return seen

    assert run(pdus, off_then_on) == [True, OutletState.OFF, "off", False, True, OutletState.ON]
    assert farm.state(0).power == "on"  # restore policy "last": it was on when cut
    assert pdus.outlet_on(0, 1) and pdus.call(lambda: pdus.pdu(0).outlets[1].switches) == 2


def test_cycle_and_power_readings(rack: tuple[BmcFarm, PduSim]) -> None:
    farm, pdus = rack
    farm.set_power(0, True)

    async def cycle(d: ApcSnmpPdu) -> tuple[object, object, float]:
        d.off_seconds = 0.2  # type: ignore[misc]
        before = await d.read_power([1, 2, 3])
        started = time.monotonic()
        await d.cycle(1)
        return before, await d.read_power([1, 2, 3]), time.monotonic() - started

    before, after, took = run(pdus, cycle)
    # vm1 running (80 + 40 W), vm2 standby (8 W: its BMC), outlet 3 feeds nothing.
    assert before.total_watts == 128  # type: ignore[attr-defined]
    assert before.outlet_watts == {1: 120, 2: 8, 3: 0}  # type: ignore[attr-defined]
    assert after.outlet_states[1] is OutletState.ON and took >= 0.2  # type: ignore[attr-defined]
    assert pdus.call(lambda: pdus.pdu(0).outlets[1].switches) == 2


def test_snmpv3_auth_priv_reads(rack: tuple[BmcFarm, PduSim]) -> None:
    _, pdus = rack
    v3 = {"version": "3", "username": "pduadmin", "auth_key": AUTH, "priv_key": PRIV}
    reading = run(pdus, lambda d: d.read_power([1]), **v3)
    assert reading.outlet_states == {1: OutletState.ON}


def test_wrong_community_is_a_hinted_timeout_within_the_bound(
    rack: tuple[BmcFarm, PduSim],
) -> None:
    _, pdus = rack
    started = time.monotonic()
    with pytest.raises(PduUnreachable) as caught:
        run(pdus, lambda d: d.outlet_state(1), community="wrong", timeout=0.5, retries=1)
    took = time.monotonic() - started
    assert caught.value.retryable and "wrong community or address" in caught.value.hint
    assert "2 tries" in caught.value.message and "wrong" not in caught.value.message
    assert 1.0 <= took < 5.0, took  # two 0.5 s tries; slack for a busy CI machine


def test_wrong_v3_key_is_a_clear_fatal_auth_error(rack: tuple[BmcFarm, PduSim]) -> None:
    _, pdus = rack
    bad = {"version": "3", "username": "pduadmin", "auth_key": "not-the-key", "priv_key": PRIV}
    started = time.monotonic()
    with pytest.raises(PduAuthError) as caught:
        run(pdus, lambda d: d.outlet_state(1), **bad, timeout=5.0, retries=1)
    # Refused at once (well under 1 s), not waited out: one timeout alone would be 5 s.
    assert not caught.value.retryable and time.monotonic() - started < 4.0
    assert "pduadmin" in caught.value.message and "not-the-key" not in caught.value.message
    with pytest.raises(PduAuthError, match="nobody"):
        run(pdus, lambda d: d.outlet_state(1), **{**bad, "username": "nobody"})


def test_a_paused_agent_is_retryable_unreachable(rack: tuple[BmcFarm, PduSim]) -> None:
    _, pdus = rack
    pdus.pause(0, True)
    with pytest.raises(PduUnreachable) as caught:
        run(pdus, lambda d: d.outlet_state(1), timeout=0.3, retries=1)
    assert caught.value.retryable
    assert pdus.call(lambda: pdus.pdu(0).requests) >= 2  # it was asked, and kept silent
    pdus.pause(0, False)
    assert run(pdus, lambda d: d.outlet_state(1)) is OutletState.ON


def test_unknown_outlet_is_unsupported(rack: tuple[BmcFarm, PduSim]) -> None:
    _, pdus = rack
    with pytest.raises(PduUnsupported, match="no outlet 9"):
        run(pdus, lambda d: d.outlet_state(9))


def test_a_dark_outlet_silences_the_bmc_until_power_returns(rack: tuple[BmcFarm, PduSim]) -> None:
    farm, pdus = rack
    run(pdus, lambda d: d.set_outlet(2, False))
    assert farm.call(lambda: farm.bmc(1).is_down()) and not farm.call(farm.bmc(0).is_down)
    run(pdus, lambda d: d.set_outlet(2, True))
    deadline = time.monotonic() + 10  # the BMC boots (bmc_boot_s 0.5)
    while farm.call(lambda: farm.bmc(1).is_down()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not farm.call(lambda: farm.bmc(1).is_down())
