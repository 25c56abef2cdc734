"""The PDU driver registry: a new PDU model is one file plus one line here.

A driver is any :class:`~provisiond.drivers.pdu.base.PduDriver` subclass with a
``name`` whose constructor takes the target and the shared :class:`SnmpClient`
(a driver that does not speak SNMP ignores the client).
"""

from __future__ import annotations

from typing import Protocol

from provisiond.drivers.pdu.apc_snmp import ApcSnmpPdu
from provisiond.drivers.pdu.base import PduDriver, PduTarget
from provisiond.drivers.pdu.snmp import SnmpClient
from provisiond.errors import BadRequest


class PduDriverClass(Protocol):
    """A :class:`PduDriver` class as the registry makes it: named, built per target."""

    @property
    def name(self) -> str: ...

    def __call__(self, target: PduTarget, client: SnmpClient) -> PduDriver: ...


def _registry(*drivers: PduDriverClass) -> dict[str, PduDriverClass]:
    registry: dict[str, PduDriverClass] = {}
    for driver in drivers:
        if driver.name in registry:
            raise RuntimeError(f"two PDU drivers are named {driver.name!r}")
        registry[driver.name] = driver
    return registry


#: Every driver here takes the shared :class:`SnmpClient`.
PDU_DRIVERS = _registry(
    ApcSnmpPdu,
)


def make_pdu_driver(name: str, target: PduTarget, client: SnmpClient) -> PduDriver:
    try:
        cls = PDU_DRIVERS[name]
    except KeyError:
        raise BadRequest(
            f"unknown PDU driver {name!r}",
            hint=f"use one of: {', '.join(sorted(PDU_DRIVERS))} (or none, for a PDU "
            "that is only recorded)",
        ) from None
    return cls(target, client)
