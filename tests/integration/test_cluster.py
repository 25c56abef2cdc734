"""Several real ``provisiond serve`` processes on one PostgreSQL database (issue #16).

Membership and roles, power sync split by the ring, takeover after kill -9, fencing
after SIGSTOP, drain, and the refusals: a second daemon on SQLite, a schema newer
than the code. Simulated BMCs (provisiond.rack.bmc_sim) on loopback; every process
stopped by PID (tests/support/cluster.py).
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlmodel import col, select

from provisiond import lifecycle
from provisiond.db import Database
from provisiond.deploy import records as deploy
from provisiond.lifecycle import Ev
from provisiond.models import Bmc, Event, Machine
from provisiond.rack.bmc_sim import BmcFarm
from provisiond.rack.ipmi_faults import FaultRule, Faults
from provisiond.rack.ipmi_machine import BmcIdentity, InMemoryMachine, MachineBackend
from tests.support import pg
from tests.support.cluster import Cluster, log_events, running_cluster, wait_for
from tests.support.daemon import Daemon, cli

pytestmark = pytest.mark.slow
DEAD_AFTER_S = 6.0


@dataclass
class CountingMachine(InMemoryMachine):
    """Counts power reads: Get Chassis Status asks ``is_on`` once (a machine that is
    off is not asked for its draw, so nothing else does during a power sync)."""

    reads: int = 0

    def is_on(self) -> bool:
        self.reads += 1
        return self.on


def _counting(index: int, identity: BmcIdentity) -> MachineBackend:
    return CountingMachine()


def _reads(farm: BmcFarm) -> list[int]:
    def snapshot() -> list[int]:
        return [bmc.machine.reads for bmc in farm.farm.bmcs]

    return farm.call(snapshot)


def _zero_reads(farm: BmcFarm) -> None:
    def zero() -> None:
        for bmc in farm.farm.bmcs:
            bmc.machine.reads = 0

    farm.call(zero)


def _enroll(cluster: Cluster, farm: BmcFarm, *, deploying: bool = False) -> list[int]:
    """A machine per BMC of ``farm``; ``deploying`` ones start a deploy (power step next)."""
    db, secrets, settings = cluster.db(), cluster.secrets(), cluster.settings()
    ids = []
    try:
        with db.transaction() as session:
            for index in range(len(farm)):
                address, port = farm.endpoint(index)
                machine = Machine(name=f"m{port}")
                lifecycle.advance(session, machine, Ev.ENROLL, actor="test")
                assert machine.id is not None
                session.add(
                    Bmc(
                        machine_id=machine.id,
                        address=address,
                        port=port,
                        username="admin",
                        secret_encrypted=secrets.encrypt("password"),
                    )
                )
                if deploying:
                    for ev in (Ev.INSPECT, Ev.DONE, Ev.ALLOCATE):
                        lifecycle.advance(session, machine, ev, actor="test")
                    deploy.start_deploy(
                        session,
                        machine,
                        allocation=None,
                        image_id=None,
                        actor="test",
                        settings=settings,
                        secrets=secrets,
                    )
                ids.append(machine.id)
    finally:
        db.dispose()
    return ids


def _machine(cluster: Cluster, machine_id: int) -> tuple[str | None, dict[str, object]]:
    """(lock owner, the running deployment's phases)."""
    db = cluster.db()
    try:
        with db.read_session() as session:
            machine = session.get(Machine, machine_id)
            assert machine is not None
            record = deploy.running_deployment(session, machine_id)
            return machine.lock_owner, dict(record.phases) if record else {}
    finally:
        db.dispose()


def _events(cluster: Cluster, name: str) -> list[Event]:
    db = cluster.db()
    try:
        with db.read_session() as session:
            return list(
                session.exec(select(Event).where(Event.event == name).order_by(col(Event.id))).all()
            )
    finally:
        db.dispose()


@pytest.fixture
def cluster3(pg_server: str, tmp_path: Path) -> Iterator[Cluster]:
    with running_cluster(pg_server, tmp_path / "cluster", 3) as cluster:
        yield cluster


# --- 1. membership -----------------------------------------------------------------------


def test_three_daemons_are_live_and_each_role_has_one_holder(cluster3: Cluster) -> None:
    ids = {cluster3.id_of(d) for d in cluster3.daemons}
    assert len(ids) == 3
    roles = wait_for(
        "reaper and allocation_queue held",
        lambda: r if set(r := cluster3.roles()) >= {"reaper", "allocation_queue"} else None,
        timeout=10,
    )
    assert set(roles.values()) <= ids
    for daemon in cluster3.daemons:  # every daemon tells the same story
        rows = cluster3.rows(via=daemon)
        assert set(rows) == ids
        assert all(
            r["state"] == "live" and r["heartbeat_age_s"] < DEAD_AFTER_S for r in rows.values()
        )
        assert all(r["epoch"] == 1 for r in rows.values())
        held = [(role, r["id"]) for r in rows.values() for role in r["roles"]]
        assert sorted(role for role, _ in held) == ["allocation_queue", "reaper"], held
    result = cli("daemons", "list", "--json", env=cluster3.daemons[1].env)
    assert result.returncode == 0, result.stderr
    listed = json.loads(result.stdout)
    assert {d["id"] for d in listed} == ids
    assert [d["state"] for d in listed] == ["live"] * 3
    assert sorted(role for d in listed for role in d["roles"]) == ["allocation_queue", "reaper"]
    assert all(not d.failures() for d in cluster3.daemons), [d.failures() for d in cluster3.daemons]


# --- 2. power sync split by the ring ------------------------------------------------------

SYNC_S = 8.0
BMCS = 150


def test_power_sync_reads_every_bmc_exactly_once_per_interval(
    pg_server: str, tmp_path: Path
) -> None:
    """Each daemon syncs every SYNC_S from its own start; counted from the end of every
    daemon's first sync (all three are members by then) over the next two rounds."""
    env = {"PROVISIOND_POWER_SYNC_INTERVAL_S": str(SYNC_S)}
    cluster = Cluster(pg_server, tmp_path / "cluster", env)
    cluster.create()
    name = "provisiond_power_sync_seconds_count"

    def syncs() -> list[float | None]:
        return [cluster.metric(d, name) for d in cluster.daemons]

    def at_round(n: int) -> list[float | None] | None:
        counts = syncs()
        return counts if all(c is not None and c >= n for c in counts) else None

    try:
        with BmcFarm(count=BMCS, backend_factory=_counting) as farm:
            _enroll(cluster, farm)
            cluster.add(3)
            wait_for("every daemon's first sync", lambda: at_round(1), SYNC_S + 10, 0.2)
            _zero_reads(farm)
            assert syncs() == [1.0] * 3, "the daemons started too far apart to count rounds"
            shares: list[float] = []
            for counted in (1, 2):
                wait_for(f"round {counted + 1}", lambda n=counted: at_round(n + 1), SYNC_S + 8, 0.2)
                reads = _reads(farm)
                assert syncs() == [counted + 1.0] * 3, "a daemon synced twice in one round"
                wrong = {i: n for i, n in enumerate(reads) if n != counted}
                assert not wrong, f"BMCs not read exactly {counted}x over 3 daemons: {wrong}"
                shares = [
                    cluster.metric(d, 'provisiond_power_sync_machines{outcome="ok"}') or 0.0
                    for d in cluster.daemons
                ]
                assert sum(shares) == BMCS, shares
                assert all(s >= BMCS / 3 * 0.5 for s in shares), shares
            print(f"\npower sync shares of {BMCS} BMCs over 3 daemons, per round: {shares}")
    finally:
        try:
            cluster.stop_all()
        finally:
            cluster.drop()
    assert all(not d.failures() for d in cluster.daemons)


# --- 3. kill -9: takeover -----------------------------------------------------------------


def _held(cluster: Cluster, machine_id: int) -> str | None:
    return _machine(cluster, machine_id)[0]


def test_kill_9_hands_the_machine_to_another_daemon(pg_server: str, tmp_path: Path) -> None:
    env = {"PROVISIOND_POWER_CALL_TIMEOUT_S": "60"}
    # The BMC drops every packet: the power step blocks inside its BMC call.
    with (
        BmcFarm(count=1, faults=[FaultRule({"drop": 1.0})]) as farm,
        running_cluster(pg_server, tmp_path / "cluster", 3, env) as cluster,
    ):
        ids = {cluster.id_of(d): d for d in cluster.daemons}
        (machine_id,) = _enroll(cluster, farm, deploying=True)
        owner = wait_for("a daemon takes the machine", lambda: _held(cluster, machine_id), 15)
        victim_id = owner.split("#", 1)[0]
        assert owner == f"{victim_id}#1:engine" and victim_id in ids, (owner, ids)
        time.sleep(1)
        assert _held(cluster, machine_id) == owner, "the power step should still be running"
        victim = ids[victim_id]
        assert victim.proc is not None
        killed = time.monotonic()
        os.kill(victim.proc.pid, signal.SIGKILL)
        victim.proc.wait(10)
        farm.set_faults(None, Faults())  # the BMC answers again: the next try succeeds

        timings: dict[str, float] = {}

        def progress() -> bool:
            now = time.monotonic() - killed
            row = cluster.rows().get(victim_id, {})
            if row.get("state") == "dead":
                timings.setdefault("declared_dead", now)
            held, phases = _machine(cluster, machine_id)
            if held != owner:
                timings.setdefault("lock_dropped", now)
            if held and not held.startswith(victim_id) and "taken" not in timings:
                timings["taken"] = now
                taker.append(held)
            if "power_cycle" in phases:
                timings.setdefault("step_redone", now)
            return "step_redone" in timings and "declared_dead" in timings

        taker: list[str] = []
        wait_for("takeover", progress, timeout=DEAD_AFTER_S + 15, every=0.1)
        print(
            "\nkill -9 takeover (dead_after 6 s, heartbeat 1 s): "
            + ", ".join(f"{k} {v:.1f} s" for k, v in timings.items())
        )
        assert timings["declared_dead"] >= DEAD_AFTER_S - 1.5
        assert timings["lock_dropped"] <= DEAD_AFTER_S + 15
        assert all(t.split("#")[0] in ids and not t.startswith(victim_id) for t in taker), taker
        takeovers = [e for e in _events(cluster, "takeover") if e.machine_id == machine_id]
        assert len(takeovers) == 1 and victim_id in takeovers[0].message, takeovers
        assert farm.state(0).power == "on"  # the step redone by a live daemon
        assert cluster.rows()[victim_id]["state"] == "dead"
        assert cluster.rows()[victim_id]["machines"] == []
        survivors = [d for d in cluster.daemons if d is not victim]
        assert all(not d.failures() for d in survivors), [d.failures() for d in survivors]


# --- 4. SIGSTOP: fenced, then rejoins -----------------------------------------------------


def test_a_paused_daemon_is_declared_dead_and_rejoins_with_a_new_epoch(
    pg_server: str, tmp_path: Path
) -> None:
    env = {"PROVISIOND_POWER_CALL_TIMEOUT_S": "60"}
    with (
        BmcFarm(count=1, faults=[FaultRule({"drop": 1.0})]) as farm,
        running_cluster(pg_server, tmp_path / "cluster", 1, env) as cluster,
    ):
        # The first daemon takes both roles and the machine's lock, then two more join.
        (paused,) = cluster.daemons
        paused_id = cluster.id_of(paused)
        wait_for("roles", lambda: len(cluster.roles()) == 2, timeout=10)
        (machine_id,) = _enroll(cluster, farm, deploying=True)
        old_owner = wait_for("the lock", lambda: _held(cluster, machine_id), timeout=15)
        assert old_owner == f"{paused_id}#1:engine"
        others = cluster.add(2)
        assert set(cluster.roles().values()) == {paused_id}
        assert paused.proc is not None
        os.kill(paused.proc.pid, signal.SIGSTOP)
        stopped = time.monotonic()
        try:
            roles = wait_for(
                "the others take the roles and declare it dead",
                lambda: (
                    r
                    if len(r := cluster.roles(via=others[0])) == 2
                    and paused_id not in r.values()
                    and cluster.rows(via=others[0])[paused_id]["state"] == "dead"
                    else None
                ),
                timeout=DEAD_AFTER_S + 10,
            )
            declared = time.monotonic() - stopped
            assert _held(cluster, machine_id) != old_owner
            time.sleep(max(0.0, DEAD_AFTER_S + 4 - declared))  # well past dead_after
        finally:
            os.kill(paused.proc.pid, signal.SIGCONT)
        woke = time.monotonic()

        def rejoined() -> bool:
            events = [e.get("event") for e in log_events(paused)]
            return "daemon_rejoined" in events

        wait_for("rejoined", rejoined, timeout=10)
        rejoin_s = time.monotonic() - woke
        events = [e for e in log_events(paused) if e.get("daemon") == paused_id]
        lost = [e for e in events if e["event"] == "daemon_membership_lost"]
        back = [e for e in events if e["event"] == "daemon_rejoined"]
        assert len(lost) == 1 and len(back) == 1, [e["event"] for e in events]
        assert events.index(lost[0]) < events.index(back[0])
        assert lost[0]["epoch"] == 1 and back[0]["epoch"] == 2
        row = wait_for(
            "live again",
            lambda: r if (r := cluster.rows(via=others[0])[paused_id])["state"] == "live" else None,
            timeout=5,
        )
        assert row["epoch"] == 2
        time.sleep(3)  # its old steps end (the BMC call returns) and fail the fence
        db = cluster.db()
        try:
            with db.read_session() as session:
                owners = session.exec(
                    select(Machine.lock_owner).where(col(Machine.lock_owner).is_not(None))
                ).all()
        finally:
            db.dispose()
        assert not [o for o in owners if o and o.startswith(f"{paused_id}#1:")], owners
        assert set(cluster.roles().values()) <= {cluster.id_of(d) for d in cluster.daemons}
        print(
            f"\nSIGSTOP: roles moved and daemon declared dead {declared:.1f} s after the pause "
            f"(roles now {roles}); rejoined {rejoin_s:.1f} s after SIGCONT"
        )


# --- 5. drain -----------------------------------------------------------------------------


def test_drain_hands_roles_on_and_exits_0(cluster3: Cluster) -> None:
    roles = wait_for("roles", lambda: r if len(r := cluster3.roles()) == 2 else None, 10)
    target_id = roles["reaper"]
    target = cluster3.by_id(target_id)
    other = next(d for d in cluster3.daemons if d is not target)
    assert target.proc is not None
    result = cli("daemons", "drain", target_id, env=other.env)
    assert result.returncode == 0, result.stderr
    asked = time.monotonic()
    code = target.proc.wait(10 + 10)
    took = time.monotonic() - asked
    assert code == 0, target.log_text()[-2000:]
    rows = cluster3.rows(via=other)
    assert rows[target_id]["state"] == "stopped", rows[target_id]
    moved = wait_for(
        "roles passed on",
        lambda: r if len(r := cluster3.roles(via=other)) == 2 else None,
        timeout=8,
    )
    assert target_id not in moved.values()
    events = [e["event"] for e in log_events(target)]
    assert "daemon_draining" in events and "daemon_drained" in events and "daemon_left" in events
    print(f"\ndrain: exited 0 {took:.1f} s after 'daemons drain'; roles now {moved}")


# --- 6. one daemon on SQLite ----------------------------------------------------------------


def test_a_second_daemon_on_one_sqlite_database_refuses(tmp_path: Path) -> None:
    first = Daemon(tmp_path / "data")
    first.prepare()
    first.start()
    try:
        second = Daemon(tmp_path / "data", admin_token=first.admin_token)
        assert first.proc is not None
        result = cli("serve", env=second.env, timeout=30)
        assert result.returncode != 0
        out = result.stdout + result.stderr
        assert f"another provisiond serve (pid {first.proc.pid}) is running on the SQLite" in out
        assert "Traceback" not in out, out
        print(f"\nrefused: {out.strip()}")
        assert first.proc.poll() is None
    finally:
        first.stop()


# --- 7. a schema newer than the code --------------------------------------------------------


def test_serve_refuses_a_schema_newer_than_the_code(pg_server: str, tmp_path: Path) -> None:
    cluster = Cluster(pg_server, tmp_path / "cluster")
    cluster.create()
    try:
        db = cluster.db()
        try:
            with db.engine.begin() as conn:
                conn.execute(text("UPDATE alembic_version SET version_num = '9999_future'"))
                conn.execute(
                    text(
                        "INSERT INTO daemon (id, host, pid, version, schema_revision, api_url, "
                        "boot_urls, networks, state, epoch, started_at, heartbeat_at, reason, "
                        "details) VALUES ('h:1:x', 'h', 1, '9.9.9', '9999_future', '', '{}', "
                        "'{}', 'live', 1, now(), now(), '', '{}')"
                    )
                )
        finally:
            db.dispose()
        daemon = Daemon(
            tmp_path / "d",
            extra_env={"PROVISIOND_DATABASE_URL": cluster.url},
            admin_token=cluster.admin_token,
        )
        result = cli("serve", env=daemon.env, timeout=30)
        out = result.stdout + result.stderr
        assert result.returncode != 0, out
        assert "9999_future" in out and "9.9.9" in out, out
        assert "Traceback" not in out, out
        print(f"\nrefused: {out.strip()}")
    finally:
        cluster.drop()


# --- PostgreSQL restarted mid-deploy ------------------------------------------------------


@pytest.fixture
def own_pg() -> Iterator[pg.Cluster]:
    """A PostgreSQL server of this test's own (it is restarted), with the migrated template."""
    server = pg.start_cluster()
    try:
        admin = create_engine(server.url(), isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text("CREATE DATABASE provisiond_template"))
        admin.dispose()
        template = Database(server.url("provisiond_template"))
        template.upgrade()
        template.dispose()
        yield server
    finally:
        server.stop()


@pytest.mark.slow
def test_a_postgresql_restart_mid_deploy_is_ridden_out(own_pg: pg.Cluster, tmp_path: Path) -> None:
    env = {"PROVISIOND_POWER_CALL_TIMEOUT_S": "60"}
    with (
        BmcFarm(count=1, faults=[FaultRule({"drop": 1.0})]) as farm,
        running_cluster(own_pg.url(), tmp_path / "cluster", 2, env) as cluster,
    ):
        (machine_id,) = _enroll(cluster, farm, deploying=True)
        owner = wait_for("a daemon takes the machine", lambda: _held(cluster, machine_id), 15)
        started = time.monotonic()
        own_pg.restart()  # fast: every session of every daemon is cut
        restart_s = time.monotonic() - started
        farm.set_faults(None, Faults())  # the BMC answers: the running power step ends
        wait_for(
            "the power step finishes after the restart",
            lambda: "power_cycle" in _machine(cluster, machine_id)[1] or None,
            timeout=60,
        )
        assert farm.state(0).power == "on"

        def all_live() -> dict[str, dict[str, object]] | None:
            rows = cluster.rows()
            ok = len(rows) == 2 and all(
                r["state"] == "live" and float(str(r["heartbeat_age_s"])) < 3 for r in rows.values()
            )
            return rows if ok else None

        wait_for("both daemons heartbeat again", all_live, timeout=30)
        held, _ = _machine(cluster, machine_id)
        assert held in (None, owner), held  # the step ended with its own daemon
        for daemon in cluster.daemons:
            names = [e.get("event") for e in log_events(daemon)]
            assert "notify_listener_reconnect" in names, names[-20:]
        print(f"\nPostgreSQL restart took {restart_s:.1f} s; the deploy carried on")
