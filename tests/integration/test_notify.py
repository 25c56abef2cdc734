"""Wake-ups across daemons: NOTIFY at commit, LISTEN per daemon (provisiond.cluster.notify).

Two "daemons" in this process: two :class:`Database` objects on one PostgreSQL
database, each with its own Services, hubs and listener. Nothing in-process links
them, so a waiter on A can only be woken by B's NOTIFY, through PostgreSQL.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import update
from sqlmodel import col, select

from provisiond import lifecycle
from provisiond.allocations import watch
from provisiond.allocations.leases import hub_for
from provisiond.allocations.queue import run_queue
from provisiond.api import create_app
from provisiond.auth import create_token
from provisiond.cluster import notify
from provisiond.config import load_settings
from provisiond.console import hub as console_hub
from provisiond.container import Services
from provisiond.db import Database
from provisiond.lifecycle import Ev
from provisiond.models import Allocation, Machine
from provisiond.pg_session import libpq_url
from provisiond.secrets import SecretBox
from tests.conftest import _database
from tests.support import pg
from tests.support.allocations import KEY, add_image, add_machines, fire, fleet

URL = "/api/v1/allocations"


def _services(db: Database, data: Path, name: str) -> Services:
    settings = load_settings(None, data_dir=data, database_url=db.url)
    return Services(settings=settings, db=db,
                    secrets=SecretBox.from_key_file(settings.key_file), instance=name)  # fmt: skip


class Daemons:
    def __init__(self, a: Services, b: Services) -> None:
        self.a, self.b = a, b
        self.listeners: list[notify.Listener] = []

    def listen(self, db: Database, on_notify: Callable[[dict[str, Any]], None]) -> None:
        listener = notify.Listener(db, on_notify)
        listener.start()
        self.listeners.append(listener)
        assert listener.listening.wait(10), "the listener did not connect"


@pytest.fixture
def daemons(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Daemons]:
    gen = _database("postgres", request, tmp_path)
    db_a = next(gen)
    db_b = Database(db_a.url)
    a, b = _services(db_a, tmp_path / "a", "a"), _services(db_b, tmp_path / "b", "b")
    pair = Daemons(a, b)
    try:
        for services in (a, b):
            assert notify.install(services.db)
            pair.listen(services.db, lambda note, s=services: notify.wake(s, note))
        yield pair
    finally:
        for listener in pair.listeners:
            listener.stop()
        notify.uninstall(db_a)
        b.close()
        a.close()
        next(gen, None)


def _token(db: Database, name: str = "ci") -> str:
    with db.transaction() as session:
        return create_token(session, name=name, role="operator")[1]


def _request(client: TestClient, token: str, **constraints: Any) -> dict[str, Any]:
    spec = {"image": "debian-12", "ssh_keys": [KEY], "lease": "1h", "constraints": constraints}
    out = client.post(URL, json=spec, headers={"Authorization": f"Bearer {token}"})
    assert out.status_code == 201, out.text
    return dict(out.json())


def _active(db: Database, name: str) -> None:
    """What the deploy engine would do: the machine boots its image and is ready."""
    fire(db, name, Ev.BOOTED)
    with db.transaction() as session:
        machine = session.exec(select(Machine).where(Machine.name == name)).one()
        machine.ssh_host_key = KEY.rsplit(" ", 1)[0]
        session.add(machine)
    fire(db, name, Ev.READY)


def test_a_waiter_on_a_wakes_when_b_readies_the_allocation(daemons: Daemons) -> None:
    a, b = daemons.a, daemons.b
    add_image(b.db)
    add_machines(b.db, fleet(1))
    token = _token(b.db)
    with TestClient(create_app(b)) as client_b:
        out = _request(client_b, token)
    assert out["state"] == "deploying"
    _active(b.db, out["machine"])

    async def wait_on_a() -> tuple[float, float]:
        woken = hub_for(a.db).subscribe(out["id"])
        started = threading.Event()
        times: dict[str, float] = {}

        def daemon_b() -> None:
            started.wait(10)
            times["before"] = time.monotonic()
            assert run_queue(b).ready == [out["id"]]  # B's queue readies it and commits
            times["after"] = time.monotonic()

        worker = threading.Thread(target=daemon_b)
        worker.start()
        try:
            started.set()
            await asyncio.wait_for(woken.wait(), 5)
            woke = time.monotonic()
        finally:
            hub_for(a.db).unsubscribe(out["id"], woken)
            await asyncio.to_thread(worker.join, 10)
        return woke - times["before"], times["after"] - times["before"]

    latency, pass_s = asyncio.run(wait_on_a())
    print(f"\nA woken {latency * 1000:.1f} ms after B's queue pass began "
          f"(the pass itself took {pass_s * 1000:.1f} ms)")  # fmt: skip
    assert latency < 0.1


def test_a_long_poll_on_a_returns_when_b_readies(
    daemons: Daemons, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The whole path: ``GET ?wait=`` on A's API; B's queue pass readies the allocation."""
    monkeypatch.setattr(watch, "RECHECK_S", 300.0)  # only a wake-up can end the wait early
    a, b = daemons.a, daemons.b
    add_image(a.db)
    add_machines(a.db, fleet(1))
    token = _token(a.db)
    with TestClient(create_app(a)) as client_a:
        out = _request(client_a, token)
        _active(b.db, out["machine"])
        times: dict[str, float] = {}

        def daemon_b() -> None:
            time.sleep(0.5)  # the long-poll has read "deploying" and waits
            times["before"] = time.monotonic()
            run_queue(b)

        worker = threading.Thread(target=daemon_b)
        worker.start()
        try:
            got = client_a.get(
                f"{URL}/{out['id']}",
                params={"wait": 30, "since_state": "deploying"},
                headers={"Authorization": f"Bearer {token}"},
            )
            returned = time.monotonic()
        finally:
            worker.join(10)
    assert got.json()["state"] == "ready"
    latency = returned - times["before"]
    print(f"\nlong-poll on A answered {latency * 1000:.1f} ms after B's queue pass began")
    assert latency < 0.1 + 0.1  # the wake-up, and A's re-read and HTTP answer


