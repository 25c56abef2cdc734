"""The agent routes through the real app, on SQLite and PostgreSQL: token auth,
inventory, heartbeats and the lifecycle moves they cause, and hostile bodies."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from sqlmodel import col, func, select

from provisiond.container import Services
from provisiond.deploy.agent_reports import issue_agent_token
from provisiond.lifecycle import Ev, advance
from provisiond.models import Deployment, Event, Machine, Nic, utcnow
from tests.conftest import Api

PXE_MAC = "52:54:00:00:00:01"
DATA_MAC = "52:54:00:00:00:02"
TO_STATE = {
    "enrolled": [],
    "inspecting": [Ev.INSPECT],
    "available": [Ev.INSPECT, Ev.DONE],
    "installing_agent": [Ev.INSPECT, Ev.DONE, Ev.ALLOCATE, Ev.DEPLOY, Ev.BOOTED],
    "active": [Ev.INSPECT, Ev.DONE, Ev.ALLOCATE, Ev.DEPLOY, Ev.BOOTED, Ev.READY],
    "maintenance": [Ev.MANAGE],
}


def make_machine(
    services: Services, name: str, state: str, macs: tuple[str, ...] = (PXE_MAC,)
) -> tuple[str, str]:
    """A machine in ``state`` with NICs (the first one PXE); returns (uuid, agent token)."""
    with services.db.transaction() as s:
        m = Machine(name=name, vendor="Acme", serial="S-OLD")
        advance(s, m, Ev.ENROLL, actor="test")
        assert m.id is not None
        for i, mac in enumerate(macs):
            s.add(Nic(machine_id=m.id, mac=mac, pxe=i == 0, name=f"old{i}"))
        for ev in TO_STATE[state]:
            advance(s, m, ev, actor="test")
        return m.uuid, issue_agent_token(s, m)


def report(**changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "agent_version": "0.1.0",
        "hostname": "node1",
        "kernel": "6.1.0-18-amd64",
        "arch": "x86_64",
        "cpus": 8,
        "cpu_model": "AMD EPYC 7302",
        "ram_mib": 31905,
        "disks": [
            {"name": "sda", "size_bytes": 480 * 10**9, "model": "SSD 1", "rotational": False},
            {"name": "sdb", "size_bytes": 4 * 10**12, "model": "HDD 2", "rotational": True},
        ],
        "nics": [
            {"name": "eno1", "mac": PXE_MAC.upper(), "operstate": "up", "speed_mbps": 1000,
             "ipv4": ["10.0.0.5/24"], "virtual": False},
            {"name": "docker0", "mac": "02:42:ac:11:00:01", "operstate": "down",
             "virtual": True},
        ],
        "dmi": {"sys_vendor": "Dell Inc.", "product_name": "PowerEdge R640",
                "product_serial": "ABC123"},
        "lldp": [{"interface": "eno1", "chassis": "tor1", "port": "Ethernet12"}],
    }  # fmt: skip
    body.update(changes)
    return body


def post(api: Api, uuid: str, kind: str, token: str | None, **kw: Any) -> Any:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    headers.update(kw.pop("headers", {}))
    return api.client.post(f"/api/v1/agent/{uuid}/{kind}", headers=headers, **kw)


def machine(services: Services, uuid: str) -> Machine:
    with services.db.read_session() as s:
        m = s.exec(select(Machine).where(Machine.uuid == uuid)).one()
        _ = m.nics  # load before the session closes
        return m


def events(services: Services, event: str) -> list[Event]:
    with services.db.read_session() as s:
        return list(s.exec(select(Event).where(Event.event == event).order_by(col(Event.id))))


def assert_401(r: Any) -> None:
    assert r.status_code == 401, r.text
    error = r.json()["error"]
    assert error["code"] == "unauthorized"
    assert error["message"] == "the agent token was not accepted for this machine"
    assert "agent.env" in error["hint"]


def test_only_the_machines_current_token_is_accepted(api: Api, services: Services) -> None:
    uuid, token = make_machine(services, "n1", "active")
    other_uuid, other_token = make_machine(services, "n2", "active", (DATA_MAC,))
    assert post(api, uuid, "heartbeat", token, json={}).status_code == 200
    assert_401(post(api, uuid, "heartbeat", token + "x", json={}))
    assert_401(post(api, uuid, "heartbeat", None, json={}))
    assert_401(post(api, uuid, "heartbeat", other_token, json={}))
    assert_401(post(api, other_uuid, "heartbeat", token, json={}))
    assert_401(post(api, "no-such-machine", "heartbeat", token, json={}))
    assert_401(post(api, "x" * 5000, "inventory", token, json=report()))
    assert_401(
        api.client.post(
            f"/api/v1/agent/{uuid}/heartbeat", json={}, headers={"Authorization": f"Basic {token}"}
        )
    )
    # A redeploy mints a new token; the old one stops working at once.
    with services.db.transaction() as s:
        row = s.exec(select(Machine).where(Machine.uuid == uuid)).one()
        new_token = issue_agent_token(s, row)
    assert new_token != token
    assert_401(post(api, uuid, "heartbeat", token, json={}))
    assert post(api, uuid, "heartbeat", new_token, json={}).status_code == 200
    with services.db.read_session() as s:
        stored = s.exec(select(Machine.agent_token_hash).where(Machine.uuid == uuid)).one()
    assert stored and new_token not in stored and len(stored) == 64


def test_inventory_updates_hardware_and_known_nics(api: Api, services: Services) -> None:
    uuid, token = make_machine(services, "n1", "enrolled", (PXE_MAC, DATA_MAC))
    r = post(api, uuid, "inventory", token, json=report())
    assert r.status_code == 200, r.text
    assert r.json() == {"action": None, "interval_s": 15, "state": "enrolled"}
    m = machine(services, uuid)
    assert (m.cpus, m.ram_mib, m.agent_version) == (8, 31905, "0.1.0")
    assert m.disks == [
        {"name": "sda", "size_bytes": 480 * 10**9, "model": "SSD 1", "rotational": False},
        {"name": "sdb", "size_bytes": 4 * 10**12, "model": "HDD 2", "rotational": True},
    ]
    assert (m.vendor, m.model, m.serial) == ("Dell Inc.", "PowerEdge R640", "ABC123")
    nics = {n.mac: (n.name, n.ip_address) for n in m.nics}
    # The data NIC was not reported (not PXE, so no mismatch): it keeps its old values.
    assert nics == {PXE_MAC: ("eno1", "10.0.0.5"), DATA_MAC: ("old1", "")}
    (summary,) = events(services, "inventory_reported")
    assert summary.kind == "inventory" and summary.actor == "agent"
    assert summary.message.startswith("8 CPUs, 31905 MiB RAM, 2 disks (4480 GB), 2 NICs")
    assert summary.details["lldp"][0]["chassis"] == "tor1"
    assert summary.details["nics"][0]["operstate"] == "up"
    assert events(services, "mac_mismatch") == []


def test_empty_or_placeholder_dmi_keeps_what_is_stored(api: Api, services: Services) -> None:
    uuid, token = make_machine(services, "n1", "enrolled")
    dmi = {"sys_vendor": "", "product_name": "To Be Filled By O.E.M.", "product_serial": " "}
    assert post(api, uuid, "inventory", token, json=report(dmi=dmi)).status_code == 200
    m = machine(services, uuid)
    assert (m.vendor, m.model, m.serial) == ("Acme", "", "S-OLD")


def test_mac_mismatch_is_an_event_and_leaves_nics_alone(api: Api, services: Services) -> None:
    uuid, token = make_machine(services, "n1", "enrolled", (PXE_MAC, DATA_MAC))
    _, _ = make_machine(services, "n2", "enrolled", ("52:54:00:00:00:99",))
    nics = [
        {"name": "eth7", "mac": "52:54:00:00:00:99", "ipv4": ["10.9.9.9/24"]},
        {"name": "eth8", "mac": DATA_MAC, "ipv4": ["10.0.0.8/24"]},
    ]
    r = post(api, uuid, "inventory", token, json=report(nics=nics))
    assert r.status_code == 200, r.text
    (mismatch,) = events(services, "mac_mismatch")
    assert mismatch.kind == "inventory" and mismatch.machine_name == "n1"
    assert mismatch.details["unknown"] == ["52:54:00:00:00:99"]
    assert mismatch.details["missing_pxe"] == [PXE_MAC]
    assert mismatch.details["known"] == [PXE_MAC, DATA_MAC]
    assert mismatch.details["reported"] == [DATA_MAC, "52:54:00:00:00:99"]
    assert mismatch.details["owned_by_other_machines"] == {"52:54:00:00:00:99": "n2"}
    assert mismatch.details["lldp"][0]["port"] == "Ethernet12"
    m = machine(services, uuid)
    assert {n.mac: (n.name, n.ip_address) for n in m.nics} == {
        PXE_MAC: ("old0", ""),
        DATA_MAC: ("old1", ""),
    }
    assert m.cpus == 8  # hardware facts are still taken
    assert events(services, "inventory_reported")[0].details["mac_mismatch"] is True


def test_inspection_report_makes_the_machine_available_and_powers_it_off(
    api: Api, services: Services
) -> None:
    uuid, token = make_machine(services, "n1", "inspecting")
    assert machine(services, uuid).deadline is not None
    r = post(api, uuid, "inventory", token, json=report())
    assert r.status_code == 200, r.text
    assert r.json() == {"action": "poweroff", "interval_s": 15, "state": "available"}
    m = machine(services, uuid)
    assert (m.state, m.deadline, m.cpus) == ("available", None, 8)
    (done,) = [e for e in events(services, "done") if e.kind == "transition"]
    assert (done.from_state, done.to_state, done.actor) == ("inspecting", "available", "agent")
    assert done.message == "inspection report"
    # A second report (the agent retried) changes nothing and asks for nothing.
    again = post(api, uuid, "inventory", token, json=report())
    assert again.json()["action"] is None and machine(services, uuid).state == "available"


def test_first_heartbeat_after_install_is_instance_ready(api: Api, services: Services) -> None:
    uuid, token = make_machine(services, "n1", "installing_agent")
    started = utcnow() - timedelta(seconds=90)
    with services.db.transaction() as s:
        m = s.exec(select(Machine).where(Machine.uuid == uuid)).one()
        assert m.id is not None
        old = Deployment(machine_id=m.id, outcome="superseded", started_at=started)
        running = Deployment(
            machine_id=m.id, started_at=started, phases={"callback": started.isoformat()}
        )
        s.add_all([old, running])
        s.flush()
        running_id, old_id = running.id, old.id
    r = post(api, uuid, "heartbeat", token, json={"agent_version": "0.1.0", "uptime_s": 12.5})
    assert r.status_code == 200, r.text
    assert r.json() == {"action": None, "interval_s": 15, "state": "active"}
    m = machine(services, uuid)
    assert (m.state, m.deadline, m.agent_version) == ("active", None, "0.1.0")
    assert m.last_heartbeat_at is not None
    with services.db.read_session() as s:
        dep = s.get(Deployment, running_id)
        untouched = s.get(Deployment, old_id)
    assert dep is not None and untouched is not None
    assert set(dep.phases) == {"callback", "agent_heartbeat"}
    assert dep.outcome == "active" and dep.finished_at == m.last_heartbeat_at
    assert dep.phases["agent_heartbeat"] == m.last_heartbeat_at.isoformat()
    assert (untouched.outcome, untouched.phases, untouched.finished_at) == ("superseded", {}, None)
    (ready,) = events(services, "ready")
    assert (ready.from_state, ready.to_state, ready.actor) == (
        "installing_agent",
        "active",
        "agent",
    )
    assert ready.message == "first agent heartbeat" and ready.details == {"deployment": dep.uuid}
    assert 89 < ready.phase_timings["deploy_total_s"] < 120


def test_heartbeat_on_an_active_machine_only_notes_that_it_lives(
    api: Api, services: Services
) -> None:
    uuid, token = make_machine(services, "n1", "active")
    with services.db.read_session() as s:
        before = s.exec(select(func.count()).select_from(Event)).one()
    first = post(api, uuid, "heartbeat", token, json={"agent_version": "0.1.0"})
    seen = machine(services, uuid).last_heartbeat_at
    second = post(api, uuid, "heartbeat", token, json={"agent_version": "0.2.0"})
    assert first.json() == second.json() == {"action": None, "interval_s": 15, "state": "active"}
    m = machine(services, uuid)
    assert m.state == "active" and m.agent_version == "0.2.0"
    assert seen is not None and m.last_heartbeat_at is not None and m.last_heartbeat_at >= seen
    with services.db.read_session() as s:
        assert s.exec(select(func.count()).select_from(Event)).one() == before
    shown = api.ci.get("/api/v1/machines/n1").json()  # operators see the agent's pulse
    assert shown["agent_version"] == "0.2.0" and shown["last_heartbeat_at"] is not None


@pytest.mark.parametrize(
    "state,action",
    [("available", "poweroff"), ("enrolled", "poweroff"), ("maintenance", None)],
)
def test_an_agent_where_none_should_run_is_told_to_power_off(
    api: Api, services: Services, state: str, action: str | None
) -> None:
    uuid, token = make_machine(services, "n1", state)
    r = post(api, uuid, "heartbeat", token, json={})
    assert r.status_code == 200 and r.json()["action"] == action
    assert machine(services, uuid).state == state


def _chunks(size: int) -> Iterator[bytes]:
    sent = 0
    while sent < size:
        yield b" " * 4096
        sent += 4096


BAD_BODIES: list[tuple[str, dict[str, Any], int]] = [
    ("not json", {"content": b"{cpus: 8", "headers": {"content-type": "application/json"}}, 422),
    ("array", {"json": [1, 2]}, 422),
    ("empty", {}, 422),
    ("no cpus", {"json": {"ram_mib": 1}}, 422),
    ("negative cpus", {"json": report(cpus=-1)}, 422),
    ("ram too large", {"json": report(ram_mib=2**40)}, 422),
    ("bad mac", {"json": report(nics=[{"mac": "zz"}])}, 422),
    ("nul byte", {"json": report(hostname="a\x00b")}, 422),
    ("long serial", {"json": report(dmi={"product_serial": "x" * 500})}, 422),
    ("disk size string", {"json": report(disks=[{"name": "sda", "size_bytes": "big"}])}, 422),
    ("text body", {"content": b"hello", "headers": {"content-type": "text/plain"}}, 422),
    ("too large", {"content": b"[" + b"1," * 200_000 + b"1]"}, 413),
    ("too large, chunked", {"content": _chunks(300 * 1024)}, 413),
]


@pytest.mark.parametrize("name,kwargs,status", BAD_BODIES, ids=[b[0] for b in BAD_BODIES])
def test_malformed_inventory_is_a_4xx_never_a_500(
    api: Api, services: Services, name: str, kwargs: dict[str, Any], status: int
) -> None:
    uuid, token = make_machine(services, "n1", "inspecting")
    if "content" in kwargs and not isinstance(kwargs["content"], bytes):
        kwargs = {**kwargs, "content": _chunks(300 * 1024)}  # a fresh generator per run
    r = post(api, uuid, "inventory", token, **kwargs)
    assert r.status_code == status, (name, r.status_code, r.text)
    error = r.json()["error"]
    assert error["code"] and error["message"] and "hint" in error
    m = machine(services, uuid)
    assert m.state == "inspecting" and m.cpus is None


def test_malformed_heartbeats_are_422(api: Api, services: Services) -> None:
    uuid, token = make_machine(services, "n1", "active")
    for body in ({"uptime_s": -1}, {"uptime_s": "soon"}, {"agent_version": "v" * 33}, [1]):
        r = post(api, uuid, "heartbeat", token, content=json.dumps(body))
        assert r.status_code == 422, (body, r.text)
    assert machine(services, uuid).last_heartbeat_at is None


def test_the_routes_and_schemas_are_in_openapi(api: Api) -> None:
    spec = api.client.get("/openapi.json").json()
    for kind, schema in (("inventory", "InventoryReport"), ("heartbeat", "Heartbeat")):
        op = spec["paths"][f"/api/v1/agent/{{machine_uuid}}/{kind}"]["post"]
        ref = op["requestBody"]["content"]["application/json"]["schema"]["$ref"]
        assert ref.endswith(schema)
    assert "AgentReply" in spec["components"]["schemas"]
