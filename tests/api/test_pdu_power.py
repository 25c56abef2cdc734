"""PDUs with a driver through the API: settings, outlet power, the machine power path
through an outlet, a live status read, the poll, and ``verify`` of the outlet map, all
against the PDU simulator wired to a BMC farm of in-memory machines (real UDP)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from typing import Any

import pytest
from sqlmodel import select

from provisiond.container import Services
from provisiond.models import Machine, Pdu
from provisiond.pdus.poll import poll_pdus
from provisiond.rack.bmc_sim import BmcFarm
from provisiond.rack.pdu_sim import PduSim
from tests.conftest import Api

P, M = "/api/v1/pdus", "/api/v1/machines"
COMMUNITY = "s3cret-community"


def ok(r: Any, status: int = 200) -> Any:
    assert r.status_code == status, r.text
    return r.json()


@pytest.fixture
def rack() -> Iterator[tuple[BmcFarm, PduSim]]:
    with BmcFarm(3) as farm, PduSim.attached(farm, outlets=4, community=COMMUNITY) as pdus:
        yield farm, pdus


def _setup(api: Api, farm: BmcFarm, pdus: PduSim, outlets: dict[int, str | None]) -> None:
    for i in range(2):
        host, port = farm.endpoint(i)
        bmc = {"driver": "ipmi", "address": host, "port": port, "username": "admin"}
        bmc["password"] = "password"
        ok(api.operator.post(M, json={"name": f"vm{i + 1}", "bmc": bmc}), 201)
    ok(api.operator.post(M, json={"name": "vm3"}), 201)  # no BMC: powered by its outlet
    host, port = pdus.endpoint(0)
    body = {
        "name": "pdu1",
        "mgmt_address": host,
        "driver": "apc_snmp",
        "snmp_port": port,
        "snmp_community": COMMUNITY,
        "outlets": [{"number": n, "machine": m} for n, m in outlets.items()],
    }
    created = ok(api.operator.post(P, json=body), 201)
    assert created["secret_set"] is True and COMMUNITY not in str(created)


WIRED: dict[int, str | None] = {1: "vm1", 2: "vm2", 3: "vm3", 4: None}


def test_settings_are_validated_and_the_secret_never_shown(
    api: Api, rack: tuple[BmcFarm, PduSim], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    farm, pdus = rack
    _setup(api, farm, pdus, WIRED)
    bad = api.operator.patch(f"{P}/pdu1", json={"driver": "nope"})
    assert bad.status_code == 422 and "apc_snmp" in bad.text
    no_user = api.operator.patch(f"{P}/pdu1", json={"snmp_version": "3"})
    assert no_user.status_code == 422 and "user name" in no_user.text
    v3 = {"snmp_version": "3", "snmp_username": "ops", "snmp_auth_key": "auth-key-1"}
    patched = ok(api.operator.patch(f"{P}/pdu1", json={**v3, "snmp_priv_protocol": "aes128"}))
    assert patched["snmp_version"] == "3" and "auth-key-1" not in str(patched)
    listed = api.ci.get(P)
    assert COMMUNITY not in listed.text and listed.json()[0]["secret_set"] is True
    r = api.operator.patch(f"{P}/pdu1", json={"snmp_community": "x" * 300})
    assert r.status_code == 422 and "x" * 300 not in r.text
    assert COMMUNITY not in caplog.text


def test_outlet_power_roles_and_read_back(
    api: Api, rack: tuple[BmcFarm, PduSim], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    farm, pdus = rack
    _setup(api, farm, pdus, WIRED)
    farm.set_power(0, True)
    assert api.ci.post(f"{P}/pdu1/outlets/1/power", json={"action": "off"}).status_code == 403
    assert api.anonymous.get(f"{P}/pdu1/status").status_code == 401
    result = ok(api.operator.post(f"{P}/pdu1/outlets/1/power", json={"action": "off"}))
    assert result["state"] == "off" and result["machine"] == "vm1" and result["changed"]
    assert farm.state(0).power == "off" and not pdus.outlet_on(0, 1)
    shown = ok(api.ci.get(f"{P}/pdu1"))
    assert shown["outlets"][0]["state"] == "off"
    assert ok(api.ci.get(f"{M}/vm1"))["power_state"] == "off"
    ok(api.operator.post(f"{P}/pdu1/outlets/1/power", json={"action": "on"}))
    assert farm.state(0).power == "on"  # restore policy "last"
    missing = api.operator.post(f"{P}/pdu1/outlets/9/power", json={"action": "on"})
    assert missing.status_code == 404 and missing.json()["error"]["hint"]
    status = ok(api.operator.get(f"{P}/pdu1/status"))
    assert status["reachable"] and status["power_watts"] == 120 + 8 + 8
    assert [o["power_watts"] for o in status["outlets"]] == [120, 8, 8, 0]
    assert COMMUNITY not in str(status) and COMMUNITY not in caplog.text
    events = api.operator.get("/api/v1/events", params={"limit": 50})
    assert "outlet pdu1/1 off" in events.text and COMMUNITY not in events.text


def test_machine_without_bmc_is_powered_through_its_outlet(
    api: Api, rack: tuple[BmcFarm, PduSim]
) -> None:
    farm, pdus = rack
    _setup(api, farm, pdus, WIRED)
    pdus.set_restore("on")  # a machine set to power on when power returns
    off = ok(api.operator.post(f"{M}/vm3/power", json={"action": "off"}))
    assert off["state"] == "off" and off["source"] == "pdu" and "pdu1/3" in off["message"]
    assert farm.state(2).power == "off" and not pdus.outlet_on(0, 3)
    on = ok(api.operator.post(f"{M}/vm3/power", json={"action": "on"}))
    assert on["state"] == "on" and farm.state(2).power == "on"
    soft = api.operator.post(f"{M}/vm3/power", json={"action": "soft_off"})
    assert soft.status_code == 409 and "outlet" in soft.json()["error"]["message"]
    # A machine with a BMC still goes to its BMC; a hard off goes to its outlet.
    ok(api.operator.post(f"{M}/vm1/power", json={"action": "on"}))
    assert pdus.outlet_on(0, 1) and farm.state(0).power == "on"
    hard = ok(api.operator.post("/api/v1/machines/vm1/hard-off"))
    assert hard["outlets"][0]["state"] == "off" and farm.state(0).power == "off"


def test_poll_stores_watts_on_pdu_outlets_and_machines(
    api: Api, services: Services, rack: tuple[BmcFarm, PduSim]
) -> None:
    farm, pdus = rack
    _setup(api, farm, pdus, WIRED)
    farm.set_power(1, True)
    polls = asyncio.run(poll_pdus(services))
    assert [p.pdu for p in polls] == ["pdu1"] and polls[0].reading is not None
    with services.db.read_session() as session:
        pdu = session.exec(select(Pdu)).one()
        assert pdu.power_watts == 8 + 120 + 8 and pdu.unreachable_reason == ""
        vm2 = session.exec(select(Machine).where(Machine.name == "vm2")).one()
        assert (vm2.measured_watts, vm2.measured_source) == (120, "pdu")
    pdus.pause(0, True)
    ok(api.operator.patch(f"{P}/pdu1", json={}))
    services.settings.pdu_call_timeout_s = 0.3
    polls = asyncio.run(poll_pdus(services))
    assert polls[0].reading is None and "did not answer" in polls[0].error
    assert "did not answer" in ok(api.ci.get(f"{P}/pdu1"))["unreachable_reason"]


VERIFY = {"probe_s": 1.5, "settle_s": 4, "recover_s": 15}


def test_verify_passes_a_correct_map(api: Api, rack: tuple[BmcFarm, PduSim]) -> None:
    farm, pdus = rack
    _setup(api, farm, pdus, WIRED)
    verdicts = ok(api.operator.post(f"{P}/pdu1/verify", json=VERIFY))
    by_outlet = {v["outlet"]: v for v in verdicts}
    assert by_outlet[1]["result"] == "pass" and by_outlet[2]["result"] == "pass", verdicts
    assert by_outlet[3]["result"] == "skipped" and "no BMC" in by_outlet[3]["detail"]
    assert pdus.outlet_on(0, 1) and pdus.outlet_on(0, 2)
    assert api.ci.post(f"{P}/pdu1/verify", json=VERIFY).status_code == 403


def test_verify_fails_a_swapped_map_naming_what_it_saw(
    api: Api, rack: tuple[BmcFarm, PduSim]
) -> None:
    farm, pdus = rack
    _setup(api, farm, pdus, {1: "vm2", 2: "vm1"})  # the cables are the other way round
    verdicts = ok(api.operator.post(f"{P}/pdu1/verify", json=VERIFY))
    assert [(v["outlet"], v["result"]) for v in verdicts] == [(1, "fail"), (2, "fail")]
    assert verdicts[0]["detail"].startswith("outlet 1 cut vm1's BMC, expected vm2"), verdicts
    assert pdus.outlet_on(0, 1) and pdus.outlet_on(0, 2)