def test_queue_deploy_and_console_wake_ups_cross_daemons(
    daemons: Daemons, monkeypatch: pytest.MonkeyPatch
) -> None:
    a, b = daemons.a, daemons.b
    add_image(b.db)
    add_machines(b.db, fleet(1), state="enrolled")  # may fit once inspected
    token = _token(b.db)
    a.allocation_wakeup.clear()
    with TestClient(create_app(b)) as client_b:
        queued = _request(client_b, token)  # nothing fits yet: queued on B
    assert queued["state"] == "pending"
    assert a.allocation_wakeup.wait(2), "A's allocation queue (the leader) was not woken"

    a.deploy_wakeup.clear()
    fire(b.db, "m0000", Ev.INSPECT)  # a machine's state changes on B
    assert a.deploy_wakeup.wait(2), "A's deploy engine was not woken"

    monkeypatch.setattr(console_hub, "POLL_S", 60.0)  # only a poke reads the log in time

    async def console_on_a() -> list[dict[str, Any]]:
        hub = console_hub.hub_for(a)
        stream = hub.subscribe(1)
        try:
            for _ in range(50):  # the hub has read where the log ends
                if hub.last:
                    break
                await asyncio.sleep(0.05)
            await asyncio.to_thread(fire, b.db, "m0000", Ev.DONE)  # inspected on B
            return await asyncio.wait_for(stream.get(), 2)
        finally:
            hub.unsubscribe(stream)
            console_hub.forget(hub)

    rows = asyncio.run(console_on_a())
    assert [r["machine"] for r in rows] == ["m0000"]


