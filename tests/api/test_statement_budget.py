"""SQL statements per hot-path request, against a budget that may only go down.

Each budget is what the path costs today (measured on SQLite and PostgreSQL; the
larger of the two). A change that adds a statement to a hot path fails here and has
to say why in this file; a change that removes some should lower the budget. The
statements are counted on every lane's engine of the daemon's database, BEGIN and
COMMIT included.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import event

from provisiond.container import Services
from provisiond.db import Database
from tests.api.test_agent_api import make_machine
from tests.conftest import Api
from tests.support.allocations import KEY, add_image, add_machines

#: path -> most SQL statements one request may run
BUDGET = {
    "allocate": 8,  # issue 13: was 21 (claim, insert, deploy row, events: one each)
    "release": 8,  # issue 13: was 19 (one read, three updates, one events insert)
    "heartbeat": 3,
    "ipxe_resting": 2,  # read first: no write transaction (was 3, BEGIN IMMEDIATE)
}


@contextmanager
def counting(db: Database) -> Iterator[list[str]]:
    seen: list[str] = []

    def note(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        words = statement.split()
        seen.append(" ".join(words[:2]) if words[:1] == ["BEGIN"] else (words or [""])[0].upper())

    # every lane's engine, made now if not yet (the request picks its lane's)
    db.session().close()
    from provisiond import lanes

    for lane in lanes.Lane:
        with lanes.lane(lane):
            db.read_session().close()
    engines = db.engines()
    for engine in engines:
        event.listen(engine, "before_cursor_execute", note)
    try:
        yield seen
    finally:
        for engine in engines:
            event.remove(engine, "before_cursor_execute", note)


def _check(name: str, seen: list[str]) -> None:
    print(f"{name}: {len(seen)} statements {seen}")
    assert len(seen) <= BUDGET[name], f"{name}: {len(seen)} statements, budget {BUDGET[name]}"


def test_allocate_and_release(api: Api, services: Services) -> None:
    add_image(services.db)
    add_machines(services.db, [{"name": f"m{i}"} for i in range(5)])
    body = {"image": "debian-12", "ssh_keys": [KEY]}
    api.ci.post("/api/v1/allocations", json=body)  # warm-up: caches, lazily made engines
    with counting(services.db) as seen:
        r = api.ci.post("/api/v1/allocations", json=body)
    assert r.status_code in (201, 202), r.text
    _check("allocate", seen)
    with counting(services.db) as seen:
        r = api.ci.delete(f"/api/v1/allocations/{r.json()['id']}")
    assert r.status_code in (200, 202, 204), r.text
    _check("release", seen)


def test_agent_heartbeat(api: Api, services: Services) -> None:
    uuid, token = make_machine(services, "n1", "active")
    headers = {"Authorization": f"Bearer {token}"}
    url = f"/api/v1/agent/{uuid}/heartbeat"
    api.client.post(url, headers=headers, json={"agent_version": "0.1.0"})
    with counting(services.db) as seen:
        r = api.client.post(url, headers=headers, json={"agent_version": "0.1.0"})
    assert r.status_code == 200, r.text
    _check("heartbeat", seen)


def test_ipxe_script_of_a_resting_machine(api: Api, services: Services) -> None:
    """A resting machine's script takes no write slot (a boot storm must not queue)."""
    make_machine(services, "n1", "available", macs=("52:54:00:aa:bb:01",))
    api.client.get("/boot/52:54:00:aa:bb:01.ipxe")
    with counting(services.db) as seen:
        r = api.client.get("/boot/52:54:00:aa:bb:01.ipxe")
    assert r.status_code == 200, r.text
    _check("ipxe_resting", seen)
    assert "BEGIN IMMEDIATE" not in seen
