"""The allocation API: matching, the fair queue, idempotency, quota, ownership, leases, waiting.

The deploy engine does not run here; tests move machines as it would (booted,
ready, fail, done) with :mod:`tests.support.allocations`, then run the queue job's
pass (:func:`run_queue`) as the scheduler would.
"""

from __future__ import annotations

import json
import threading
import time
from datetime import datetime, timedelta
from typing import Any

import pytest
from sqlmodel import col, select

from provisiond.allocations import watch
from provisiond.allocations.queue import run_queue
from provisiond.auth import create_token
from provisiond.config import Settings
from provisiond.container import Services
from provisiond.db import Database
from provisiond.lifecycle import Ev
from provisiond.models import Allocation, Deployment, Event, Machine, utcnow
from provisiond.secrets import SecretBox
from tests.conftest import Api
from tests.support.allocations import (
    KEY,
    add_image,
    add_machines,
    add_rack,
    fire,
    fleet,
    machine_state,
)

URL = "/api/v1/allocations"


def body(image: str = "debian-12", lease: Any = "1h", **constraints: Any) -> dict[str, Any]:
    return {"image": image, "ssh_keys": [KEY], "lease": lease, "constraints": constraints}


def post(api: Api, role: str = "ci", **kw: Any) -> Any:
    headers = kw.pop("headers", {})
    return api.as_(role).post(URL, json=body(**kw), headers=headers)


def _at(value: str) -> datetime:
    """A time as the API writes it (ISO 8601, UTC)."""
    return datetime.fromisoformat(value)


@pytest.fixture
def catalog(services: Services) -> Services:
    """Three machines that differ in every constraint, and an image per arch."""
    db = services.db
    add_image(db)
    add_image(db, "debian-12-arm", arch="aarch64")
    r1, r2 = add_rack(db, "r1", site="dc1"), add_rack(db, "r2", site="dc2")
    add_machines(
        db,
        [
            dict(name="small", cpus=2, ram_mib=4096, disks=[{"size_gb": 100}], tags=["ci"],
                 rack_id=r1),
            dict(name="big", cpus=8, ram_mib=32768, disks=[{"size_bytes": 2 * 10**12}],
                 tags=["ci", "gpu"], rack_id=r2),
            dict(name="arm", arch="aarch64", cpus=4, ram_mib=8192, rack_id=r1),
        ],
    )  # fmt: skip
    return services


@pytest.mark.parametrize(
    ("request_", "machine"),
    [
        ({}, "small"),  # best fit: the smallest machine that fits
        ({"min_cpus": 6}, "big"),
        ({"min_ram_mib": 16000}, "big"),
        ({"min_disk_gb": 500}, "big"),
        ({"tags": ["gpu"]}, "big"),
        ({"tags": ["ci", "gpu"]}, "big"),
        ({"rack": "r2"}, "big"),
        ({"site": "dc2"}, "big"),
        ({"names": ["big", "nope"]}, "big"),
        ({"image": "debian-12-arm"}, "arm"),
        ({"image": "debian-12-arm", "arch": "aarch64", "rack": "r1"}, "arm"),
    ],
)
def test_matches_every_constraint_kind(
    api: Api, catalog: Services, request_: dict[str, Any], machine: str
) -> None:
    response = post(api, **request_)
    assert response.status_code == 201, response.text
    out = response.json()
    assert out["state"] == "deploying"
    assert out["machine"] == machine
    assert machine_state(catalog.db, machine) == "deploying"
    with catalog.db.read_session() as session:
        rows = session.exec(select(Event).where(Event.machine_name == machine)).all()
        deployment = session.exec(select(Deployment)).one()
    # The claim is one move, available -> deploying, with one event naming the deploy.
    claim = rows[-1]
    assert (claim.event, claim.from_state, claim.to_state) == ("deploy", "available", "deploying")
    assert claim.details == {
        "allocation": out["id"],
        "deployment": deployment.uuid,
        "image_id": deployment.image_id,
        "attempt": 1,
    }
    assert claim.allocation_id == deployment.allocation_id
    assert deployment.allocation_id is not None and deployment.kind == "deploy"
    assert deployment.ssh_public_key == ""  # made by the engine's first step, not the request