def test_a_rolled_back_transaction_notifies_nobody(daemons: Daemons) -> None:
    b = daemons.b
    add_image(b.db)
    add_machines(b.db, fleet(1))
    seen: list[dict[str, Any]] = []
    daemons.listen(b.db, seen.append)

    class Undo(Exception):
        pass

    with pytest.raises(Undo), b.db.transaction() as session:
        machine = session.exec(select(Machine)).one()
        fire_state = machine.state
        lifecycle.advance(session, machine, Ev.MANAGE, actor="test")  # state, and an event
        session.execute(update(Machine).values(state="retired"))
        raise Undo
    fire(b.db, "m0000", Ev.MANAGE)  # committed after it: delivered in order
    for _ in range(100):
        if seen:
            break
        time.sleep(0.02)
    time.sleep(0.1)
    assert fire_state == "available"
    assert seen == [{"q": 1, "d": 1, "e": 1}]  # the committed one only


def test_payload_names_allocations_and_caps_them(daemons: Daemons) -> None:
    b = daemons.b
    add_image(b.db)
    add_machines(b.db, fleet(1), state="enrolled")
    token = _token(b.db)
    seen: list[dict[str, Any]] = []
    daemons.listen(b.db, seen.append)
    with TestClient(create_app(b)) as client_b:
        one = _request(client_b, token)
    # An UPDATE that is not by a loaded row's id names no allocation: "*" (any).
    with b.db.transaction() as session:
        session.execute(update(Allocation).where(col(Allocation.state) == "pending")
                        .values(failure_reason="x"))  # fmt: skip
    for _ in range(100):
        if len(seen) >= 2:
            break
        time.sleep(0.02)
    assert seen[0]["a"] == [one["id"]] and seen[0]["q"] == 1
    assert seen[1] == {"a": "*", "q": 1}

    many = notify.Changes()
    many.uuids = {f"{i:032x}" for i in range(notify.MAX_UUIDS)}
    assert len(notify.payload(many)) < 8000
    assert json.loads(notify.payload(many))["a"] == sorted(many.uuids)
    many.uuids.add("f" * 32)
    assert json.loads(notify.payload(many)) == {"a": "*"}


def test_nothing_on_sqlite(sqlite_db: Database, tmp_path: Path) -> None:
    services = _services(sqlite_db, tmp_path / "s", "s")
    assert notify.start_listener(services) is None
    add_image(sqlite_db)  # and its commits send nothing (no pg_notify on SQLite)


@pytest.mark.slow
def test_the_listener_survives_a_postgresql_restart() -> None:
    if not pg.available():
        pytest.skip("PostgreSQL 15 is not installed")
    cluster = pg.start_cluster()
    try:
        db = Database(cluster.url())
        seen: list[dict[str, Any]] = []
        listener = notify.Listener(db, seen.append)
        listener.start()
        try:
            assert listener.listening.wait(10)
            cluster.restart()
            for _ in range(300):  # bounded: 30 s
                if listener.reconnects and listener.listening.is_set():
                    break
                time.sleep(0.1)
            assert listener.reconnects >= 1 and listener.listening.is_set()
            assert seen == [{"a": "*", "q": 1, "d": 1, "e": 1}]  # missed meanwhile: wake all
            with psycopg.connect(libpq_url(db.url), autocommit=True) as conn:
                conn.execute("SELECT pg_notify('provisiond', %s)", ('{"a":["after"]}',))
            for _ in range(100):
                if len(seen) > 1:
                    break
                time.sleep(0.02)
            assert seen[-1] == {"a": ["after"]}
        finally:
            listener.stop()
            db.dispose()
    finally:
        cluster.stop()


