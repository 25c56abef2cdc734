"""Tokens may expire: set at creation, listed, refused after (401 token_expired), audited.

On SQLite and PostgreSQL (the ``api`` fixture runs on both).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlmodel import select

from provisiond.auth import create_token
from provisiond.container import Services
from provisiond.models import ApiToken, Event, utcnow
from tests.conftest import Api

pytestmark = pytest.mark.postgres

T = "/api/v1/tokens"


def _at(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def test_expiry_is_set_at_creation_and_listed(api: Api) -> None:
    before = utcnow()
    r = api.admin.post(T, json={"name": "ci-90d", "role": "ci", "expires": "90d"})
    assert r.status_code == 201, r.text
    expires = _at(r.json()["expires_at"])
    assert before + timedelta(days=90) <= expires <= utcnow() + timedelta(days=90)
    r = api.admin.post(T, json={"name": "ci-date", "expires": "2099-01-31"})
    assert r.status_code == 201, r.text
    r = api.admin.post(T, json={"name": "ci-mix", "expires": "1w2d12h"})
    assert r.status_code == 201, r.text
    listed = {t["name"]: t["expires_at"] for t in api.admin.get(T).json()}
    assert _at(listed["ci-90d"]) == expires
    assert _at(listed["ci-date"]) == datetime(2099, 1, 31, tzinfo=UTC)
    assert (
        timedelta(days=9, hours=11) < _at(listed["ci-mix"]) - before < timedelta(days=9, hours=13)
    )
    assert listed["test-ci"] is None  # no expiry: never expires
    assert _at(api.admin.get(f"{T}/ci-90d").json()["expires_at"]) == expires
    audit = api.admin.get("/api/v1/events", params={"kind": "audit"}).json()
    assert any(e["message"].startswith("created ci token ci-90d, expires ") for e in audit)


@pytest.mark.parametrize(
    ("value", "why"),
    [
        ("9x", "is neither a duration nor an ISO 8601 date"),
        ("next week", "is neither a duration nor an ISO 8601 date"),
        ("90", "is neither a duration nor an ISO 8601 date"),
        ("0d", "is not in the future"),
        ("2001-01-01", "is not in the future"),
        ("99999999999999w", "is too far in the future"),
    ],
)
def test_bad_expiry_is_a_422_with_a_hint(api: Api, value: str, why: str) -> None:
    r = api.admin.post(T, json={"name": "bad", "expires": value})
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error["code"] == "validation_failed"
    assert error["message"].startswith(f"expires: {value!r} {why}"), error
    assert "90d" in error["hint"] and "2027-01-31" in error["hint"]
    assert api.admin.get(f"{T}/bad").status_code == 404


def _token(services: Services, name: str, expires_at: datetime | None) -> str:
    with services.db.transaction() as session:
        _, clear = create_token(session, name=name, role="operator", expires_at=expires_at)
    return clear


def _expired_events(services: Services) -> list[Event]:
    with services.db.read_session() as session:
        return list(session.exec(select(Event).where(Event.event == "token_expired_use")).all())


def test_expired_token_is_refused_and_audited_once_per_flush(api: Api, services: Services) -> None:
    valid = {"Authorization": f"Bearer {_token(services, 'later', utcnow() + timedelta(hours=1))}"}
    assert api.anonymous.get("/api/v1/machines", headers=valid).status_code == 200
    clear = _token(services, "old", utcnow() - timedelta(seconds=1))
    expired = {"Authorization": f"Bearer {clear}"}

    for _ in range(25):  # a client looping on its expired token
        r = api.anonymous.get("/api/v1/machines", headers=expired)
        assert r.status_code == 401, r.text
    error = r.json()["error"]
    assert error["code"] == "token_expired" and "'old' expired at" in error["message"]
    assert "ask an admin for a new token" in error["hint"]
    assert (
        api.anonymous.post("/api/v1/racks", json={"name": "r"}, headers=expired).status_code == 401
    )

    assert _expired_events(services) == []  # nothing written per request
    services.token_use.flush(services.db)  # what the scheduler does every minute
    (event,) = _expired_events(services)
    assert event.kind == "audit" and event.actor == "token:old"
    assert event.details["count"] == 26 and "refused 26 time(s)" in event.message
    services.token_use.flush(services.db)
    assert len(_expired_events(services)) == 1  # no new use, no new event

    api.anonymous.get("/api/v1/machines", headers=expired)
    services.token_use.flush(services.db)
    assert [e.details["count"] for e in _expired_events(services)] == [26, 1]
    with services.db.read_session() as session:
        old = session.exec(select(ApiToken).where(ApiToken.name == "old")).one()
    assert old.last_used_at is None  # a refused use is not a use
    listed = {t["name"]: t for t in api.admin.get(T).json()}
    assert listed["old"]["expires_at"] is not None and listed["later"]["last_used_at"] is not None