@pytest.mark.parametrize(
    ("request_", "path", "words"),
    [
        ({"min_cpus": 64}, "constraints.min_cpus", "at least 64 CPUs"),
        ({"min_ram_mib": 10**7}, "constraints.min_ram_mib", "MiB of RAM"),
        ({"min_disk_gb": 9000}, "constraints.min_disk_gb", "9000 GB"),
        ({"tags": ["fpga"]}, "constraints.tags", "fpga"),
        ({"names": ["ghost"]}, "constraints.names", "ghost"),
        ({"rack": "r9"}, "constraints.rack", "r9"),
        ({"site": "mars"}, "constraints.site", "mars"),
        ({"rack": "r1", "tags": ["gpu"]}, "constraints.tags", "together with rack r1"),
    ],
)
def test_impossible_constraints_are_422_naming_the_constraint(
    api: Api, catalog: Services, request_: dict[str, Any], path: str, words: str
) -> None:
    # A retired giant does not count.
    add_machines(catalog.db, [dict(name="old", cpus=128, tags=["fpga"])], state="retired")
    response = post(api, **request_)
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["problems"][0]["path"] == path
    assert words in error["message"]
    assert error["hint"]
    with catalog.db.read_session() as session:
        assert session.exec(select(Allocation)).all() == []


def test_uninspected_hardware_may_fit_so_the_request_waits(api: Api, catalog: Services) -> None:
    add_machines(catalog.db, [dict(name="new", cpus=None, ram_mib=None)], state="enrolled")
    response = post(api, min_cpus=64)
    assert response.status_code == 201, response.text
    assert response.json()["state"] == "pending"


@pytest.mark.parametrize(
    ("payload", "path", "words"),
    [
        (body(image="ghost"), "image", "no image named 'ghost'"),
        ({**body(), "ssh_keys": ["not a key"]}, "ssh_keys.0", "OpenSSH public key"),
        ({**body(), "ssh_keys": ["ssh-rsa " + KEY.split()[1]]}, "ssh_keys.0", "does not encode"),
        ({**body(), "ssh_keys": []}, "ssh_keys", ""),
        (body(lease="2 weeks"), "lease", "not a duration"),
        (body(lease="25h"), "lease", "ci maximum 86400s"),
        (body(lease=0), "lease", "at least 1 second"),
        (body(arch="aarch64"), "constraints.arch", "is for x86_64"),
        ({**body(), "color": "red"}, "color", ""),
    ],
)
def test_bad_requests_are_422_with_a_hint(
    api: Api, catalog: Services, payload: dict[str, Any], path: str, words: str
) -> None:
    response = api.ci.post(URL, json=payload)
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["problems"][0]["path"] == path
    assert words in error["message"]
    assert error["hint"]


def test_lease_forms_and_role_maximum(api: Api, catalog: Services) -> None:
    assert post(api, lease="1h30m").json()["lease_s"] == 5400
    assert post(api, lease=7200).json()["lease_s"] == 7200
    # An operator may ask for more than a ci token.
    assert post(api, role="operator", lease="3d").status_code == 201
    assert post(api, role="operator", lease="8d").status_code == 422


