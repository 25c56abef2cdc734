"""The cluster's rows on both databases: leaderships, daemon membership, the ring."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections import Counter
from datetime import timedelta

import pytest
from sqlalchemy import text, update
from sqlmodel import col, select

from provisiond.cluster import leadership, members, ring
from provisiond.cluster.members import Me
from provisiond.cluster.node import ClusterNode
from provisiond.db import Database
from provisiond.lifecycle import Ev, advance
from provisiond.models import Daemon, Event, Leadership, Machine, utcnow

A, B = "h:1:20250101T000000.000001Z", "h:2:20250101T000000.000002Z"


def _expire(db: Database, name: str) -> None:
    with db.transaction() as session:
        session.execute(
            update(Leadership)
            .where(col(Leadership.name) == name)
            .values(expires_at=utcnow() - timedelta(seconds=60))
        )


def _holds(db: Database, name: str, holder: str, epoch: int) -> bool:
    with db.transaction() as session:
        return leadership.hold(session, name, holder, epoch)


def test_lead_renew_expire_take_over_and_resign(db: Database) -> None:
    assert leadership.lead(db, "reaper", f"{A}#1", 30) == 1
    assert leadership.lead(db, "reaper", f"{A}#1", 30) == 1  # a renewal keeps the epoch
    assert leadership.lead(db, "reaper", f"{B}#1", 30) is None  # held, unexpired
    assert _holds(db, "reaper", f"{A}#1", 1)
    assert not _holds(db, "reaper", f"{B}#1", 1)
    assert not _holds(db, "reaper", f"{A}#1", 2)  # the wrong epoch
    _expire(db, "reaper")
    assert not _holds(db, "reaper", f"{A}#1", 1)  # expired: the fence fails
    assert leadership.lead(db, "reaper", f"{B}#1", 30) == 2  # taken over: epoch bumped
    assert not _holds(db, "reaper", f"{A}#1", 1)
    assert _holds(db, "reaper", f"{B}#1", 2)
    assert leadership.lead(db, "reaper", f"{A}#1", 30) is None
    # A rejoined daemon is a new holder, even with the same id.
    assert leadership.lead(db, "allocation_queue", f"{A}#1", 30) == 1
    _expire(db, "allocation_queue")
    assert leadership.lead(db, "allocation_queue", f"{A}#2", 30) == 2
    with db.read_session() as session:
        assert leadership.held_by(session) == {
            "reaper": (f"{B}#1", 2),
            "allocation_queue": (f"{A}#2", 2),
        }
    assert not leadership.resign(db, "reaper", f"{A}#1")  # not the holder: nothing
    assert leadership.resign(db, "reaper", f"{B}#1")
    assert not _holds(db, "reaper", f"{B}#1", 2)
    with db.read_session() as session:
        assert "reaper" not in leadership.held_by(session)
    assert leadership.lead(db, "reaper", f"{A}#2", 30) == 3  # free at once after a resign


def _me(daemon: str) -> Me:
    return Me(id=daemon, host="h", pid=1, version="1.0", schema_revision="x")


def _locked(db: Database, owners: dict[str, str]) -> None:
    with db.transaction() as session:
        for name, owner in owners.items():
            machine = Machine(name=name)
            advance(session, machine, Ev.ENROLL, actor="test")
            machine.lock_owner = owner
            machine.lock_expires = utcnow() + timedelta(minutes=5)
            session.add(machine)


def _silence(db: Database, daemon: str, seconds: float) -> None:
    with db.transaction() as session:
        session.execute(
            update(Daemon)
            .where(col(Daemon.id) == daemon)
            .values(heartbeat_at=utcnow() - timedelta(seconds=seconds))
        )


def test_declare_dead_drops_only_the_dead_daemons_locks(db: Database) -> None:
    assert members.join(db, _me(A)) == 1
    assert members.join(db, _me(B)) == 1
    lookalike = A[:-1] + "Z0"  # begins with A's id, but is another daemon
    _locked(
        db,
        {
            "plain": f"{A}:engine",
            "epoch": f"{A}#2:engine",
            "other": f"{B}#1:engine",
            "lookalike": f"{lookalike}:engine",
            "lookalike2": f"{A}0#1:engine",
            "op": "deploy-op",
        },
    )
    assert members.declare_dead(db, B, 6) == []  # everyone heard from in time
    _silence(db, A, 20)
    _silence(db, B, 20)
    takeovers = members.declare_dead(db, B, 6)  # B declares: never itself
    assert [(t.daemon, sorted(t.machines)) for t in takeovers] == [(A, ["epoch", "plain"])]
    assert takeovers[0].silent_s >= 19
    assert members.declare_dead(db, B, 6) == []  # declared once
    with db.read_session() as session:
        owners = {m.name: m.lock_owner for m in session.exec(select(Machine))}
        events = session.exec(select(Event).where(Event.event == "takeover")).all()
        rows = {d.id: d for d in session.exec(select(Daemon))}
        assert members.live(session, 6) == []  # B is silent too, though running
    assert owners == {
        "plain": None,
        "epoch": None,
        "other": f"{B}#1:engine",
        "lookalike": f"{lookalike}:engine",
        "lookalike2": f"{A}0#1:engine",
        "op": "deploy-op",
    }
    assert sorted(e.machine_name for e in events) == ["epoch", "plain"]
    assert all(A in e.message and B in e.message for e in events)
    assert rows[A].state == "dead" and B in rows[A].reason
    assert rows[B].state == "live"
    # The dead daemon's heartbeat is refused; it rejoins with a new epoch.
    assert members.beat(db, A, 1) is None
    assert members.join(db, _me(A)) == 2
    assert members.beat(db, A, 1) is None  # the old epoch stays fenced out
    assert members.beat(db, A, 2) == "live"
    assert members.beat(db, B, 1) == "live"
    with db.read_session() as session:
        assert members.live(session, 6) == sorted([A, B])


def test_set_state_drain_and_stop(db: Database) -> None:
    members.join(db, _me(A))
    assert members.set_state(db, A, "draining", "asked")
    assert members.beat(db, A, 1) == "draining"
    with db.read_session() as session:
        assert members.live(session, 6) == []  # draining takes no new work
    assert not members.set_state(db, A, "stopped", "bye", epoch=2)  # not its epoch
    assert members.set_state(db, A, "stopped", "bye", epoch=1)
    assert members.beat(db, A, 1) is None
    assert not members.set_state(db, A, "draining", "again")


def test_ring_owner_is_stable_balanced_and_moves_only_the_leavers_keys() -> None:
    three = ["d-a", "d-b", "d-c"]
    keys = [f"machine-{i}" for i in range(3000)]
    owners = {k: ring.owner(k, three) for k in keys}
    assert owners == {k: ring.owner(k, list(reversed(three))) for k in keys}  # order-free
    shares = Counter(owners.values())
    assert set(shares) == set(three)
    assert all(750 <= n <= 1250 for n in shares.values()), shares
    assert sorted(ring.share(keys, three, "d-a")) == sorted(
        k for k, o in owners.items() if o == "d-a"
    )
    two = ["d-a", "d-c"]
    after = {k: ring.owner(k, two) for k in keys}
    moved = {k for k in keys if after[k] != owners[k]}
    assert moved == {k for k, o in owners.items() if o == "d-b"}
    assert Counter(after[k] for k in moved).keys() <= set(two)
    # A member joining takes about a third, only from the others.
    four = [*three, "d-d"]
    joined = {k: ring.owner(k, four) for k in keys}
    changed = [k for k in keys if joined[k] != owners[k]]
    assert all(joined[k] == "d-d" for k in changed)
    assert 750 * 3 / 4 <= len(changed) <= 1250 * 3 / 4
    assert ring.owner("x", []) is None


def test_a_rejoin_that_fails_is_tried_again_at_the_next_heartbeat(db: Database) -> None:
    """Declared dead, then the rejoin's write times out (its row is locked by another
    transaction): the next heartbeat must rejoin, not leave the daemon out for good."""
    if db.dialect != "postgresql":
        return  # one daemon on SQLite: it is never declared dead by another
    node = ClusterNode(
        db, _me(A), heartbeat_s=0.5, dead_after_s=3, leader_ttl_s=1.5, drain_timeout_s=1
    )
    members.join(db, _me(B))

    asyncio.run(node.start())  # the database calls below run outside the loop
    assert node.epoch == 1
    _silence(db, A, 20)
    assert [t.daemon for t in members.declare_dead(db, B, 3)] == [A]
    # FOR KEY SHARE lets the heartbeat's UPDATE through but blocks join's FOR UPDATE
    # (for longer than the node waits for it: 2 x heartbeat_s).
    locked = threading.Event()

    def block() -> None:
        with db.engine.connect() as blocker:
            blocker.execute(text("SELECT id FROM daemon WHERE id = :id FOR KEY SHARE"), {"id": A})
            locked.set()
            time.sleep(2.5)
            blocker.rollback()

    thread = threading.Thread(target=block)
    thread.start()
    try:
        assert locked.wait(10)
        with pytest.raises(TimeoutError):
            asyncio.run(node.tick())  # declared dead: it rejoins, and the rejoin times out
        assert node.state == "rejoining" and not node.accepting()
    finally:
        thread.join(10)
    for _ in range(20):  # bounded: 20 heartbeats
        with contextlib.suppress(TimeoutError):
            asyncio.run(node.tick())
        if node.state == "live":
            break
        time.sleep(0.1)
    assert node.state == "live" and node.accepting()
    assert node.epoch >= 2
    assert members.beat(db, A, node.epoch) == "live"


def test_a_node_without_a_recent_heartbeat_owns_no_ring_keys(db: Database) -> None:
    """Woken from a pause, before its first heartbeat: its member list is stale, so it
    reads no BMC (power sync) until the heartbeat tells it where it stands."""
    if db.dialect != "postgresql":
        return  # one daemon on SQLite owns everything
    node = ClusterNode(
        db, _me(A), heartbeat_s=0.5, dead_after_s=3, leader_ttl_s=1.5, drain_timeout_s=1
    )
    asyncio.run(node.start())
    keys = [f"k{i}" for i in range(50)]
    assert all(node.owns(k) for k in keys)  # the only member
    time.sleep(node.valid_s + 0.2)  # no heartbeat for longer than the local lease
    assert not node.current() and not any(node.owns(k) for k in keys)
    asyncio.run(node.tick())
    assert node.current() and all(node.owns(k) for k in keys)
