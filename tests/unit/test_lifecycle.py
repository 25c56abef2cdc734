"""The lifecycle table, and advance() on a real database (SQLite and PostgreSQL)."""

from __future__ import annotations

import itertools
from collections import deque
from datetime import timedelta

import pytest
from sqlmodel import select

from provisiond import lifecycle
from provisiond.config import StateTimeouts
from provisiond.db import Database
from provisiond.errors import ConcurrentChange, InvalidTransition
from provisiond.lifecycle import RESTING, TRANSITIONAL, TRANSITIONS, Ev, State
from provisiond.models import Event, Machine, utcnow

# The table from DESIGN.md, written out independently of the code.
DESIGN_TABLE = {
    ("new", "enroll"): "enrolled",
    ("enrolled", "inspect"): "inspecting",
    ("inspecting", "done"): "available",
    ("inspecting", "fail"): "inspect_failed",
    ("available", "allocate"): "allocated",
    ("allocated", "deploy"): "deploying",
    ("deploying", "booted"): "installing_agent",
    ("installing_agent", "ready"): "active",
    ("deploying", "fail"): "deploy_failed",
    ("installing_agent", "fail"): "deploy_failed",
    ("active", "release"): "releasing",
    ("deploy_failed", "release"): "releasing",
    ("releasing", "done"): "available",
    ("releasing", "fail"): "release_failed",
}


def test_design_table_is_in_the_engine() -> None:
    for (src, ev), dst in DESIGN_TABLE.items():
        assert TRANSITIONS[(State(src), Ev(ev))] == State(dst), (src, ev)


def test_one_move_claim_and_release_while_deploying() -> None:
    """Issue 13: the allocator's claim is available -> deploying in one UPDATE, and an
    early release ends a running deploy straight into releasing (no fail in between)."""
    assert TRANSITIONS[(State.AVAILABLE, Ev.DEPLOY)] is State.DEPLOYING
    assert TRANSITIONS[(State.DEPLOYING, Ev.RELEASE)] is State.RELEASING
    assert TRANSITIONS[(State.INSTALLING_AGENT, Ev.RELEASE)] is State.RELEASING


def test_every_resting_state_can_be_managed_and_retired() -> None:
    for state in RESTING:
        if state is not State.MAINTENANCE:
            assert TRANSITIONS[(state, Ev.MANAGE)] is State.MAINTENANCE
        if state is not State.RETIRED:
            assert TRANSITIONS[(state, Ev.RETIRE)] is State.RETIRED
    assert not any((s, Ev.MANAGE) in TRANSITIONS for s in TRANSITIONAL)


def test_every_transitional_state_has_a_timeout_and_a_fail_exit() -> None:
    timeouts = StateTimeouts()
    for state in TRANSITIONAL:
        assert getattr(timeouts, state.value) > 0
        assert (state, Ev.FAIL) in TRANSITIONS, state


def _paths() -> dict[State, list[Ev]]:
    """Shortest event path from NEW to every state, found by walking the table."""
    paths: dict[State, list[Ev]] = {State.NEW: []}
    queue = deque([State.NEW])
    while queue:
        src = queue.popleft()
        for (s, ev), dst in TRANSITIONS.items():
            if s is src and dst not in paths:
                paths[dst] = [*paths[src], ev]
                queue.append(dst)
    return paths


def test_every_state_is_reachable() -> None:
    assert set(_paths()) == set(State)


def test_every_pair_on_a_real_database(db: Database) -> None:
    """Each (state, event) pair: legal ones move and log; illegal ones raise and change nothing."""
    paths = _paths()
    timeouts = StateTimeouts()
    pairs = list(itertools.product([s for s in State if s is not State.NEW], Ev))
    legal = illegal = 0
    with db.transaction() as session:
        for i, (state, event) in enumerate(pairs):
            machine = Machine(name=f"m{i}")
            for step in paths[state]:
                lifecycle.advance(session, machine, step, actor="test", timeouts=timeouts)
            assert machine.state == state
            events_before = len(session.exec(select(Event)).all())
            if (state, event) in TRANSITIONS:
                legal += 1
                before = utcnow()
                row = lifecycle.advance(
                    session, machine, event, actor="tester", reason="why", timeouts=timeouts
                )
                dst = TRANSITIONS[(state, event)]
                assert machine.state == dst
                assert (row.from_state, row.to_state, row.event) == (state, dst, event)
                assert row.actor == "tester" and row.machine_id == machine.id
                if dst in TRANSITIONAL:
                    limit = timedelta(seconds=getattr(timeouts, dst.value))
                    assert machine.deadline is not None
                    assert before + limit <= machine.deadline <= utcnow() + limit
                else:
                    assert machine.deadline is None
                if event is Ev.FAIL:
                    assert machine.last_error == {"phase": state.value, "reason": "why"}
            else:
                illegal += 1
                with pytest.raises(InvalidTransition) as exc:
                    lifecycle.advance(session, machine, event, actor="tester")
                assert exc.value.status_code == 409
                for allowed in lifecycle.allowed_events(state):
                    assert allowed in exc.value.hint
                assert machine.state == state
                assert len(session.exec(select(Event)).all()) == events_before
    assert legal == len(TRANSITIONS) - 1  # every legal pair but (new, enroll) was exercised
    assert illegal == len(pairs) - legal


def test_enroll_twice_is_illegal(db: Database) -> None:
    with db.transaction() as session:
        machine = Machine(name="m1")
        lifecycle.advance(session, machine, Ev.ENROLL, actor="t")
        with pytest.raises(InvalidTransition, match="cannot enroll a machine that is enrolled"):
            lifecycle.advance(session, machine, Ev.ENROLL, actor="t")


def test_state_and_event_share_one_transaction(db: Database) -> None:
    with db.transaction() as session:
        machine = Machine(name="m1")
        lifecycle.advance(session, machine, Ev.ENROLL, actor="t")
    with db.session() as session:
        m = session.exec(select(Machine)).one()
        lifecycle.advance(session, m, Ev.MANAGE, actor="t", reason="disk swap")
        session.rollback()
    with db.read_session() as session:
        assert session.exec(select(Machine)).one().state == "enrolled"
        kinds = [(e.event, e.to_state) for e in session.exec(select(Event))]
        assert kinds == [("enroll", "enrolled")]


def test_a_stale_writer_loses(db: Database) -> None:
    """Two sessions hold the same machine; the second advance sees the row moved and fails."""
    with db.transaction() as session:
        lifecycle.advance(session, Machine(name="m1"), Ev.ENROLL, actor="t")
    with db.read_session() as reader:
        stale = reader.exec(select(Machine)).one()
    with db.transaction() as session:
        fresh = session.exec(select(Machine)).one()
        lifecycle.advance(session, fresh, Ev.INSPECT, actor="first")
    with db.session() as session:
        session.add(stale)
        with pytest.raises(ConcurrentChange):
            lifecycle.advance(session, stale, Ev.RETIRE, actor="second")
        session.rollback()
    with db.read_session() as session:
        assert session.exec(select(Machine)).one().state == "inspecting"
        assert [e.actor for e in session.exec(select(Event).order_by(Event.id))] == [
            "t",
            "first",
        ]
