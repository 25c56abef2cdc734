from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import Api

S, P, M = "/api/v1/switches", "/api/v1/pdus", "/api/v1/machines"


def ok(r: Any, status: int = 200) -> Any:
    assert r.status_code == status, r.text
    return r.json() if status != 204 else None


def error(r: Any, status: int) -> dict[str, Any]:
    assert r.status_code == status, r.text
    err: dict[str, Any] = r.json()["error"]
    assert err["message"] and err["hint"], err
    return err


def mapped(outlets: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Outlets as number and machine (they also show the state and watts last read)."""
    return [{"number": o["number"], "machine": o["machine"]} for o in outlets]


def setup_rack(api: Api) -> None:
    ok(api.operator.post("/api/v1/racks", json={"name": "r1", "u_height": 12}), 201)


def test_switch_crud_with_ports_and_placement(api: Api) -> None:
    setup_rack(api)
    body = ok(
        api.operator.post(
            S,
            json={
                "name": "tor1",
                "rack": "r1",
                "u_position": 12,
                "vendor": "Arista",
                "mgmt_address": "10.0.0.2",
                "ports": [{"name": "Ethernet1", "vlan": 100}, {"name": "Ethernet2"}],
            },
        ),
        201,
    )
    assert body["rack"] == "r1" and [p["name"] for p in body["ports"]] == ["Ethernet1", "Ethernet2"]
    assert body["ports"][0] == {
        "name": "Ethernet1",
        "vlan": 100,
        "description": "",
        "machine": None,
        "mac": None,
    }
    assert [s["name"] for s in ok(api.ci.get(S))] == ["tor1"]
    err = error(api.operator.post(M, json={"name": "m1", "rack": "r1", "u_position": 12}), 409)
    assert "overlaps switch tor1" in err["message"] and "U1-U11" in err["hint"]
    err = error(api.operator.post(S, json={"name": "tor2", "rack": "r1", "u_position": 13}), 422)
    assert "does not fit" in err["message"]
    body = ok(api.operator.patch(f"{S}/tor1", json={"name": "tor-a", "u_position": 11}))
    assert body["name"] == "tor-a" and body["u_position"] == 11
    ok(api.operator.post(M, json={"name": "m1", "rack": "r1", "u_position": 12}), 201)
    error(api.operator.patch(f"{S}/tor-a", json={"u_height": 2}), 409)
    assert ok(api.operator.delete(f"{S}/tor-a"), 204) is None
    error(api.ci.get(f"{S}/tor-a"), 404)


def test_switch_bad_input(api: Api) -> None:
    for body in (
        {"name": "s", "ports": [{"name": "1"}, {"name": "1"}]},
        {"name": "s", "ports": [{"name": "a/b"}]},
        {"name": "s", "ports": [{"name": "1", "vlan": 5000}]},
        {"name": "s", "u_position": 3},
        {"name": "s", "mgmt_address": "http://x y"},
    ):
        error(api.operator.post(S, json=body), 422)
    ok(api.operator.post(S, json={"name": "s"}), 201)
    error(api.operator.post(S, json={"name": "s"}), 409)
    error(api.operator.patch(f"{S}/s", json={"ports": None}), 422)
    assert api.ci.post(S, json={"name": "t"}).status_code == 403


def test_switch_port_wired_once(api: Api) -> None:
    ok(api.operator.post(S, json={"name": "sw", "ports": [{"name": "1"}, {"name": "2"}]}), 201)
    nic = {"mac": "aa:00:00:00:00:01", "switch_port": "sw/1"}
    ok(api.operator.post(M, json={"name": "m1", "nics": [nic]}), 201)
    port = ok(api.ci.get(f"{S}/sw"))["ports"][0]
    assert (port["machine"], port["mac"]) == ("m1", "aa:00:00:00:00:01")
    nic2 = {"mac": "aa:00:00:00:00:02", "switch_port": "sw/1"}
    err = error(api.operator.post(M, json={"name": "m2", "nics": [nic2]}), 409)
    assert "already wired to machine m1" in err["message"] and "m1" in err["hint"]
    err = error(
        api.operator.post(M, json={"name": "m2", "nics": [{**nic2, "switch_port": "sw/9"}]}), 422
    )
    assert err["problems"][0]["path"] == "nics.0.switch_port"
    err = error(
        api.operator.post(M, json={"name": "m2", "nics": [{**nic2, "switch_port": "x/1"}]}), 422
    )
    assert "POST /api/v1/switches" in err["hint"]
    two = [nic2 | {"switch_port": "sw/2"}, {"mac": "aa:00:00:00:00:03", "switch_port": "sw/2"}]
    error(api.operator.post(M, json={"name": "m2", "nics": two}), 422)
    # Re-sending m1's own wiring is fine; moving it frees the old port.
    ok(api.operator.patch(f"{M}/m1", json={"nics": [nic]}))
    ok(api.operator.patch(f"{M}/m1", json={"nics": [nic | {"switch_port": "sw/2"}]}))
    ok(api.operator.post(M, json={"name": "m2", "nics": [nic2]}), 201)
    # A wired port cannot be dropped from the switch, nor the switch deleted.
    err = error(api.operator.patch(f"{S}/sw", json={"ports": [{"name": "1"}]}), 409)
    assert "sw/2" in err["message"] and "m1" in err["message"]
    body = ok(
        api.operator.patch(
            f"{S}/sw", json={"ports": [{"name": "1"}, {"name": "2", "vlan": 7}, {"name": "3"}]}
        )
    )
    assert [(p["name"], p["vlan"], p["machine"]) for p in body["ports"]] == [
        ("1", None, "m2"),
        ("2", 7, "m1"),
        ("3", None, None),
    ]
    err = error(api.operator.delete(f"{S}/sw"), 409)
    assert "m1, m2" in err["message"]
    # Renaming the switch keeps the wiring, and NICs show the new name.
    ok(api.operator.patch(f"{S}/sw", json={"name": "leaf1"}))
    assert ok(api.ci.get(f"{M}/m1"))["nics"][0]["switch_port"] == "leaf1/2"


def test_pdu_crud_and_outlets(api: Api) -> None:
    setup_rack(api)
    for name in ("m1", "m2"):
        ok(api.operator.post(M, json={"name": name}), 201)
    body = ok(
        api.operator.post(
            P,
            json={
                "name": "pdu-a",
                "rack": "r1",
                "capacity_watts": 7400,
                "outlets": [
                    {"number": 1, "machine": "m1"},
                    {"number": 2, "machine": "m1"},
                    {"number": 3},
                ],
            },
        ),
        201,
    )
    assert body["u_height"] == 0 and body["rack"] == "r1"
    assert mapped(body["outlets"]) == [
        {"number": 1, "machine": "m1"},
        {"number": 2, "machine": "m1"},
        {"number": 3, "machine": None},
    ]
    assert body["outlets"][0]["state"] == "unknown" and body["outlets"][0]["power_watts"] is None
    # A 0U PDU takes no U space.
    ok(api.operator.post(M, json={"name": "m3", "rack": "r1", "u_position": 1}), 201)
    err = error(
        api.operator.patch(f"{P}/pdu-a", json={"outlets": [{"number": 1, "machine": "m2"}]}), 409
    )
    assert "already feeds machine m1" in err["message"] and "null" in err["hint"]
    ok(
        api.operator.patch(
            f"{P}/pdu-a", json={"outlets": [{"number": 1}, {"number": 2, "machine": "m1"}]}
        )
    )
    body = ok(
        api.operator.patch(
            f"{P}/pdu-a",
            json={"outlets": [{"number": 1, "machine": "m2"}, {"number": 2, "machine": "m1"}]},
        )
    )
    assert mapped(body["outlets"]) == [
        {"number": 1, "machine": "m2"},
        {"number": 2, "machine": "m1"},
    ]
    err = error(
        api.operator.post(P, json={"name": "p2", "outlets": [{"number": 1, "machine": "ghost"}]}),
        422,
    )
    assert err["problems"][0]["path"] == "outlets.0.machine"
    error(api.operator.post(P, json={"name": "p2", "outlets": [{"number": 1}, {"number": 1}]}), 422)
    error(api.operator.post(P, json={"name": "p2", "outlets": [{"number": 0}]}), 422)
    err = error(api.operator.delete(f"{P}/pdu-a"), 409)
    assert "outlet(s) 1, 2" in err["message"]
    # Deleting a machine frees its outlets.
    ok(api.operator.delete(f"{M}/m2"), 204)
    assert mapped(ok(api.ci.get(f"{P}/pdu-a"))["outlets"])[0] == {"number": 1, "machine": None}
    ok(api.operator.patch(f"{P}/pdu-a", json={"outlets": []}))
    ok(api.operator.delete(f"{P}/pdu-a"), 204)
    assert ok(api.ci.get(P)) == []


def test_pdu_placement(api: Api) -> None:
    setup_rack(api)
    ok(api.operator.post(P, json={"name": "p1", "rack": "r1", "u_position": 1, "u_height": 1}), 201)
    err = error(api.operator.post(M, json={"name": "m1", "rack": "r1", "u_position": 1}), 409)
    assert "overlaps pdu p1" in err["message"]
    ok(api.operator.patch(f"{P}/p1", json={"u_height": 0}))
    ok(api.operator.post(M, json={"name": "m1", "rack": "r1", "u_position": 1}), 201)
    error(api.operator.patch(f"{P}/p1", json={"u_height": 1}), 409)
    assert api.ci.delete(f"{P}/p1").status_code == 403


@pytest.mark.parametrize(
    "path,create,field",
    [
        ("/api/v1/racks", {}, "name"),
        ("/api/v1/racks", {}, "u_height"),
        (S, {}, "ports"),
        (S, {}, "vendor"),
        (P, {}, "outlets"),
        (P, {}, "u_height"),
        (M, {}, "arch"),
        (M, {}, "tags"),
        ("/api/v1/images", {"kernel": "k", "initrd": "i"}, "initrd"),
        ("/api/v1/credentials", {"username": "u", "password": "p"}, "username"),
    ],
)
def test_null_for_a_required_field_is_422(
    api: Api, path: str, create: dict[str, Any], field: str
) -> None:
    ok(api.operator.post(path, json={"name": "x", **create}), 201)
    err = error(api.operator.patch(f"{path}/x", json={field: None}), 422)
    assert field in err["message"]
    assert api.operator.get(f"{path}/x").status_code == 200