def test_fair_queue_oldest_first_without_head_of_line_blocking(api: Api, catalog: Services) -> None:
    db = catalog.db
    hold_small = post(api, names=["small"]).json()
    hold_big = post(api, names=["big"]).json()
    a = post(api, min_cpus=8).json()  # only "big" fits A
    b = post(api).json()  # anything x86_64 fits B
    c = post(api, min_cpus=8).json()
    assert [x["state"] for x in (a, b, c)] == ["pending"] * 3

    # "small" comes back: A cannot use it, so B (later) gets it.
    api.ci.delete(f"{URL}/{hold_small['id']}")
    fire(db, "small", Ev.DONE)  # the engine finished the wipe
    report = run_queue(catalog)
    assert report.matched == [b["id"]]
    with db.read_session() as session:  # the queue's claim: one move, its event names B
        claim = session.exec(
            select(Event).where(Event.machine_name == "small").order_by(col(Event.id).desc())
        ).first()
        b_id = session.exec(select(Allocation.id).where(Allocation.uuid == b["id"])).one()
    assert claim is not None and (claim.event, claim.to_state) == ("deploy", "deploying")
    assert claim.allocation_id == b_id and claim.details["attempt"] == 1

    # "big" comes back: A is older than C, so A gets it.
    api.ci.delete(f"{URL}/{hold_big['id']}")
    fire(db, "big", Ev.DONE)
    assert run_queue(catalog).matched == [a["id"]]

    # A new machine and a new request D: C is older and waiting, so D queues behind it
    # instead of taking the machine on the request path.
    add_machines(db, [dict(name="big2", cpus=8, ram_mib=32768)])
    d = post(api).json()
    assert d["state"] == "pending"
    assert run_queue(catalog).matched == [c["id"]]
    got = {x: api.ci.get(f"{URL}/{x}").json()["machine"] for x in (a["id"], b["id"], c["id"])}
    assert got == {a["id"]: "big", b["id"]: "small", c["id"]: "big2"}
    assert api.ci.get(f"{URL}/{d['id']}").json()["state"] == "pending"


def test_idempotency_replays(api: Api, catalog: Services) -> None:
    headers = {"Idempotency-Key": "job-42"}
    first = post(api, headers=headers)
    assert first.status_code == 201
    again = post(api, headers=headers)
    assert again.status_code == 200
    assert again.json()["id"] == first.json()["id"]
    other = post(api, headers=headers, min_cpus=2)
    assert other.status_code == 409
    assert first.json()["id"] in other.json()["error"]["hint"]
    # Keys are per token; no key means a new allocation every time.
    assert post(api, role="operator", headers=headers).json()["id"] != first.json()["id"]
    assert post(api).json()["id"] != first.json()["id"]
    with catalog.db.read_session() as session:
        assert len(session.exec(select(Allocation)).all()) == 3


def test_a_replay_at_quota_answers_its_allocation_not_429(api: Api, catalog: Services) -> None:
    """The key is checked by the INSERT, after the quota: a retried request whose first
    try made the allocation gets it back even when the token is now at its quota."""
    with catalog.db.transaction() as session:
        _, token = create_token(session, name="ci-q1", role="ci", quota_machines=1)
    headers = {"Authorization": f"Bearer {token}", "Idempotency-Key": "run-7"}
    first = api.client.post(URL, json=body(), headers=headers)
    assert first.status_code == 201, first.text
    again = api.client.post(URL, json=body(), headers=headers)
    assert again.status_code == 200, again.text
    assert again.json()["id"] == first.json()["id"]
    other = api.client.post(URL, json=body(), headers={**headers, "Idempotency-Key": "run-8"})
    assert other.status_code == 429


def test_a_deploy_left_running_is_superseded_not_a_500(api: Api, catalog: Services) -> None:
    """An available machine should have no running deploy; if a defect left one, the
    one-running-deploy index stops a duplicate and the request retries superseding it."""
    with catalog.db.transaction() as session:
        machines = session.exec(select(Machine).where(Machine.state == "available")).all()
        for machine in machines:
            assert machine.id is not None
            session.add(Deployment(machine_id=machine.id, kind="inspect"))
    response = post(api)
    assert response.status_code == 201, response.text
    with catalog.db.read_session() as session:
        claimed = session.exec(select(Machine).where(Machine.name == response.json()["machine"]))
        machine_id = claimed.one().id
        rows = session.exec(select(Deployment).where(Deployment.machine_id == machine_id)).all()
    assert sorted((r.kind, r.outcome) for r in rows) == [("deploy", ""), ("inspect", "superseded")]


