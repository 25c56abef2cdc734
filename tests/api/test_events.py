from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from typer.testing import CliRunner

from provisiond.cli import app as cli_app
from provisiond.container import Services
from provisiond.models import Event
from tests.api.test_machines import live  # noqa: F401  (fixture)
from tests.conftest import Api

E = "/api/v1/events"
T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


def seed(services: Services, count: int, **fields: Any) -> None:
    """``count`` events one minute apart from T0, messages "0", "1", ..."""
    with services.db.transaction() as s:
        s.add_all(
            Event(at=T0 + timedelta(minutes=i), message=str(i), **{"kind": "boot", **fields})
            for i in range(count)
        )


def messages(api: Api, **params: Any) -> list[str]:
    r = api.ci.get(E, params=params)
    assert r.status_code == 200, r.text
    return [e["message"] for e in r.json()]


def test_filters_order_and_window(api: Api, services: Services) -> None:
    seed(services, 5, machine_name="n1", event="dhcp")
    seed(services, 2, machine_name="n2", kind="power", event="on")
    assert messages(api, machine="n1") == ["4", "3", "2", "1", "0"]
    assert messages(api, machine="n1", order="asc", limit=2) == ["0", "1"]
    assert messages(api, kind="power") == ["1", "0"]
    assert messages(api, event="on", machine="n1") == []
    assert messages(api, machine="ghost") == []
    window = {"machine": "n1", "since": "2024-05-01T12:01:00Z", "until": "2024-05-01T12:03:00Z"}
    assert messages(api, **window) == ["3", "2", "1"]
    # Offsets are honoured, and a naive time is UTC.
    assert messages(api, machine="n1", since="2024-05-01T14:03:00+02:00") == ["4", "3"]
    assert messages(api, machine="n1", until="2024-05-01T12:00:00") == ["0"]
    first = api.ci.get(E, params={"machine": "n2"}).json()[0]
    assert first["kind"] == "power" and first["at"] == "2024-05-01T12:01:00Z"


def test_limit_default_and_max(api: Api, services: Services) -> None:
    seed(services, 1005)
    assert len(messages(api)) == 100
    assert messages(api)[0] == "1004"
    assert len(messages(api, limit=1000)) == 1000
    assert messages(api, limit=1) == ["1004"]


@pytest.mark.parametrize(
    "params,path",
    [
        ({"limit": "0"}, "limit"),
        ({"limit": "1001"}, "limit"),
        ({"limit": "ten"}, "limit"),
        ({"since": "yesterday"}, "since"),
        ({"until": "2024-13-01"}, "until"),
        ({"since": "9999-12-31T23:59:59-01:00"}, "since"),
        ({"order": "sideways"}, "order"),
        ({"since": "2024-05-02", "until": "2024-05-01"}, "since"),
        ({"kind": "a\x00b"}, "kind"),
    ],
)
def test_bad_filters_are_422_with_hint(api: Api, params: dict[str, str], path: str) -> None:
    r = api.ci.get(E, params=params)
    assert r.status_code == 422, r.text
    err = r.json()["error"]
    assert err["hint"] and any(p["path"].split(".")[-1] == path for p in err["problems"])


def test_events_need_a_token(api: Api) -> None:
    assert api.anonymous.get(E).status_code == 401
    assert api.ci.post(E, json={}).status_code == 405


def test_cli_events(api: Api, services: Services, live: dict[str, str]) -> None:  # noqa: F811
    seed(services, 3, machine_name="n1", event="dhcp", from_state="a", to_state="b")
    seed(services, 1, machine_name="n2")
    runner = CliRunner()
    r = runner.invoke(cli_app, ["events", "--machine", "n1", "--limit", "2", "--json"], env=live)
    assert r.exit_code == 0, r.output
    assert [e["message"] for e in json.loads(r.stdout)] == ["2", "1"]
    r = runner.invoke(cli_app, ["events", "--kind", "boot"], env=live)
    assert r.exit_code == 0, r.output
    assert "4 event(s)" in r.stdout and "a -> b" in r.stdout and "n2" in r.stdout
    r = runner.invoke(cli_app, ["events", "--limit", "5000"], env=live)
    assert r.exit_code == 1 and "limit" in r.stderr and "hint:" in r.stderr


def test_a_new_machine_does_not_inherit_a_deleted_machines_events(
    api: Api, services: Services
) -> None:
    # SQLite hands a deleted row's id to the next insert; the audit log keeps the
    # deleted machine's events under that id, and they must not show up as the new
    # machine's history.
    assert api.operator.post("/api/v1/machines", json={"name": "old"}).status_code == 201
    assert api.operator.delete("/api/v1/machines/old").status_code == 204
    assert api.operator.post("/api/v1/machines", json={"name": "new"}).status_code == 201
    events = api.ci.get(E, params={"machine": "new"}).json()
    assert events and {e["machine"] for e in events} == {"new"}, events
    assert "old" in {e["machine"] for e in api.ci.get(E, params={"machine": "old"}).json()}
