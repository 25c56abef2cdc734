"""The cabling check through the real app, on SQLite and PostgreSQL: inventory reports
from the agent route, verdicts and their events, holds that keep a machine out of
allocation, the topology.dot round trip, and bad input."""

from __future__ import annotations

import json
from typing import Any

import pytest
from sqlmodel import col, select

from provisiond.container import Services
from provisiond.deploy.agent_reports import issue_agent_token
from provisiond.lifecycle import Ev, advance
from provisiond.models import Event, Machine
from tests.api.test_agent_api import post, report
from tests.conftest import Api
from tests.support.allocations import KEY, add_image

SW_MAC = "44:38:39:00:00:01"
MACS = {f"vm{i}": f"52:54:00:00:00:0{i}" for i in (1, 2, 3)}
LAB = {
    "version": 1,
    "racks": [{"name": "lab1"}],
    "switches": [
        {"name": "lab1-sw1", "rack": "lab1", "chassis_mac": SW_MAC.upper().replace(":", "-"),
         "mgmt_address": "10.0.0.2", "ports": ["swp1", "swp2", "swp3", "swp4"]},
    ],
    "machines": [
        {"name": name, "rack": "lab1",
         "nics": [{"mac": mac, "name": "eth0", "pxe": True,
                   "switch_port": f"lab1-sw1/swp{name[-1]}"}]}
        for name, mac in MACS.items()
    ],
}  # fmt: skip


def neighbour(machine: str, port: str, **kw: Any) -> dict[str, Any]:
    """What the agent sends for eth0 of ``machine`` seeing lab1-sw1 ``port``."""
    return {
        "interface": "eth0", "mac": MACS[machine], "chassis_id": SW_MAC,
        "chassis_id_subtype": "mac", "system_name": "lab1-sw1",
        "system_description": "Cumulus Linux", "port_id": port,
        "port_id_subtype": "interface_name", "port_description": "",
        "mgmt_addresses": ["10.0.0.2"], "vlans": [{"id": 100, "name": "prov"}],
        "pvid": 100, "ttl": 120, **kw,
    }  # fmt: skip


@pytest.fixture
def lab(api: Api, services: Services) -> dict[str, tuple[str, str]]:
    """The rack applied, each machine inspecting with an agent token: name -> (uuid, token)."""
    r = api.admin.post("/api/v1/inventory/apply", json={"yaml": json.dumps(LAB)})
    assert r.status_code == 200, r.text
    out = {}
    with services.db.transaction() as s:
        for m in s.exec(select(Machine).order_by(col(Machine.name))).all():
            advance(s, m, Ev.INSPECT, actor="test")
            out[m.name] = (m.uuid, issue_agent_token(s, m))
    return out


def inventory(api: Api, lab: dict[str, tuple[str, str]], name: str, lldp: list[Any]) -> None:
    uuid, token = lab[name]
    nics = [{"name": "eth0", "mac": MACS[name]}]
    r = post(api, uuid, "inventory", token, json=report(nics=nics, lldp=lldp))
    assert r.status_code == 200, r.text


def cabling_events(services: Services, machine: str | None = None) -> list[Event]:
    with services.db.read_session() as s:
        query = select(Event).where(Event.kind == "cabling").order_by(col(Event.id))
        if machine:
            query = query.where(Event.machine_name == machine)
        return list(s.exec(query))


def ports(api: Api, rack: str | None = None) -> dict[str, dict[str, Any]]:
    r = api.ci.get("/api/v1/cabling", params={"rack": rack} if rack else None)
    assert r.status_code == 200, r.text
    return {p["machine"]: p for p in r.json()["ports"]}


