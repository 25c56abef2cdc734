"""Power and boot-device actions through the API, against a real ipmi_sim BMC."""

from __future__ import annotations

from sqlmodel import select

from provisiond import locks
from provisiond.container import Services
from provisiond.models import Machine
from tests.conftest import Api
from tests.support.ipmisim import IpmiSim, free_udp_port


def _machine(api: Api, name: str, bmc: dict[str, object]) -> dict[str, object]:
    r = api.operator.post("/api/v1/machines", json={"name": name, "bmc": bmc})
    assert r.status_code == 201, r.text
    return r.json()  # type: ignore[no-any-return]


def _events(api: Api, name: str) -> list[tuple[str, str]]:
    rows = api.ci.get("/api/v1/events", params={"machine": name, "kind": "power"}).json()
    return [(e["event"], e["message"]) for e in rows]


def test_power_on_status_cycle_off_and_boot_device(api: Api, ipmi_sim: IpmiSim) -> None:
    bmc = {
        "address": "127.0.0.1",
        "port": ipmi_sim.port,
        "username": "admin",
        "password": "password",
    }
    _machine(api, "n1", bmc)
    r = api.operator.post("/api/v1/machines/n1/power", json={"action": "on"})
    assert r.status_code == 200, r.text
    assert r.json()["state"] == "on" and r.json()["changed"] is True
    assert ipmi_sim.power() == "on"
    again = api.operator.post("/api/v1/machines/n1/power", json={"action": "on"}).json()
    assert again["changed"] is False and "(already)" in again["message"]
    assert api.ci.get("/api/v1/machines/n1").json()["power_state"] == "on"

    ipmi_sim.set_power(False)  # behind our back
    # A live read is for operators (ci gets the cached state: tests/api/test_power_roles.py).
    assert api.operator.get("/api/v1/machines/n1/power").json()["state"] == "off"
    assert api.ci.get("/api/v1/machines/n1").json()["power_state"] == "off"

    cycled = api.operator.post("/api/v1/machines/n1/power", json={"action": "cycle"}).json()
    assert cycled["state"] == "on"
    off = api.operator.post("/api/v1/machines/n1/power", json={"action": "off"}).json()
    assert off["state"] == "off" and ipmi_sim.power() == "off"

    r = api.operator.post("/api/v1/machines/n1/boot-device", json={"device": "pxe"})
    assert r.status_code == 200 and (ipmi_sim.state_dir / "boot").read_text().strip() == "pxe"
    kinds = [event for event, _ in _events(api, "n1")]
    assert kinds.count("power_on") == 2 and "power_cycle" in kinds and "boot_device" in kinds


def test_power_errors_are_clear_and_recorded(
    api: Api, ipmi_sim: IpmiSim, services: Services
) -> None:
    services.settings.power_call_timeout_s = 3
    bad = {"address": "127.0.0.1", "port": ipmi_sim.port, "username": "admin", "password": "nope"}
    _machine(api, "badpw", bad)
    r = api.operator.post("/api/v1/machines/badpw/power", json={"action": "on"})
    assert r.status_code == 502
    err = r.json()["error"]
    assert err["code"] == "bmc_auth_failed"
    assert err["hint"] == "check the username and password in machine badpw's BMC settings"
    assert "nope" not in r.text
    assert _events(api, "badpw")[0][0] == "power_on_failed"

    good = {
        "address": "127.0.0.1",
        "port": ipmi_sim.port,
        "username": "admin",
        "password": "password",
    }
    _machine(api, "busy", {**good, "port": free_udp_port()})
    with services.db.read_session() as session:
        row = session.exec(select(Machine).where(Machine.name == "busy")).one()
    assert row.id is not None
    assert locks.try_acquire(services.db, row.id, "deploy:other-daemon", ttl_s=60)
    r = api.operator.post("/api/v1/machines/busy/power", json={"action": "off"})
    assert r.status_code == 409
    assert r.json()["error"]["code"] == "machine_locked"
    assert "deploy:other-daemon" in r.json()["error"]["message"]


def test_manual_driver_asks_a_person(api: Api) -> None:
    _machine(api, "old", {"driver": "manual"})
    r = api.operator.post("/api/v1/machines/old/power", json={"action": "on"})
    assert r.status_code == 200
    assert r.json()["manual"] is True and "by hand" in r.json()["message"]
    assert _events(api, "old") == [("manual_action_required", r.json()["message"])]


def test_power_input_and_roles(api: Api) -> None:
    _machine(api, "m", {"driver": "manual"})
    assert (
        api.operator.post("/api/v1/machines/m/power", json={"action": "explode"}).status_code == 422
    )
    assert api.ci.post("/api/v1/machines/m/power", json={"action": "on"}).status_code == 403
    assert (
        api.operator.post("/api/v1/machines/nope/power", json={"action": "on"}).status_code == 404
    )
    r = api.operator.post("/api/v1/machines", json={"name": "nobmc"})
    assert r.status_code == 201
    r = api.operator.post("/api/v1/machines/nobmc/power", json={"action": "on"})
    assert r.status_code == 409 and "has no BMC" in r.json()["error"]["message"]
