from __future__ import annotations

from sqlmodel import select

from provisiond.container import Services
from provisiond.models import CredentialSet
from tests.conftest import Api

C = "/api/v1/credentials"


def test_credential_crud_never_shows_the_password(api: Api, services: Services) -> None:
    r = api.operator.post(C, json={"name": "dc1-default", "username": "ADMIN", "password": "pa55"})
    assert r.status_code == 201, r.text
    body = r.json()
    assert body == {**body, "name": "dc1-default", "username": "ADMIN", "password_set": True}
    assert set(body) == {"name", "username", "password_set", "created_at"}
    assert api.operator.get(f"{C}/dc1-default").json() == body
    assert api.operator.get(C).json() == [body]
    r = api.operator.patch(f"{C}/dc1-default", json={"password": "rotated"})
    assert r.status_code == 200 and r.json()["username"] == "ADMIN"
    with services.db.read_session() as s:
        row = s.exec(select(CredentialSet)).one()
    assert services.secrets.decrypt(row.secret_encrypted) == "rotated"
    assert "rotated" not in row.secret_encrypted
    assert api.operator.delete(f"{C}/dc1-default").status_code == 204
    assert api.operator.get(f"{C}/dc1-default").status_code == 404


def test_credential_rules(api: Api) -> None:
    assert api.ci.get(C).status_code == 403
    assert api.ci.post(C, json={"name": "x", "username": "u", "password": "p"}).status_code == 403
    for body in ({"name": "x", "username": "u"}, {"name": "x", "username": "u", "password": ""}):
        r = api.operator.post(C, json=body)
        assert r.status_code == 422 and r.json()["error"]["hint"], r.text
    api.operator.post(C, json={"name": "x", "username": "u", "password": "p"})
    assert (
        api.operator.post(C, json={"name": "x", "username": "v", "password": "q"}).status_code
        == 409
    )
    assert api.operator.patch(f"{C}/x", json={"password": None}).status_code == 422


def test_credential_in_use_by_a_bmc(api: Api) -> None:
    api.operator.post(C, json={"name": "dc1", "username": "ADMIN", "password": "p"})
    bmc = {"address": "10.0.0.7", "credential_set": "dc1"}
    r = api.operator.post("/api/v1/machines", json={"name": "m1", "bmc": bmc})
    assert r.status_code == 201, r.text
    assert r.json()["bmc"]["credential_set"] == "dc1" and r.json()["bmc"]["password_set"] is False
    r = api.operator.delete(f"{C}/dc1")
    assert r.status_code == 409 and "m1" in r.json()["error"]["message"]
    assert "credential_set" in r.json()["error"]["hint"]
    r = api.operator.patch("/api/v1/machines/m1", json={"bmc": {"credential_set": None}})
    assert r.json()["bmc"]["credential_set"] is None
    assert api.operator.delete(f"{C}/dc1").status_code == 204
