"""Rack power budgets through the real app, real tokens and a simulated BMC farm on UDP:
power-on refused over budget with the reason, forced by an admin but never by an
operator; rack output and ``/racks/{name}/power``; a budget event on change only."""

from __future__ import annotations

import asyncio
import itertools
import random
from collections.abc import Iterator
from datetime import timedelta

import pytest
from prometheus_client import generate_latest
from sqlmodel import col, select

from provisiond import power_admission, power_budget
from provisiond.container import Services
from provisiond.machines.power_sync import sync_power
from provisiond.models import Event, Machine, Outlet, Pdu, Rack, utcnow
from provisiond.rack import BmcFarm
from provisiond.rack.ipmi_machine import PowerMeter
from tests.conftest import Api

_addresses = itertools.count(random.randrange(0, 40_000))


@pytest.fixture
def farm() -> Iterator[BmcFarm]:
    n = next(_addresses)
    address = f"127.{232 + n // 62_500 % 20}.{n // 250 % 250}.{n % 250 + 2}"
    with BmcFarm(3, address=address) as running:
        running.set_meter(None, PowerMeter(idle_watts=300, load_watts=600, load=0.0))
        yield running


def _rack(api: Api, farm: BmcFarm, budget: int) -> None:
    r = api.operator.post("/api/v1/racks", json={"name": "r1", "power_budget_watts": budget})
    assert r.status_code == 201, r.text
    for index in range(3):
        address, port = farm.endpoint(index)
        bmc = {"address": address, "port": port, "username": "admin", "password": "password"}
        body = {"name": f"m{index}", "rack": "r1", "power_watts": 400, "bmc": bmc}
        r = api.operator.post("/api/v1/machines", json=body)
        assert r.status_code == 201, r.text


def _events(services: Services, event: str) -> list[Event]:
    with services.db.read_session() as session:
        return list(
            session.exec(select(Event).where(col(Event.event) == event).order_by(col(Event.id)))
        )


def test_power_on_over_budget_is_refused_forced_by_admin_never_by_operator(
    api: Api, services: Services, farm: BmcFarm
) -> None:
    _rack(api, farm, budget=800)
    farm.set_power(0, True)
    farm.set_power(1, True)
    asyncio.run(sync_power(services))  # m0, m1 on at 300 W each; m2 off at 0 W

    rack = api.ci.get("/api/v1/racks/r1").json()
    assert rack["measured_watts"] == 600 and rack["declared_watts"] == 1200
    assert rack["budget_status"] == "ok"

    refused = api.operator.post("/api/v1/machines/m2/power", json={"action": "on"})
    assert refused.status_code == 409, refused.text
    problem = refused.json()["error"]
    assert problem["code"] == "rack_over_budget"
    assert "rack r1 would draw 1000 W of its 800 W budget" in problem["message"]
    assert "m2 adds 400 W, its declared power_watts" in problem["message"]
    assert "force=true" in problem["hint"]
    assert farm.state(2).power == "off"  # the BMC was never asked
    assert len(_events(services, "power_on_refused_over_budget")) == 1

    operator = api.operator.post("/api/v1/machines/m2/power", json={"action": "on", "force": True})
    assert operator.status_code == 403, operator.text
    assert "only an admin can force" in operator.json()["error"]["message"]
    assert farm.state(2).power == "off"

    # Powering off and a machine already on never wait for the budget.
    assert api.operator.post("/api/v1/machines/m0/power", json={"action": "on"}).status_code == 200

    forced = api.admin.post("/api/v1/machines/m2/power", json={"action": "on", "force": True})
    assert forced.status_code == 200, forced.text
    assert "forced over the rack budget" in forced.json()["message"]
    assert farm.state(2).power == "on"
    [event] = _events(services, "power_on_over_budget_forced")
    assert event.machine_name == "m2" and event.actor == "token:test-admin"


