"""Power readings from real BMC peers over real sockets: DCMI from the simulated BMC farm
(UDP on loopback) and OpenIPMI's ipmi_sim (which has no DCMI), Redfish from sushy-tools'
emulator extended with both power shapes; and the power sync storing them."""

from __future__ import annotations

import asyncio
import itertools
import random
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlmodel import select

from provisiond import lifecycle
from provisiond.container import Services
from provisiond.drivers.power import BmcTarget, BmcUnreachable, PowerState
from provisiond.drivers.power.ipmi import IpmiPower
from provisiond.drivers.power.manual import ManualPower
from provisiond.drivers.power.redfish import RedfishPower, format_fingerprint
from provisiond.executor import BlockingExecutor
from provisiond.lifecycle import Ev
from provisiond.machines import power_calls
from provisiond.machines.power_sync import sync_power
from provisiond.models import Bmc, Machine, Outlet, Pdu, Rack, utcnow
from provisiond.rack import BmcFarm, Faults
from provisiond.rack.ipmi_machine import PowerMeter
from tests.support.ipmisim import IpmiSim
from tests.support.redfish_emulator import RedfishEmulator, free_tcp_port, require_sushy

_addresses = itertools.count(random.randrange(0, 40_000))


def _address() -> str:
    """A loopback address no earlier farm in this process used (pyghmi caches sessions)."""
    n = next(_addresses)
    return f"127.{180 + n // 62_500 % 50}.{n // 250 % 250}.{n % 250 + 2}"


def _ipmi(address: str, port: int) -> IpmiPower:
    return IpmiPower(BmcTarget(address, port, "admin", "password"))


@pytest.fixture
def farm() -> Iterator[BmcFarm]:
    with BmcFarm(3, address=_address()) as running:
        yield running


def test_dcmi_reading_follows_power_and_load(farm: BmcFarm) -> None:
    farm.set_meter(0, PowerMeter(idle_watts=150, load_watts=450, load=0.0))
    driver = _ipmi(*farm.endpoint(0))
    try:
        assert driver.get_power() is PowerState.OFF
        assert driver.read_watts() == 0  # off: nothing drawn
        farm.set_power(0, True)
        assert driver.read_watts() == 150
        farm.set_meter(0, PowerMeter(idle_watts=150, load_watts=450, load=0.5))
        assert driver.read_watts() == 300
        farm.set_power(0, False)
        assert driver.read_watts() == 0
    finally:
        driver.close()


def test_a_bmc_without_dcmi_reads_none_and_is_asked_once(farm: BmcFarm) -> None:
    farm.set_faults(1, Faults(no_dcmi=True))
    farm.set_power(1, True)
    driver = _ipmi(*farm.endpoint(1))
    try:
        assert driver.get_power() is PowerState.ON
        assert driver.read_watts() is None
        received = farm.call(lambda: farm.bmc(1).received)
        assert driver.read_watts() is None  # remembered: no second request
        assert farm.call(lambda: farm.bmc(1).received) == received
        assert driver.get_power() is PowerState.ON  # the session is still fine
    finally:
        driver.close()


def test_ipmi_sim_has_no_dcmi_and_reads_none(ipmi_sim: IpmiSim) -> None:
    driver = _ipmi("127.0.0.1", ipmi_sim.port)
    try:
        assert driver.read_watts() is None
        assert not driver._dcmi
    finally:
        driver.close()


def test_manual_driver_does_not_read_watts() -> None:
    driver = ManualPower(BmcTarget("", 0))
    assert not driver.reads_watts
    executor = BlockingExecutor(2)
    try:
        reading = asyncio.run(power_calls.read_power_and_watts(executor, driver))
    finally:
        executor.shutdown()
    assert reading.state is PowerState.UNKNOWN and reading.watts is None


# --- Redfish -----------------------------------------------------------------------


@pytest.fixture
def emulator(tmp_path: Path) -> Iterator[RedfishEmulator]:
    require_sushy()
    emu = RedfishEmulator(tmp_path / "sushy", free_tcp_port(), meter_watts=280)
    emu.start()
    try:
        yield emu
    finally:
        emu.stop()


def _redfish(emu: RedfishEmulator) -> RedfishPower:
    options = {"cert_fingerprint": format_fingerprint(emu.fingerprint)}
    return RedfishPower(BmcTarget("127.0.0.1", emu.port, emu.username, emu.password, options))


def _wait_power(driver: RedfishPower, state: PowerState) -> None:
    for _ in range(50):
        if driver.get_power() is state:
            return
        asyncio.run(asyncio.sleep(0.1))
    raise AssertionError(f"the emulator did not reach {state}")


