from __future__ import annotations

from tests.conftest import Api


def test_rack_crud_round_trip(api: Api) -> None:
    r = api.operator.post("/api/v1/racks", json={"name": "r1", "site": "dc1", "u_height": 42})
    assert r.status_code == 201, r.text
    assert api.ci.get("/api/v1/racks/r1").json()["site"] == "dc1"
    r = api.operator.patch("/api/v1/racks/r1", json={"u_height": 48})
    assert r.status_code == 200 and r.json()["u_height"] == 48
    assert [x["name"] for x in api.ci.get("/api/v1/racks").json()] == ["r1"]
    assert api.operator.delete("/api/v1/racks/r1").status_code == 204
    r = api.ci.get("/api/v1/racks/r1")
    assert r.status_code == 404
    assert r.json()["error"]["code"] == "not_found"


def test_rack_bad_input_is_4xx_with_hint(api: Api) -> None:
    r = api.operator.post("/api/v1/racks", json={"name": "../x", "u_height": 0})
    assert r.status_code == 422
    err = r.json()["error"]
    assert err["code"] == "validation_failed" and err["hint"]
    assert {p["path"] for p in err["problems"]} == {"name", "u_height"}
    api.operator.post("/api/v1/racks", json={"name": "r1"})
    r = api.operator.post("/api/v1/racks", json={"name": "r1"})
    assert r.status_code == 409 and "exists" in r.json()["error"]["message"]
    r = api.operator.post(
        "/api/v1/racks", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert r.status_code == 422