def test_budget_status_event_on_change_only_and_rack_power_view(
    api: Api, services: Services, farm: BmcFarm
) -> None:
    _rack(api, farm, budget=950)
    farm.set_power(0, True)
    asyncio.run(sync_power(services))  # 300 W + 0 + 0: ok
    asyncio.run(sync_power(services))  # unchanged: no second event
    farm.set_power(1, True)
    farm.set_power(2, True)
    asyncio.run(sync_power(services))  # 900 W: over 90 % (855 W)
    asyncio.run(sync_power(services))
    farm.set_meter(None, PowerMeter(idle_watts=300, load_watts=600, load=1.0))
    asyncio.run(sync_power(services))  # 1800 W: over budget

    changes = [
        (e.details["from"], e.details["to"]) for e in _events(services, "rack_budget_status")
    ]
    assert changes == [("", "ok"), ("ok", "over_90"), ("over_90", "over_100")]

    view = api.ci.get("/api/v1/racks/r1/power").json()
    assert view["measured_watts"] == 1800 and view["budget_status"] == "over_100"
    assert view["declared_watts"] == 1200 and view["headroom_watts"] == -850
    assert view["counted"] == {"bmc": 3}
    assert [(m["name"], m["watts"], m["source"]) for m in view["machines"]] == [
        ("m0", 600, "bmc"),
        ("m1", 600, "bmc"),
        ("m2", 600, "bmc"),
    ]
    assert api.ci.get("/api/v1/racks/nope/power").status_code == 404
    exposition = generate_latest(services.registry).decode()
    assert 'provisiond_rack_measured_watts{rack="r1"} 1800.0' in exposition
    assert 'provisiond_rack_budget_watts{rack="r1"} 950.0' in exposition
    assert 'provisiond_racks_over_budget{level="over_100"} 1.0' in exposition


def test_machines_without_readings_count_at_declared_watts(services: Services) -> None:
    with services.db.transaction() as session:
        rack = Rack(name="r9", power_budget_watts=1000)
        session.add(rack)
        session.flush()
        session.add(Machine(name="a", rack_id=rack.id, power_watts=450, power_state="unknown"))
        session.add(Machine(name="b", rack_id=rack.id, power_watts=450, power_state="off"))
        session.add(Machine(name="c", rack_id=rack.id, power_watts=500, measured_watts=120,
                            measured_source="bmc", measured_at=utcnow(),
                            power_state="on"))  # fmt: skip
    [draw] = power_budget.update_racks(services)
    assert (draw.measured_watts, draw.declared_watts) == (570, 1400)
    assert draw.counted == {"declared": 1, "off": 1, "bmc": 1}
    assert draw.budget_status == "ok"


def _draws(services: Services) -> dict[str, tuple[int, str]]:
    [draw] = power_budget.update_racks(services)
    return {m.name: (m.watts, m.source) for m in draw.machines}


def test_off_machines_draw_nothing_and_old_readings_say_nothing(services: Services) -> None:
    now = utcnow()
    old = now - timedelta(seconds=power_budget.fresh_s(services) + 5)
    with services.db.transaction() as session:
        rack = Rack(name="r1", power_budget_watts=1000)
        session.add(rack)
        session.flush()
        for name, state, watts, source, at in [
            ("off-fresh", "off", 350, "bmc", now),  # its draw before it went off
            ("off-pdu", "off", 350, "pdu", old),
            ("on-stale", "on", 350, "bmc", old),  # DCMI stopped measuring long ago
            ("on-pdu-stale", "on", 350, "pdu", old),  # a copied outlet reading, no outlets now
            ("on-fresh", "on", 250, "bmc", now),
            ("reserved-old", "off", 350, "reserved", old),  # a power-on that never came
        ]:
            session.add(Machine(name=name, rack_id=rack.id, power_watts=100, power_state=state,
                                measured_watts=watts, measured_source=source,
                                measured_at=at))  # fmt: skip
    assert _draws(services) == {
        "off-fresh": (0, "off"),
        "off-pdu": (0, "off"),
        "on-stale": (100, "declared"),
        "on-pdu-stale": (100, "declared"),
        "on-fresh": (250, "bmc"),
        "reserved-old": (0, "off"),
    }


