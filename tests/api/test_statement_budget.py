"""SQL statements per hot-path request, against a budget that may only go down.

Each budget is what the path costs today (measured on SQLite and PostgreSQL; the
larger of the two). A change that adds a statement to a hot path fails here and has
to say why in this file; a change that removes some should lower the budget. The
statements are counted on every lane's engine of the daemon's database, BEGIN and
COMMIT included.
"""

from __future__ import annotations

from provisiond.container import Services
from tests.api.test_agent_api import make_machine
from tests.conftest import Api
from tests.support.allocations import KEY, add_image, add_machines
from tests.support.statements import counting

#: path -> most SQL statements one request may run
BUDGET = {
    "allocate": 8,  # issue 13: was 21 (claim, insert, deploy row, events: one each)
    "release": 8,  # issue 13: was 19 (one read, three updates, one events insert)
    "heartbeat": 3,
    "ipxe_resting": 2,  # read first: no write transaction (was 3, BEGIN IMMEDIATE)
}


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