@pytest.mark.slow
def test_two_daemons_a_long_poll_on_one_wakes_when_the_other_readies(
    pg_server: str, tmp_path: Path
) -> None:
    """Real ``provisiond serve`` processes: the request and its long-poll go to the daemon
    that does not run the allocation queue; the machine turns active (as the agent would
    report it) in this process; the queue's daemon readies the allocation."""
    from provisiond.models import Bmc, Image
    from provisiond.rack.bmc_sim import BmcFarm
    from provisiond.rack.ipmi_faults import FaultRule
    from tests.support.cluster import running_cluster

    env = {"PROVISIOND_POWER_CALL_TIMEOUT_S": "60"}  # the deploy's power step hangs: no engine
    with (
        BmcFarm(count=1, faults=[FaultRule({"drop": 1.0})]) as farm,
        running_cluster(pg_server, tmp_path / "cluster", 2, env) as cluster,
    ):
        db = cluster.db()
        try:
            assert notify.install(db)  # this process writes like a third daemon
            seen: list[tuple[float, dict[str, Any]]] = []
            watcher = notify.Listener(db, lambda note: seen.append((time.monotonic(), note)))
            watcher.start()
            assert watcher.listening.wait(10)
            with db.transaction() as session:
                session.add(Image(name="debian-12", arch="x86_64", kernel="k", initrd="i"))
                machine = Machine(name="m0", arch="x86_64", cpus=4, ram_mib=8192)
                for ev in (Ev.ENROLL, Ev.INSPECT, Ev.DONE):
                    lifecycle.advance(session, machine, ev, actor="test")
                address, port = farm.endpoint(0)
                secret = cluster.secrets().encrypt("password")
                session.add(Bmc(machine_id=machine.id, address=address, port=port,
                                username="admin", secret_encrypted=secret))  # fmt: skip
            leader = wait_for_role(cluster)
            other = next(d for d in cluster.daemons if cluster.id_of(d) != leader)
            headers = {"Authorization": f"Bearer {cluster.admin_token}"}
            spec = {"image": "debian-12", "ssh_keys": [KEY], "lease": "1h"}
            made = httpx.post(f"{other.url}{URL}", json=spec, headers=headers, timeout=10)
            assert made.status_code == 201, made.text
            out = made.json()
            assert out["state"] == "deploying"
            times: dict[str, float] = {}

            def machine_reports_ready() -> None:
                time.sleep(1.0)  # the long-poll has read "deploying" and waits
                with db.transaction() as session:
                    row = session.exec(select(Machine).where(Machine.name == "m0")).one()
                    lifecycle.advance(session, row, Ev.BOOTED, actor="test")
                    row.ssh_host_key = KEY.rsplit(" ", 1)[0]
                    lifecycle.advance(session, row, Ev.READY, actor="test")
                times["active"] = time.monotonic()

            worker = threading.Thread(target=machine_reports_ready)
            worker.start()
            try:
                got = httpx.get(f"{other.url}{URL}/{out['id']}", headers=headers, timeout=40,
                                params={"wait": 30, "since_state": "deploying"})  # fmt: skip
                returned = time.monotonic()
            finally:
                worker.join(10)
                watcher.stop()
            assert got.json()["state"] == "ready", got.text
            readied = next(t for t, note in seen if t >= times["active"] and note.get("a"))
            after_active, after_ready = readied - times["active"], returned - readied
            print(f"\nthe leader readied it {after_active * 1000:.1f} ms after the machine turned "
                  f"active; the long-poll on the other daemon answered {after_ready * 1000:.1f} ms "
                  "after that NOTIFY reached this process")  # fmt: skip
            # Without the wake-ups: the queue's 1 s interval, then the long-poll's 2 s re-read.
            assert returned - readied < 0.1 + 0.05
            assert returned - times["active"] < 0.35
        finally:
            notify.uninstall(db)
            db.dispose()


def wait_for_role(cluster: Any, role: str = "allocation_queue") -> str:
    for _ in range(100):  # bounded: 10 s
        holder = cluster.roles().get(role)
        if holder:
            return str(holder)
        time.sleep(0.1)
    raise AssertionError(f"nobody holds {role}")
