"""Pure parts of power readings: the simulated meter, the DCMI record both ways, the
``--load`` spec, the budget verdict at its edges, and the Redfish meter parser on
whatever shape a BMC sends."""

from __future__ import annotations

import math
from typing import Any

import pytest

from provisiond.drivers.power import ipmi_dcmi, redfish_meter
from provisiond.power_budget import status_for
from provisiond.rack.ipmi_faults import FaultSpecError, parse_load
from provisiond.rack.ipmi_machine import PowerMeter
from provisiond.rack.ipmi_records import dcmi_get_power_reading, dcmi_power_reading


def test_meter_draws_nothing_off_and_idle_to_full_load_on() -> None:
    meter = PowerMeter(idle_watts=100, load_watts=300, load=0.25)
    assert meter.watts(False) == 0
    assert meter.watts(True) == 150
    assert PowerMeter(100, 300, load=7).watts(True) == 300  # load is clamped to 0-1


def test_dcmi_record_round_trips_through_the_driver_parser() -> None:
    code, data = dcmi_get_power_reading(bytes([0xDC, 0x01, 0, 0]), 1234)
    assert code == 0 and len(data) == 18
    assert ipmi_dcmi.current_watts(data) == 1234
    inactive = [*dcmi_power_reading(1234, at=0)[:-1], 0x00]  # bit 6 clear: not measuring
    assert ipmi_dcmi.current_watts(inactive) is None
    assert ipmi_dcmi.current_watts(data[:10]) is None  # short: malformed
    assert dcmi_get_power_reading(bytes([0xDC, 0x02, 0, 0]), 5)[0] == 0xCC  # mode 2
    assert dcmi_get_power_reading(bytes([0x00, 0x01, 0, 0]), 5)[0] == 0xCC  # not DCMI


def test_load_spec() -> None:
    assert parse_load("0.5") == (0.5, None)
    assert parse_load("1@0-2,7") == (1.0, frozenset({0, 1, 2, 7}))
    with pytest.raises(FaultSpecError):
        parse_load("1.5")
    with pytest.raises(FaultSpecError):
        parse_load("@3")


@pytest.mark.parametrize(
    ("draw", "budget", "status"),
    [(0, None, ""), (900, 1000, "ok"), (901, 1000, "over_90"), (1000, 1000, "over_90"),
     (1001, 1000, "over_100"), (1, 0, "over_100")],
)  # fmt: skip
def test_budget_verdict_edges(draw: int, budget: int | None, status: str) -> None:
    assert status_for(draw, budget) == status


@pytest.mark.parametrize(
    ("system", "collection", "url"),
    [
        ({"Links": None}, {"Members": [{"@odata.id": "/c/1"}]}, "/c/1"),
        ({"Links": "x"}, {"Members": ["/c/1"]}, ""),
        ({"Links": {"Chassis": {"@odata.id": "/c/2"}}}, {"Members": None}, ""),
        ({"Links": {"Chassis": ["/c/2"]}}, ["not", "an", "object"], ""),
        ({"Links": {"Chassis": [{"@odata.id": 7}]}}, {"Members": [{"@odata.id": "/c/1"}]}, "/c/1"),
        ({"Links": {"Chassis": [{"@odata.id": "/c/2"}]}}, None, "/c/2"),
    ],
)
def test_chassis_url_takes_any_shape_the_bmc_sends(
    system: dict[str, Any], collection: Any, url: str
) -> None:
    assert redfish_meter.chassis_url(system, lambda _url: collection) == url


@pytest.mark.parametrize(
    ("body", "shape", "watts"),
    [
        ({"PowerControl": {"PowerConsumedWatts": 5}}, redfish_meter.POWER, None),
        ({"PowerControl": []}, redfish_meter.POWER, None),
        ({"PowerControl": "x"}, redfish_meter.POWER, None),
        ({"PowerControl": [{"PowerConsumedWatts": 312.6}]}, redfish_meter.POWER, 313),
        ({"PowerWatts": 7}, redfish_meter.ENVIRONMENT, None),
        ({"PowerWatts": {"Reading": "12"}}, redfish_meter.ENVIRONMENT, None),
        ({"PowerWatts": {"Reading": math.inf}}, redfish_meter.ENVIRONMENT, None),
        ({"PowerWatts": {"Reading": 10**9}}, redfish_meter.ENVIRONMENT, None),
        ({"PowerWatts": {"Reading": True}}, redfish_meter.ENVIRONMENT, None),
        ({"PowerWatts": {"Reading": 280}}, redfish_meter.ENVIRONMENT, 280),
    ],
)
def test_meter_body_in_any_shape_reads_a_number_or_none(
    body: Any, shape: str, watts: int | None
) -> None:
    assert redfish_meter.watts(body, shape) == watts