def test_a_machine_counts_by_its_pdus_only_when_every_outlet_was_read(
    services: Services,
) -> None:
    now = utcnow()
    old = now - timedelta(seconds=power_budget.fresh_s(services) + 5)
    with services.db.transaction() as session:
        rack = Rack(name="r1", power_budget_watts=2000)
        session.add(rack)
        session.flush()
        m = Machine(name="m", rack_id=rack.id, power_watts=700, power_state="on",
                    measured_watts=420, measured_source="bmc", measured_at=now)  # fmt: skip
        session.add(m)
        a = Pdu(name="a", rack_id=rack.id, driver="apc_snmp", power_read_at=now)
        b = Pdu(name="b", rack_id=rack.id, driver="apc_snmp", power_read_at=old)
        recorded = Pdu(name="c", rack_id=rack.id)  # no driver: never read, not counted
        session.add_all([a, b, recorded])
        session.flush()
        assert m.id and a.id and b.id and recorded.id
        machine_id = m.id
        outlets = {
            "a": Outlet(pdu_id=a.id, number=1, machine_id=m.id, power_watts=210),
            "b": Outlet(pdu_id=b.id, number=1, machine_id=m.id, power_watts=220),
            "c": Outlet(pdu_id=recorded.id, number=1, machine_id=m.id),
        }
        session.add_all(outlets.values())
        session.flush()
        outlet_ids = {name: o.id for name, o in outlets.items()}
        pdu_b = b.id
    # PDU b is down (its reading is old): half the draw is not the draw; the BMC's counts.
    assert _draws(services) == {"m": (420, "bmc")}
    with services.db.transaction() as session:
        session.get(Pdu, pdu_b).power_read_at = utcnow()  # type: ignore[union-attr]
        session.get(Outlet, outlet_ids["b"]).power_watts = None  # type: ignore[union-attr]
    # b answers, but that outlet is not metered: still the BMC's.
    assert _draws(services) == {"m": (420, "bmc")}
    with services.db.transaction() as session:
        session.get(Outlet, outlet_ids["b"]).power_watts = 220  # type: ignore[union-attr]
    assert _draws(services) == {"m": (430, "pdu")}  # both PSUs, both read
    with services.db.read_session() as session:
        machine = session.get(Machine, machine_id)
        assert machine is not None
        assert (machine.measured_watts, machine.measured_source) == (430, "pdu")


def test_a_reservation_holds_its_headroom_until_the_machine_reads_on(
    api: Api, services: Services, farm: BmcFarm
) -> None:
    _rack(api, farm, budget=1000)
    farm.set_power(0, True)
    asyncio.run(sync_power(services))  # m0 on at 300 W; m1, m2 off
    # m1's power-on is admitted; its BMC call is still on its way when syncs run.
    assert power_admission.admit_power_on(services, "m1", force=False, actor="test") == ""
    asyncio.run(sync_power(services))  # m1 still reads off: its reservation stands
    view = api.ci.get("/api/v1/racks/r1/power").json()
    assert view["measured_watts"] == 700 and view["counted"] == {"bmc": 1, "reserved": 1, "off": 1}
    refused = api.operator.post("/api/v1/machines/m2/power", json={"action": "on"})
    assert refused.status_code == 409, refused.text
    assert "rack r1 would draw 1100 W of its 1000 W budget" in refused.json()["error"]["message"]
    farm.set_power(1, True)  # the power-on lands
    asyncio.run(sync_power(services))  # m1 reads on at 300 W: that replaces the 400 W
    assert api.ci.get("/api/v1/racks/r1/power").json()["measured_watts"] == 600
    admitted = api.operator.post("/api/v1/machines/m2/power", json={"action": "on"})
    assert admitted.status_code == 200, admitted.text
    assert farm.state(2).power == "on"
