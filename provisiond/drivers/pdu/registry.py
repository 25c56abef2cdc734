"""The PDU driver registry: a new PDU model is one file plus one line here."""

from __future__ import annotations

from provisiond.drivers.pdu.apc_snmp import ApcSnmpPdu
from provisiond.drivers.pdu.base import PduDriver, PduTarget
from provisiond.drivers.pdu.snmp import SnmpClient
from provisiond.errors import BadRequest


def _registry(*drivers: type[ApcSnmpPdu]) -> dict[str, type[ApcSnmpPdu]]:
    registry: dict[str, type[ApcSnmpPdu]] = {}
    for driver in drivers:
        if driver.name in registry:
            raise RuntimeError(f"two PDU drivers are named {driver.name!r}")
        registry[driver.name] = driver
    return registry


#: Every driver here speaks SNMP and takes the shared :class:`SnmpClient`.
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