def test_quota_is_429_with_usage_in_the_hint(api: Api, catalog: Services) -> None:
    with catalog.db.transaction() as session:
        _, token = create_token(session, name="ci-quota", role="ci", quota_machines=2)
    headers = {"Authorization": f"Bearer {token}"}
    ids = [api.client.post(URL, json=body(), headers=headers).json()["id"] for _ in range(2)]
    over = api.client.post(URL, json=body(), headers=headers)
    assert over.status_code == 429
    assert over.json()["error"]["code"] == "quota_exceeded"
    assert "in use: 2 of 2 (0 pending, 2 deploying, 0 ready)" in over.json()["error"]["hint"]
    api.client.delete(f"{URL}/{ids[0]}", headers=headers)
    assert api.client.post(URL, json=body(), headers=headers).status_code == 201


def test_ownership(api: Api, catalog: Services) -> None:
    mine = post(api).json()
    with catalog.db.transaction() as session:
        _, other = create_token(session, name="ci-other", role="ci")
    stranger = {"Authorization": f"Bearer {other}"}
    for method, path in (
        ("GET", f"{URL}/{mine['id']}"),
        ("DELETE", f"{URL}/{mine['id']}"),
        ("GET", f"{URL}/{mine['id']}/events"),
    ):
        assert api.client.request(method, path, headers=stranger).status_code == 404
    renew = api.client.post(f"{URL}/{mine['id']}/renew", json={"lease": 60}, headers=stranger)
    assert renew.status_code == 404
    assert api.client.get(URL, headers=stranger).json() == []
    forbidden = api.client.get(URL, params={"owner": "test-ci"}, headers=stranger)
    assert forbidden.status_code == 403
    assert api.anonymous.get(URL).status_code == 401
    # Operators see and release everyone's.
    listed = api.operator.get(URL, params={"owner": "test-ci"}).json()
    assert [x["id"] for x in listed] == [mine["id"]]
    assert api.operator.delete(f"{URL}/{mine['id']}").json()["state"] == "released"


def _make_ready(services: Services, name: str, address: str = "") -> None:
    fire(services.db, name, Ev.BOOTED)
    with services.db.transaction() as session:
        machine = session.exec(select(Machine).where(Machine.name == name)).one()
        machine.ssh_host_key = KEY.rsplit(" ", 1)[0]
        session.add(machine)
        deployment = session.exec(
            select(Deployment).where(Deployment.machine_id == machine.id)
        ).one()
        deployment.address = address
        session.add(deployment)
    fire(services.db, name, Ev.READY)


def test_ready_then_release(api: Api, catalog: Services) -> None:
    out = post(api, names=["small"], lease="2h").json()
    _make_ready(catalog, "small", address="10.9.0.7")
    before = utcnow()
    assert run_queue(catalog).ready == [out["id"]]
    after = utcnow()
    ready = api.ci.get(f"{URL}/{out['id']}").json()
    assert ready["state"] == "ready"
    assert ready["address"] == "10.9.0.7"
    assert ready["ssh_user"] == "root"
    assert ready["host_key_fingerprint"].startswith("SHA256:")
    # The lease counts from readiness (the queue pass), however long the test took.
    assert before + timedelta(hours=2) <= _at(ready["expires_at"]) <= after + timedelta(hours=2)

    released = api.ci.delete(f"{URL}/{out['id']}")
    assert released.status_code == 200
    assert released.json()["state"] == "released"
    assert machine_state(catalog.db, "small") == "releasing"
    assert api.ci.delete(f"{URL}/{out['id']}").json()["state"] == "released"  # idempotent
    assert run_queue(catalog).changed == []