def test_reports_give_verdicts_and_events_only_on_change(
    api: Api, services: Services, lab: dict[str, tuple[str, str]]
) -> None:
    inventory(api, lab, "vm1", [neighbour("vm1", "swp1")])
    inventory(api, lab, "vm2", [])
    # An older agent: lldpcli's summary, naming only the interface.
    inventory(api, lab, "vm3", [{"interface": "eth0", "chassis": "lab1-sw1", "port": "swp3"}])
    seen = ports(api)
    assert {n: p["result"] for n, p in seen.items()} == {"vm1": "pass", "vm2": "n/a", "vm3": "pass"}
    vm1 = seen["vm1"]
    assert (vm1["expected_switch"], vm1["expected_port"]) == ("lab1-sw1", "swp1")
    assert (vm1["seen_system_name"], vm1["seen_chassis_id"], vm1["seen_port_id"]) == (
        "lab1-sw1", SW_MAC, "swp1",
    )  # fmt: skip
    assert vm1["seen_at"] and vm1["mac"] == MACS["vm1"] and vm1["swapped_with"] is None
    assert seen["vm2"]["reason"] == "no LLDP neighbour seen" and seen["vm2"]["seen_at"] is None
    nic = api.ci.get("/api/v1/machines/vm1").json()["nics"][0]
    assert nic["cabling"] == "pass" and nic["lldp"]["pvid"] == 100
    assert nic["cabling_detail"]["matched_by"] == {"switch": "system_name", "port": "port_id"}
    assert [e.event for e in cabling_events(services, "vm1")] == ["cabling_pass"]

    inventory(api, lab, "vm1", [neighbour("vm1", "swp1", ttl=90)])  # same verdict
    assert [e.event for e in cabling_events(services, "vm1")] == ["cabling_pass"]
    inventory(api, lab, "vm1", [neighbour("vm1", "swp4")])  # recabled to a free port
    events = cabling_events(services, "vm1")
    assert [e.event for e in events] == ["cabling_pass", "cabling_fail"]
    assert events[-1].details["expected"] == {"switch": "lab1-sw1", "port": "swp1"}
    assert events[-1].details["actual"]["port"] == "swp4"
    assert events[-1].message == "eth0: fail (expected lab1-sw1/swp1, saw lab1-sw1/swp4)"
    # warn (the default) records only: no hold.
    assert api.ci.get("/api/v1/machines/vm1").json()["hold_reason"] == ""
    metrics = api.client.get("/metrics").text
    assert "provisiond_cabling_failing_ports 1.0" in metrics
    assert 'provisiond_cabling_ports{result="pass"} 1.0' in metrics


def test_a_swap_holds_both_machines_until_it_is_mended(
    api: Api, services: Services, lab: dict[str, tuple[str, str]]
) -> None:
    services.settings.cabling_policy = "hold"
    add_image(services.db)
    inventory(api, lab, "vm1", [neighbour("vm1", "swp2")])
    first = ports(api)["vm1"]
    assert first["result"] == "fail" and first["planned_for"] == "vm2 eth0"
    assert first["swapped_with"] is None  # vm2 has not reported yet
    inventory(api, lab, "vm2", [neighbour("vm2", "swp1")])
    seen = ports(api)
    assert seen["vm1"]["swapped_with"] == "vm2 eth0" and seen["vm2"]["swapped_with"] == "vm1 eth0"
    r = api.ci.get("/api/v1/cabling")
    assert [f["kind"] for f in r.json()["findings"]] == ["swap"]
    reason = "cabling: eth0 expected lab1-sw1/swp1, saw lab1-sw1/swp2 (swapped with vm2 eth0)"
    vm1 = api.ci.get("/api/v1/machines/vm1").json()
    assert (vm1["state"], vm1["hold_reason"]) == ("available", reason)
    assert [e.event for e in cabling_events(services, "vm1")] == [
        "cabling_fail", "hold_set", "cabling_fail", "hold_set",
    ]  # fmt: skip

    body = {"image": "debian-12", "ssh_keys": [KEY], "constraints": {"names": ["vm1", "vm2"]}}
    r = api.ci.post("/api/v1/allocations", json=body)
    assert r.status_code == 422, r.text
    assert reason in r.json()["error"]["message"]
    assert "provisiond cabling" in r.json()["error"]["hint"]

    # Nothing heard (a pulled cable, a quiet switch) proves nothing: the hold stays.
    inventory(api, lab, "vm1", [])
    assert ports(api)["vm1"]["result"] == "n/a"
    assert api.ci.get("/api/v1/machines/vm1").json()["hold_reason"].startswith("cabling: ")
    inventory(api, lab, "vm1", [neighbour("vm1", "swp1")])
    assert api.ci.get("/api/v1/machines/vm1").json()["hold_reason"] == ""
    # vm2's side is checked again with vm1's report: no longer a swap, still wrong.
    vm2 = ports(api)["vm2"]
    assert vm2["result"] == "fail" and vm2["swapped_with"] is None
    assert api.ci.get("/api/v1/machines/vm2").json()["hold_reason"].startswith("cabling: ")
    r = api.ci.post("/api/v1/allocations", json=body)
    assert r.status_code in (201, 202), r.text
    assert r.json()["machine"] == "vm1"


