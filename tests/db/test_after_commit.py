"""A use case's side effects run once its transaction commits, never on rollback."""

from __future__ import annotations

import pytest
from sqlmodel import select

from provisiond.db import Database, after_commit
from provisiond.models import Rack


def test_hooks_run_after_commit_in_order(db: Database) -> None:
    ran: list[str] = []
    with db.transaction() as session:
        session.add(Rack(name="r1"))
        after_commit(session, lambda: ran.append("first"))
        after_commit(session, lambda: ran.append("second"))
        assert ran == []
    assert ran == ["first", "second"]
    with db.read_session() as session:
        assert session.exec(select(Rack.name)).all() == ["r1"]


def test_hooks_are_dropped_on_rollback(db: Database) -> None:
    ran: list[str] = []
    with pytest.raises(RuntimeError), db.transaction() as session:
        session.add(Rack(name="r1"))
        after_commit(session, lambda: ran.append("x"))
        raise RuntimeError("the use case failed")
    with db.transaction() as session:  # the next transaction on a new session runs none
        session.add(Rack(name="r2"))
    assert ran == []


def test_a_failing_hook_does_not_undo_the_commit_or_stop_the_others(db: Database) -> None:
    ran: list[str] = []

    def broken() -> None:
        raise OSError("dnsmasq host dir is gone")

    with db.transaction() as session:
        session.add(Rack(name="r1"))
        after_commit(session, broken)
        after_commit(session, lambda: ran.append("after"))
    assert ran == ["after"]
    with db.read_session() as session:
        assert session.exec(select(Rack.name)).all() == ["r1"]


def test_a_rolled_back_savepoint_keeps_the_outer_transactions_hooks(db: Database) -> None:
    ran: list[str] = []
    with db.transaction() as session:
        after_commit(session, lambda: ran.append("outer"))
        with pytest.raises(RuntimeError), session.begin_nested():
            session.add(Rack(name="r1"))
            raise RuntimeError("the savepoint's part failed")
        session.add(Rack(name="r2"))
    assert ran == ["outer"]
    with db.read_session() as session:
        assert session.exec(select(Rack.name)).all() == ["r2"]
