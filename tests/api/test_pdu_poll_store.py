"""What one PDU poll stores, per outlet and per machine, on both databases: the
outlets' state and watts as the PDU simulator reports them (real UDP), changes
written by the next poll, and a PDU that does not answer keeps its last outlets."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
from sqlmodel import col, select

from provisiond.container import Services
from provisiond.models import Machine, Outlet, Pdu
from provisiond.pdus.poll import poll_pdus
from provisiond.rack.bmc_sim import BmcFarm
from provisiond.rack.pdu_sim import PduSim
from tests.conftest import Api

COMMUNITY = "poll-community"


@pytest.fixture
def rack() -> Iterator[tuple[BmcFarm, PduSim]]:
    with BmcFarm(3) as farm, PduSim.attached(farm, outlets=4, community=COMMUNITY) as pdus:
        yield farm, pdus


def _setup(api: Api, pdus: PduSim) -> None:
    for i in range(3):
        r = api.operator.post("/api/v1/machines", json={"name": f"vm{i + 1}"})
        assert r.status_code == 201, r.text
    host, port = pdus.endpoint(0)
    body = {
        "name": "pdu1",
        "mgmt_address": host,
        "driver": "apc_snmp",
        "snmp_port": port,
        "snmp_community": COMMUNITY,
        "outlets": [
            {"number": 1, "machine": "vm1"},
            {"number": 2, "machine": "vm2"},
            {"number": 3, "machine": "vm3"},
            {"number": 4, "machine": None},
        ],
    }
    r = api.operator.post("/api/v1/pdus", json=body)
    assert r.status_code == 201, r.text


def _stored(services: Services) -> tuple[Any, ...]:
    with services.db.read_session() as session:
        outlets = session.exec(select(Outlet).order_by(col(Outlet.number))).all()
        machines = session.exec(select(Machine).order_by(col(Machine.name))).all()
        pdu = session.exec(select(Pdu)).one()
        return (
            [(o.number, o.state, o.power_watts) for o in outlets],
            [(m.name, m.measured_watts, m.measured_source) for m in machines],
            (pdu.power_watts, pdu.unreachable_reason),
        )


def test_a_poll_stores_every_outlet_and_the_next_one_its_changes(
    api: Api, services: Services, rack: tuple[BmcFarm, PduSim]
) -> None:
    farm, pdus = rack
    _setup(api, pdus)
    farm.set_power(0, True)  # vm1 runs: 120 W; vm2 stands by: 8 W
    pdus.call(lambda: pdus.pdu(0).outlets[3].power(False))  # vm3 dark: 0 W
    asyncio.run(poll_pdus(services))
    outlets, machines, pdu = _stored(services)
    assert outlets == [(1, "on", 120), (2, "on", 8), (3, "off", 0), (4, "on", 0)]
    assert machines == [("vm1", 120, "pdu"), ("vm2", 8, "pdu"), ("vm3", 0, "pdu")]
    assert pdu == (128, "")

    pdus.call(lambda: pdus.pdu(0).outlets[1].power(False))
    pdus.call(lambda: pdus.pdu(0).outlets[3].power(True))
    asyncio.run(poll_pdus(services))
    outlets, machines, pdu = _stored(services)
    assert outlets == [(1, "off", 0), (2, "on", 8), (3, "on", 8), (4, "on", 0)]
    assert machines == [("vm1", 0, "pdu"), ("vm2", 8, "pdu"), ("vm3", 8, "pdu")]
    assert pdu == (16, "")

    pdus.pause(0, True)
    services.settings.pdu_call_timeout_s = 0.3
    asyncio.run(poll_pdus(services))
    again, _, (watts, why) = _stored(services)
    assert again == outlets and watts == 16 and "did not answer" in why