def test_a_hold_set_by_someone_else_is_left_alone(
    api: Api, services: Services, lab: dict[str, tuple[str, str]]
) -> None:
    services.settings.cabling_policy = "hold"
    with services.db.transaction() as s:
        m = s.exec(select(Machine).where(Machine.name == "vm1")).one()
        m.hold_reason = "power: over budget"
    inventory(api, lab, "vm1", [neighbour("vm1", "swp1")])
    inventory(api, lab, "vm1", [neighbour("vm1", "swp3")])
    assert api.ci.get("/api/v1/machines/vm1").json()["hold_reason"] == "power: over budget"


def test_bad_lldp_entries_are_refused_with_an_event(
    api: Api, services: Services, lab: dict[str, tuple[str, str]]
) -> None:
    bad: list[Any] = [  # (a non-object entry is refused by the report's schema: a 422)
        {"interface": "eth0", "system_name": ["x"]},
        {"interface": "eth0", "port_id": "p" * 5000},
        {"interface": "eth0", "vlans": [{"id": "ten"}]},
        {"interface": "eth0", "ttl": 10**30},
        {"interface": "eth0", "system_name": "nul\x00"},
    ]
    inventory(api, lab, "vm1", [*bad, neighbour("vm1", "swp1")])
    refused = [e for e in cabling_events(services, "vm1") if e.event == "lldp_refused"]
    assert len(refused) == 1 and refused[0].details["count"] == len(bad)
    assert ports(api)["vm1"]["result"] == "pass"
    # Only bad entries: nothing is stored, the verdict is n/a.
    inventory(api, lab, "vm1", bad)
    assert ports(api)["vm1"]["result"] == "n/a"


