"""PDUs with a driver through the API: settings, outlet power, the machine power path
through an outlet, a live status read, the poll, and ``verify`` of the outlet map, all
against the PDU simulator wired to a BMC farm of in-memory machines (real UDP)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from sqlmodel import select

from provisiond import events, lifecycle, locks
from provisiond.container import Services
from provisiond.lifecycle import Ev
from provisiond.models import Machine, Pdu, utcnow
from provisiond.pdus import verify
from provisiond.pdus.outlets import machine_locked
from provisiond.pdus.poll import poll_pdus
from provisiond.rack.bmc_sim import BmcFarm
from provisiond.rack.pdu_sim import PduSim
from tests.conftest import Api
from tests.support.allocations import add_machines, fire

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


def test_verify_cuts_only_idle_machines_it_could_lock(
    api: Api, services: Services, rack: tuple[BmcFarm, PduSim]
) -> None:
    farm, pdus = rack
    _setup(api, farm, pdus, WIRED)
    fire(services.db, "vm1", Ev.MANAGE)  # maintenance: an operator may be working on it
    with services.db.read_session() as session:
        vm2 = session.exec(select(Machine).where(Machine.name == "vm2")).one()
    assert vm2.id is not None and vm2.state == "enrolled"
    other = "host-b:99:20250101T000000Z:power"
    assert locks.try_acquire(services.db, vm2.id, other, ttl_s=60)
    verdicts = ok(api.operator.post(f"{P}/pdu1/verify", json=VERIFY))
    by_outlet = {v["outlet"]: v for v in verdicts}
    assert by_outlet[1]["result"] == "skipped", verdicts
    assert "vm1 is maintenance: only idle machines" in by_outlet[1]["detail"]
    assert by_outlet[2]["result"] == "skipped" and other in by_outlet[2]["detail"], verdicts
    assert [pdus.pdu(0).outlets[n].switches for n in (1, 2)] == [0, 0]
    with services.db.read_session() as session:  # verify left the other owner's lock alone
        assert session.get(Machine, vm2.id).lock_owner == other  # type: ignore[union-attr]
    locks.release(services.db, vm2.id, other)
    verdicts = ok(api.operator.post(f"{P}/pdu1/verify", json=VERIFY))
    assert verdicts[1]["result"] == "pass", verdicts


def test_verify_reports_an_outlet_left_off_and_checks_the_rest(
    api: Api, services: Services, rack: tuple[BmcFarm, PduSim], monkeypatch: pytest.MonkeyPatch
) -> None:
    farm, pdus = rack
    _setup(api, farm, pdus, WIRED)
    monkeypatch.setattr(verify, "RESTORE_PAUSE_S", 0.1)
    pdus.refuse_on(0, 1)  # outlet 1 switches off, then its relay refuses to close
    verdicts = ok(api.operator.post(f"{P}/pdu1/verify", json=VERIFY))
    by_outlet = {v["outlet"]: v for v in verdicts}
    assert by_outlet[1]["result"] == "fail", verdicts
    assert by_outlet[1]["detail"].startswith("outlet 1 left OFF: "), verdicts
    assert "refused" in by_outlet[1]["detail"] and "3 tries" in by_outlet[1]["detail"]
    assert by_outlet[2]["result"] == "pass", verdicts  # the next outlet was still checked
    assert not pdus.outlet_on(0, 1) and pdus.outlet_on(0, 2)
    assert pdus.pdu(0).requests > 0
    shown = ok(api.ci.get(f"{P}/pdu1"))
    assert [o["state"] for o in shown["outlets"][:2]] == ["off", "on"]
    assert ok(api.ci.get(f"{M}/vm1"))["power_state"] == "off"
    listed = api.operator.get("/api/v1/events", params={"limit": 50}).text
    assert "outlet_left_off" in listed and "pdu_verify" in listed and "1 fail" in listed


def test_a_machine_under_a_lock_is_not_claimed(services: Services) -> None:
    (machine_id,) = add_machines(services.db, [{"name": "m1"}])

    def claim() -> lifecycle.Claimed | None:
        with services.db.transaction() as session:
            return lifecycle.claim_available(
                session, list, actor="test", allocation_uuid="a1", batch=events.Batch(),
                cache_key=("test_pdu_power", "locked"),
            )  # fmt: skip

    assert locks.try_acquire(services.db, machine_id, "verify:pdu", ttl_s=60)
    assert claim() is None  # e.g. its outlet is cut by pdus verify right now
    locks.release(services.db, machine_id, "verify:pdu")
    long_ago = utcnow() - timedelta(minutes=5)
    assert locks.try_acquire(services.db, machine_id, "dead:pdu", ttl_s=60, now=long_ago)
    claimed = claim()  # an expired lock does not keep it (and the cached statement works)
    assert claimed is not None and claimed.id == machine_id


def test_an_outlet_lock_is_renewed_while_it_is_held(services: Services) -> None:
    """A verify of one outlet may outlast ``lock_ttl_s`` (settle + recover): the lock is
    renewed every third of it, so no one else can take it meanwhile."""
    (machine_id,) = add_machines(services.db, [{"name": "m1"}])
    services.settings.lock_ttl_s = 1.5

    async def hold() -> bool:
        async with machine_locked(services, machine_id):
            await asyncio.sleep(3.5)  # more than twice the TTL
            return await asyncio.to_thread(
                locks.try_acquire, services.db, machine_id, "other:pdu", ttl_s=60
            )

    assert asyncio.run(hold()) is False
    with services.db.read_session() as session:  # and it was released at the end
        assert session.get(Machine, machine_id).lock_owner is None  # type: ignore[union-attr]
