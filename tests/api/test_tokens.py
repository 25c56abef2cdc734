from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlmodel import select

from provisiond.container import Services
from provisiond.models import Allocation, ApiToken, Machine
from tests.conftest import Api

T = "/api/v1/tokens"


def test_token_is_shown_once_and_works(api: Api, services: Services) -> None:
    r = api.admin.post(T, json={"name": "ci-runner-1", "role": "ci", "quota_machines": 4})
    assert r.status_code == 201, r.text
    body = r.json()
    clear = body["token"]
    assert clear.startswith("pvd_") and body["prefix"] == clear[:8]
    assert (body["name"], body["role"], body["quota_machines"]) == ("ci-runner-1", "ci", 4)
    listed = api.admin.get(T).json()
    assert [t["name"] for t in listed] == ["ci-runner-1", "test-admin", "test-ci", "test-operator"]
    assert set(listed[0]) == {
        "name",
        "role",
        "prefix",
        "quota_machines",
        "created_at",
        "last_used_at",
        "expires_at",
    }
    assert (
        clear not in api.admin.get(T).text and clear not in api.admin.get(f"{T}/ci-runner-1").text
    )
    with services.db.read_session() as s:
        stored = s.exec(select(ApiToken).where(ApiToken.name == "ci-runner-1")).one()
    assert stored.token_hash not in api.admin.get(T).text
    headers = {"Authorization": f"Bearer {clear}"}
    assert api.anonymous.get("/api/v1/machines", headers=headers).status_code == 200
    assert (
        api.anonymous.post("/api/v1/racks", json={"name": "r"}, headers=headers).status_code == 403
    )
    # Revoked: the same token is refused at once.
    assert api.admin.delete(f"{T}/ci-runner-1").status_code == 204
    r = api.anonymous.get("/api/v1/machines", headers=headers)
    assert r.status_code == 401 and r.json()["error"]["hint"]
    assert api.admin.get(f"{T}/ci-runner-1").status_code == 404
    audit = api.ci.get("/api/v1/events", params={"kind": "audit"}).json()
    assert [e["event"] for e in audit] == ["token_delete", "token_create"]
    assert clear not in str(audit)


def test_token_rules(api: Api) -> None:
    assert api.operator.post(T, json={"name": "x", "role": "admin"}).status_code == 403
    assert api.operator.get(T).status_code == 403
    assert api.operator.delete(f"{T}/test-ci").status_code == 403
    for body in (
        {"name": "x", "role": "root"},
        {"name": "", "role": "ci"},
        {"name": "x", "quota_machines": -1},
    ):
        r = api.admin.post(T, json=body)
        assert r.status_code == 422 and r.json()["error"]["hint"], r.text
    r = api.admin.post(T, json={"name": "test-ci"})
    assert r.status_code == 409 and r.json()["error"]["hint"]
    r = api.admin.delete(f"{T}/test-admin")
    assert r.status_code == 409 and "last admin" in r.json()["error"]["message"]
    assert api.admin.post(T, json={"name": "admin2", "role": "admin"}).status_code == 201
    assert api.admin.delete(f"{T}/test-admin").status_code == 204
    assert api.admin.get(T).status_code == 401  # that was our own token


def test_token_holding_machines_is_not_deleted(api: Api, services: Services) -> None:
    api.operator.post("/api/v1/machines", json={"name": "m1"})
    with services.db.transaction() as s:
        token = s.exec(select(ApiToken).where(ApiToken.name == "test-ci")).one()
        machine = s.exec(select(Machine)).one()
        assert token.id is not None
        s.add(Allocation(owner_token_id=token.id, machine_id=machine.id, state="active"))
    r = api.admin.delete(f"{T}/test-ci")
    assert r.status_code == 409 and "release" in r.json()["error"]["hint"]
    assert api.ci.get("/api/v1/machines").status_code == 200


def _last_used(api: Api, services: Services) -> dict[str, datetime | None]:
    services.token_use.flush(services.db)  # what the scheduler does every minute
    return {
        t["name"]: datetime.fromisoformat(t["last_used_at"]) if t["last_used_at"] else None
        for t in api.admin.get(T).json()
    }


def test_last_used_is_recorded_to_the_minute(api: Api, services: Services) -> None:
    assert _last_used(api, services)["test-ci"] is None  # never used yet
    started = datetime.now(UTC)
    assert api.ci.get("/api/v1/machines").status_code == 200
    first = _last_used(api, services)["test-ci"]
    assert first is not None and abs((first - started).total_seconds()) < 30
    assert api.ci.get("/api/v1/machines").status_code == 200
    assert services.token_use.flush(services.db) == 0  # recent enough: nothing noted
    assert _last_used(api, services)["test-ci"] == first
    with services.db.transaction() as s:  # as if last used two hours ago
        row = s.exec(select(ApiToken).where(ApiToken.name == "test-ci")).one()
        row.last_used_at = first - timedelta(hours=2)
        s.add(row)
    assert api.ci.get("/api/v1/machines").status_code == 200
    refreshed = _last_used(api, services)["test-ci"]
    assert refreshed is not None and refreshed >= first
    assert api.anonymous.get("/api/v1/machines").status_code == 401
    assert _last_used(api, services)["test-operator"] is None  # only the token that was used