@pytest.mark.parametrize(
    ("shapes", "path"),
    [
        (("environment", "power"), "/EnvironmentMetrics"),
        (("power",), "/Power"),
    ],
)
def test_redfish_reads_environment_metrics_or_falls_back_to_power(
    emulator: RedfishEmulator, shapes: tuple[str, ...], path: str
) -> None:
    emulator.set_meter(shapes, 280)
    emulator.set_power("On")
    driver = _redfish(emulator)
    _wait_power(driver, PowerState.ON)
    assert driver.read_watts() == 280
    assert driver._meter is not None and driver._meter[0].endswith(path)
    before = len(emulator.requests())
    emulator.set_meter(shapes, 312)
    assert driver.read_watts() == 312
    # Found once: a later reading is one GET of the meter it found.
    assert [r["path"] for r in emulator.requests()[before:]] == [driver._meter[0]]
    emulator.set_power("ForceOff")
    _wait_power(driver, PowerState.OFF)
    assert driver.read_watts() == 0


def test_redfish_without_a_meter_reads_none(emulator: RedfishEmulator) -> None:
    emulator.set_meter((), 280)
    driver = _redfish(emulator)
    assert driver.read_watts() is None
    before = len(emulator.requests())
    assert driver.read_watts() is None  # remembered: no more requests
    assert len(emulator.requests()) == before


# --- the power sync stores the readings ------------------------------------------------


def _enroll(services: Services, name: str, port: int, address: str, rack_id: int) -> int:
    with services.db.transaction() as session:
        machine = Machine(name=name, rack_id=rack_id, power_watts=500)
        lifecycle.advance(session, machine, Ev.ENROLL, actor="test")
        assert machine.id is not None
        session.add(
            Bmc(
                machine_id=machine.id,
                driver="ipmi",
                address=address,
                port=port,
                username="admin",
                secret_encrypted=services.secrets.encrypt("password"),
            )
        )
        return machine.id


def test_power_sync_stores_readings_and_keeps_a_fresh_pdu_reading(
    services: Services, farm: BmcFarm
) -> None:
    farm.set_meter(None, PowerMeter(idle_watts=200, load_watts=400, load=0.5))
    farm.set_faults(2, Faults(no_dcmi=True))
    for index in range(3):
        farm.set_power(index, True)
    with services.db.transaction() as session:
        rack = Rack(name="r1", power_budget_watts=5000)
        session.add(rack)
        session.flush()
        assert rack.id is not None
        rack_id = rack.id
    ids = [_enroll(services, f"m{i}", farm.endpoint(i)[1], farm.address, rack_id) for i in range(3)]
    # m1's one outlet was read fresh from its PDU (not configured for polling: its last
    # reading stands): that figure wins over the BMC's.
    with services.db.transaction() as session:
        read_at = utcnow() - timedelta(seconds=5)
        pdu = Pdu(name="p1", rack_id=rack_id, driver="apc_snmp", power_read_at=read_at)
        session.add(pdu)
        session.flush()
        assert pdu.id is not None
        session.add(Outlet(pdu_id=pdu.id, number=1, machine_id=ids[1], power_watts=333))
        pdu_fed = session.get(Machine, ids[1])
        assert pdu_fed is not None
        pdu_fed.measured_watts, pdu_fed.measured_source = 333, "pdu"
        pdu_fed.measured_at = read_at
        session.add(pdu_fed)

    report = asyncio.run(sync_power(services))
    assert report.failed == {} and report.watts_read == 2  # m2 has no DCMI
    with services.db.read_session() as session:
        rows = {m.name: m for m in session.exec(select(Machine))}
        stored = session.get(Rack, rack_id)
    assert (rows["m0"].measured_watts, rows["m0"].measured_source) == (300, "bmc")
    assert rows["m0"].measured_at is not None
    assert (rows["m1"].measured_watts, rows["m1"].measured_source) == (333, "pdu")
    assert rows["m2"].measured_watts is None
    # 300 (bmc) + 333 (pdu) + 500 declared for the machine without a reading.
    assert stored is not None and stored.measured_watts == 1133
    assert stored.budget_status == "ok"
    assert [r.counted for r in report.racks] == [{"bmc": 1, "pdu": 1, "declared": 1}]

    farm.set_power(0, False)  # behind provisiond's back
    report = asyncio.run(sync_power(services))
    # an off machine is not asked for its draw: m1 alone is read (m2 has no DCMI)
    assert report.failed == {} and report.watts_read == 1
    with services.db.read_session() as session:
        m0 = session.get(Machine, ids[0])
        assert m0 is not None and m0.power_state == "off"
        # Its last draw while on stays (its next power-on is admitted by it); the rack
        # counts it 0 W now that it is off.
        assert (m0.measured_watts, m0.measured_source) == (300, "bmc")
        assert session.get(Rack, rack_id).measured_watts == 333 + 500  # type: ignore[union-attr]


