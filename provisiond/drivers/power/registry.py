"""The power driver registry: a new driver is one file plus one line here."""

from __future__ import annotations

from provisiond.drivers.power.base import BmcTarget, PowerDriver
from provisiond.drivers.power.ipmi import IpmiPower
from provisiond.drivers.power.manual import ManualPower
from provisiond.drivers.power.redfish import RedfishPower
from provisiond.errors import BadRequest


def _registry(*drivers: type[PowerDriver]) -> dict[str, type[PowerDriver]]:
    registry: dict[str, type[PowerDriver]] = {}
    for driver in drivers:
        if driver.name in registry:
            raise RuntimeError(f"two power drivers are named {driver.name!r}")
        registry[driver.name] = driver
    return registry


POWER_DRIVERS = _registry(
    IpmiPower,
    ManualPower,
    RedfishPower,
)


def driver_class(name: str) -> type[PowerDriver]:
    try:
        return POWER_DRIVERS[name]
    except KeyError:
        raise BadRequest(
            f"unknown power driver {name!r}",
            hint=f"use one of: {', '.join(sorted(POWER_DRIVERS))}",
        ) from None


def make_driver(name: str, target: BmcTarget) -> PowerDriver:
    return driver_class(name)(target)