def test_deploy_failure_retries_other_machines_then_fails(api: Api, services: Services) -> None:
    add_image(services.db)
    add_machines(services.db, fleet(4, cpus=4))
    out = post(api).json()
    tried = []
    for attempt in range(1, 4):
        current = api.ci.get(f"{URL}/{out['id']}").json()
        assert current["state"] == "deploying"
        assert current["attempts"] == attempt
        tried.append(current["machine"])
        fire(services.db, current["machine"], Ev.FAIL, reason=f"no DHCP {attempt}")
        run_queue(services)
        # The broken machine goes to be wiped and made available again.
        assert machine_state(services.db, current["machine"]) == "releasing"
    final = api.ci.get(f"{URL}/{out['id']}").json()
    assert final["state"] == "failed"
    assert len(set(tried)) == 3
    for attempt, name in enumerate(tried, 1):
        assert f"try {attempt} on {name}: no DHCP {attempt}" in final["failure_reason"]
    untouched = {f"m{i:04d}" for i in range(4)} - set(tried)
    assert [machine_state(services.db, n) for n in untouched] == ["available"]


def test_lease_expiry_releases_even_across_a_restart(
    api: Api, catalog: Services, settings: Settings
) -> None:
    out = post(api, names=["small"], lease=30).json()
    _make_ready(catalog, "small")
    before = utcnow()
    run_queue(catalog)
    ends = _at(api.ci.get(f"{URL}/{out['id']}").json()["expires_at"])
    assert before + timedelta(seconds=30) <= ends <= utcnow() + timedelta(seconds=30)
    # A pending request's bound is its lease too, from its creation (after ``ends - 30``).
    waiting = post(api, names=["small"], lease=60).json()
    assert waiting["state"] == "pending"
    waiting_ends = _at(waiting["expires_at"])
    assert waiting_ends == _at(waiting["created_at"]) + timedelta(seconds=60)

    # Passes run at chosen times, not "now plus a margin": a slow test run moves nothing.
    assert run_queue(catalog, now=ends - timedelta(seconds=10)).expired == []
    # "Restart": a fresh Services on the same database finds the lease over.
    fresh = Services(
        settings=settings,
        db=Database(catalog.db.url),
        secrets=SecretBox.from_key_file(settings.key_file),
        instance="restarted",
    )
    try:
        report = run_queue(fresh, now=ends + timedelta(seconds=1))
    finally:
        fresh.close()
    assert report.expired == [out["id"]]
    expired = api.ci.get(f"{URL}/{out['id']}").json()
    assert expired["state"] == "expired"
    assert expired["released_at"] is not None
    assert machine_state(catalog.db, "small") == "releasing"
    with catalog.db.read_session() as session:
        kinds = session.exec(
            select(Event.event).where(Event.kind == "allocation", Event.machine_name == "small")
        ).all()
    assert "expire" in kinds
    assert run_queue(catalog, now=waiting_ends + timedelta(seconds=1)).expired == [waiting["id"]]


def test_renew(api: Api, catalog: Services) -> None:
    out = post(api, lease="1h").json()
    renewed = api.ci.post(f"{URL}/{out['id']}/renew", json={"lease": "20h"})
    assert renewed.status_code == 200
    assert renewed.json()["lease_s"] == 20 * 3600
    assert renewed.json()["expires_at"] > out["expires_at"]
    too_long = api.ci.post(f"{URL}/{out['id']}/renew", json={"lease": "2d"})
    assert too_long.status_code == 422
    assert "renew" in too_long.json()["error"]["hint"]
    api.ci.delete(f"{URL}/{out['id']}")
    assert api.ci.post(f"{URL}/{out['id']}/renew", json={"lease": 60}).status_code == 409


def test_list_filters(api: Api, catalog: Services) -> None:
    ready = post(api, names=["small"]).json()
    pending = post(api, names=["small"]).json()
    assert pending["state"] == "pending"
    assert [x["id"] for x in api.ci.get(URL).json()] == [pending["id"], ready["id"]]
    assert [x["id"] for x in api.ci.get(URL, params={"state": "pending"}).json()] == [pending["id"]]
    assert api.ci.get(URL, params={"state": "bogus"}).status_code == 422