# --- a malformed or slow Redfish meter ---------------------------------------------------

MALFORMED = [
    {"PowerControl": {"PowerConsumedWatts": 5}, "PowerWatts": 7},  # a dict, a bare number
    ["not", "an", "object"],
    {"PowerControl": ["x"], "PowerWatts": {"Reading": "12"}},
    {"PowerControl": [{"PowerConsumedWatts": None}], "PowerWatts": {"Reading": float("nan")}},
    {"PowerWatts": {"Reading": 1e30}},  # no one machine's, and too big for the column
]


def test_a_malformed_redfish_meter_reads_none(emulator: RedfishEmulator) -> None:
    emulator.set_power("On")
    driver = _redfish(emulator)
    _wait_power(driver, PowerState.ON)
    for body in MALFORMED:
        emulator.set_meter(("environment", "power"), 280, raw=body)
        driver._meter = None  # looked for afresh
        assert driver.read_watts() is None, body
    emulator.set_meter(("environment", "power"), 280)
    driver._meter = None
    assert driver.read_watts() == 280
    emulator.set_meter(("environment", "power"), 280, raw=MALFORMED[0])
    assert driver.read_watts() is None  # the meter found goes bad


def test_a_slow_meter_never_fails_the_state_read(emulator: RedfishEmulator) -> None:
    emulator.set_power("On")
    driver = _redfish(emulator)
    _wait_power(driver, PowerState.ON)
    assert driver.read_watts() == 280
    emulator.set_meter(("environment", "power"), 280, slow_s=3)
    executor = BlockingExecutor(2)
    policy = power_calls.PowerPolicy(call_timeout=2, backoff=())
    try:
        reading = asyncio.run(power_calls.read_power_and_watts(executor, driver, policy))
    finally:
        executor.shutdown(wait=True)
    assert reading.state is PowerState.ON and reading.watts is None
    assert isinstance(reading.watts_error, BmcUnreachable)
    assert "did not read its power draw within 2s" in reading.watts_error.message


def test_power_sync_records_every_machine_whatever_one_meter_sends(
    services: Services, farm: BmcFarm, emulator: RedfishEmulator
) -> None:
    emulator.set_meter(("power",), 280, raw={"PowerControl": {"PowerConsumedWatts": 5}})
    emulator.set_power("On")
    _wait_power(_redfish(emulator), PowerState.ON)
    farm.set_meter(None, PowerMeter(idle_watts=200, load_watts=400, load=0.5))
    farm.set_power(0, True)
    with services.db.transaction() as session:
        rack = Rack(name="r1", power_budget_watts=5000)
        session.add(rack)
        session.flush()
        assert rack.id is not None
        rack_id = rack.id
    ids = [_enroll(services, f"m{i}", farm.endpoint(i)[1], farm.address, rack_id) for i in range(2)]
    with services.db.transaction() as session:
        machine = Machine(name="rf", rack_id=rack_id, power_watts=450)
        lifecycle.advance(session, machine, Ev.ENROLL, actor="test")
        assert machine.id is not None
        session.add(
            Bmc(
                machine_id=machine.id,
                driver="redfish",
                address="127.0.0.1",
                port=emulator.port,
                username=emulator.username,
                secret_encrypted=services.secrets.encrypt(emulator.password),
                cert_fingerprint=format_fingerprint(emulator.fingerprint),
            )
        )

    report = asyncio.run(sync_power(services))
    assert report.failed == {} and report.read == 3
    with services.db.read_session() as session:
        rows = {m.name: m for m in session.exec(select(Machine))}
        stored = session.get(Rack, rack_id)
    assert [rows[n].power_state for n in ("m0", "m1", "rf")] == ["on", "off", "on"]
    assert (rows["m0"].measured_watts, rows["m0"].measured_source) == (300, "bmc")
    assert rows["rf"].measured_watts is None  # nothing it sent is a reading
    # 300 (bmc) + 0 (off) + 450 declared for the Redfish machine without a reading.
    assert stored is not None and stored.measured_watts == 750
    assert [r.counted for r in report.racks] == [{"bmc": 1, "off": 1, "declared": 1}]
    assert rows["m1"].id == ids[1] and rows["m1"].measured_watts is None  # off: not written