def test_check_on_demand_by_rack_and_roles(
    api: Api, services: Services, lab: dict[str, tuple[str, str]]
) -> None:
    inventory(api, lab, "vm1", [neighbour("vm1", "swp1")])
    assert api.ci.post("/api/v1/cabling/check").status_code == 403
    r = api.operator.post("/api/v1/cabling/check", params={"rack": "nope"})
    assert r.status_code == 404 and "rack" in r.json()["error"]["message"]
    # The plan changes (inventory apply, no check yet): the verdict stays until a check.
    doc = json.loads(json.dumps(LAB))
    doc["machines"][0]["nics"][0]["switch_port"] = "lab1-sw1/swp4"
    r = api.operator.post("/api/v1/inventory/apply", json={"yaml": json.dumps(doc)})
    assert r.status_code == 200, r.text
    assert api.ci.get("/api/v1/machines/vm1").json()["nics"][0]["cabling"] == "pass"
    r = api.operator.post("/api/v1/cabling/check", params={"rack": "lab1"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["counts"] == {"pass": 0, "fail": 1, "n/a": 2} and body["policy"] == "warn"
    assert api.ci.get("/api/v1/machines/vm1").json()["nics"][0]["cabling"] == "fail"
    assert cabling_events(services, "vm1")[-1].actor == "token:test-operator"


def test_topology_round_trip_and_bad_files(api: Api, services: Services, lab: Any) -> None:
    r = api.ci.get("/api/v1/cabling/topology.dot")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/vnd.graphviz")
    dot = r.text
    assert '  "lab1-sw1":"swp1" -- "vm1":"eth0";\n' in dot and dot.rstrip().endswith("}")
    swapped = (
        "graph G {\n"
        '  "lab1-sw1":"swp2" -- "vm1":"eth0";\n'
        '  vm2:"52:54:00:00:00:02" -- "lab1-sw1":swp1 [color=red];\n'
        '  "lab1-sw1":"swp49" -- "lab1-sw1":"swp1";\n'.replace("swp49", "swp4")
        + "}\n"
    )
    headers = {"Content-Type": "text/vnd.graphviz"}
    assert api.operator.put("/api/v1/cabling/topology.dot", content=dot,
                            headers=headers).status_code == 403  # fmt: skip
    r = api.admin.put("/api/v1/cabling/topology.dot", content=swapped, headers=headers)
    assert r.status_code == 200, r.text
    assert r.json()["changed"] == [
        "vm1 eth0: lab1-sw1/swp1 -> lab1-sw1/swp2", "vm2 eth0: lab1-sw1/swp2 -> lab1-sw1/swp1",
    ]  # fmt: skip
    assert len(r.json()["skipped"]) == 1
    assert api.ci.get("/api/v1/machines/vm1").json()["nics"][0]["switch_port"] == "lab1-sw1/swp2"
    again = api.admin.put("/api/v1/cabling/topology.dot", content=dot, headers=headers)
    assert again.json()["changed"][0] == "vm1 eth0: lab1-sw1/swp2 -> lab1-sw1/swp1"
    assert api.ci.get("/api/v1/cabling/topology.dot").text == dot
    same = api.admin.put("/api/v1/cabling/topology.dot", content=dot, headers=headers).json()
    assert (same["changed"], same["unchanged"]) == ([], 3)

    bad = (
        "graph G {\n"
        '  "lab1-sw1":"swp9" -- "vm1":"eth0";\n'
        '  "lab1-sw1":"swp2" -- "vm9":"eth0";\n'
        '  "lab1-sw1":"swp3" -- "vm3":"eth7";\n'
        '  "lab1-sw1":"swp1" -> "vm1":"eth0";\n'
        '  "lab1-sw1":"swp4" -- "vm1":"eth0";\n'
        '  "lab1-sw1":"swp1" -- "vm2":"eth0";\n'
        "}\n"
    )
    r = api.admin.put("/api/v1/cabling/topology.dot", content=bad, headers=headers)
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert [p["line"] for p in error["problems"]] == [5]  # parse errors come first
    assert "->" in error["problems"][0]["message"] and "--" in error["hint"]
    r = api.admin.put("/api/v1/cabling/topology.dot", content=bad.replace("->", "--"),
                      headers=headers)  # fmt: skip
    problems = r.json()["error"]["problems"]
    assert [p["line"] for p in problems] == [2, 3, 4, 6, 7]
    assert "switch lab1-sw1 has no port 'swp9' (did you mean swp" in problems[0]["message"]
    assert "no machine named 'vm9' (did you mean vm" in problems[1]["message"]
    assert "machine vm3 has no NIC 'eth7'" in problems[2]["message"]
    assert "vm1 eth0 is also wired on line 5" in problems[3]["message"]
    assert "port lab1-sw1/swp1 is also given on line 5" in problems[4]["message"]
    assert api.ci.get("/api/v1/cabling/topology.dot").text == dot  # nothing written
    r = api.admin.put("/api/v1/cabling/topology.dot", content=b"\xff\xfe", headers=headers)
    assert r.status_code == 400 and "UTF-8" in r.json()["error"]["message"]


def test_switch_chassis_mac_in_the_api_and_the_inventory(api: Api, lab: Any) -> None:
    assert api.ci.get("/api/v1/switches/lab1-sw1").json()["chassis_mac"] == SW_MAC
    r = api.operator.post("/api/v1/switches", json={"name": "sw9", "chassis_mac": "AABB.CCDD.EEFF"})
    assert r.status_code == 201 and r.json()["chassis_mac"] == "aa:bb:cc:dd:ee:ff"
    r = api.operator.patch("/api/v1/switches/sw9", json={"chassis_mac": "not-a-mac"})
    assert r.status_code == 422
    r = api.operator.patch("/api/v1/switches/sw9", json={"chassis_mac": ""})
    assert r.status_code == 200 and r.json()["chassis_mac"] == ""
    exported = api.operator.get("/api/v1/inventory/export").text
    assert f"chassis_mac: {SW_MAC}" in exported or f"chassis_mac: '{SW_MAC}'" in exported
    doc = {"version": 1, "switches": [{"name": "sw8", "chassis_mac": "zz"}]}
    r = api.operator.post("/api/v1/inventory/plan", json={"yaml": json.dumps(doc)})
    assert r.status_code == 422 and "MAC" in r.text