def test_long_poll_returns_on_change_not_on_a_timer(
    api: Api, catalog: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The database re-read is pushed past every bound below, so only the wait's own
    # deadline or a change notice can end a long-poll here.
    monkeypatch.setattr(watch, "RECHECK_S", 300.0)
    first_read, read = threading.Event(), watch.read

    def read_and_tell(*args: Any) -> Any:
        out = read(*args)
        first_read.set()
        return out

    monkeypatch.setattr(watch, "read", read_and_tell)
    out = post(api, names=["small"]).json()
    assert out["state"] == "deploying"

    started = time.monotonic()
    unchanged = api.ci.get(f"{URL}/{out['id']}", params={"wait": 0.5})
    assert unchanged.json()["state"] == "deploying"
    assert 0.4 < time.monotonic() - started < 60  # its deadline, not a re-read (300 s)

    first_read.clear()

    def engine() -> None:
        first_read.wait(30)  # the long-poll has read "deploying" and waits for news
        _make_ready(catalog, "small")
        run_queue(catalog)

    worker = threading.Thread(target=engine)
    worker.start()
    started = time.monotonic()
    try:
        changed = api.ci.get(f"{URL}/{out['id']}", params={"wait": 120, "since_state": "deploying"})
    finally:
        worker.join(timeout=30)
    assert changed.json()["state"] == "ready"
    # Woken by the change notice: long before its deadline (120 s) or a re-read (300 s).
    assert time.monotonic() - started < 60
    bad = api.ci.get(f"{URL}/{out['id']}", params={"wait": 1, "since_state": "bogus"})
    assert bad.status_code == 422


def test_event_stream(api: Api, catalog: Services, monkeypatch: pytest.MonkeyPatch) -> None:
    first_snapshot, snapshot = threading.Event(), watch._snapshot

    def snapshot_and_tell(*args: Any) -> Any:
        out = snapshot(*args)
        first_snapshot.set()
        return out

    monkeypatch.setattr(watch, "_snapshot", snapshot_and_tell)
    out = post(api, names=["small"]).json()

    def release() -> None:
        first_snapshot.wait(30)  # the stream has the allocation as it was: the release is news
        api.ci.delete(f"{URL}/{out['id']}")

    worker = threading.Thread(target=release)
    worker.start()
    headers = {"Authorization": api.ci._headers["Authorization"]}
    lines: list[str] = []
    try:
        with api.client.stream(
            "GET", f"{URL}/{out['id']}/events", params={"duration": 20}, headers=headers
        ) as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            lines = [line for line in response.iter_lines() if line]
    finally:
        worker.join(timeout=30)
    events = [line.removeprefix("event: ") for line in lines if line.startswith("event: ")]
    assert events[0] == "log"
    assert events.count("allocation") == 2  # deploying, then released
    assert events[-1] == "end"
    assert lines[-1] == 'data: {"state": "released", "reason": "final"}'
    with catalog.db.read_session() as session:
        live = session.exec(
            select(Allocation).where(col(Allocation.state).in_(("deploying", "ready")))
        ).all()
    assert live == []


def test_event_stream_finds_its_events_behind_many_other_allocations(
    api: Api, catalog: Services
) -> None:
    """The stream used to read the first 200 allocation events of anyone and filter them
    in Python, so an allocation made after 200 others' events saw none of its own."""
    from provisiond import events
    from provisiond.events import EventKind

    out = post(api, names=["small"]).json()
    with catalog.db.transaction() as session:
        events.record_many(
            session,
            [
                (EventKind.ALLOCATION, "queued", {"allocation_id": 10_000 + i, "message": "other"})
                for i in range(300)
            ],
        )
    api.ci.delete(f"{URL}/{out['id']}")
    headers = {"Authorization": api.ci._headers["Authorization"]}
    with api.client.stream(
        "GET", f"{URL}/{out['id']}/events", params={"duration": 5}, headers=headers
    ) as response:
        lines = [line for line in response.iter_lines() if line]
    logged = [json.loads(line[6:]) for i, line in enumerate(lines) if lines[i - 1] == "event: log"]
    assert all(row["message"] != "other" for row in logged)
    assert any(row["kind"] == "allocation" and row["event"] == "release" for row in logged), logged
