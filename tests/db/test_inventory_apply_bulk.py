"""Inventory apply writes in one transaction, with a number of statements that does not
grow with the number of machines, on SQLite and PostgreSQL.

The statements of each apply are counted at the driver (``before_cursor_execute``;
an executemany is one), transactions by the engine's begin/commit/rollback events.
A small inventory and one six times larger must run the very same statements, for
a first apply, a no-change re-apply (which writes nothing), an update of every
machine and a prune of everything.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest
from cryptography.fernet import Fernet
from sqlalchemy import event, func
from sqlmodel import select

from provisiond import lanes
from provisiond.db import Database
from provisiond.inventory import plan as inventory
from provisiond.inventory import write as inventory_write
from provisiond.models import Bmc, Event, Machine, Nic, Outlet, Pdu, Rack, Switch, SwitchPort
from provisiond.secrets import SecretBox
from tests.support.inventory_files import generate

EMPTY = "version: 1\nracks: []\nswitches: []\npdus: []\nmachines: []\n"
WRITES = ("INSERT", "UPDATE", "DELETE")
SMALL, LARGE = (2, 3), (3, 12)  # (racks, machines per rack): 6 and 36 machines
BOX = SecretBox(Fernet.generate_key())
ENV = {"PW": "bmc-secret"}


@dataclass
class Seen:
    statements: list[str] = field(default_factory=list)
    begins: int = 0
    commits: int = 0
    rollbacks: int = 0


@contextmanager
def watching(db: Database) -> Iterator[Seen]:
    seen = Seen()

    def statement(_conn: Any, _cursor: Any, sql: str, *_args: Any) -> None:
        words = sql.split()
        # "INSERT INTO nic", "UPDATE machine", "SELECT": what and where, not the values.
        if words[:1] == ["BEGIN"]:
            seen.statements.append(" ".join(words[:2]))
        elif words[:1] in (["INSERT"], ["DELETE"]):
            seen.statements.append(" ".join(words[:3]))
        elif words[:1] == ["UPDATE"]:
            seen.statements.append(" ".join(words[:2]))
        else:
            seen.statements.append(words[0].upper())

    def began(_conn: Any) -> None:
        seen.begins += 1

    def committed(_conn: Any) -> None:
        seen.commits += 1

    def rolled_back(_conn: Any) -> None:
        seen.rollbacks += 1

    db.session().close()  # every lane's engine made now (the apply uses its lane's)
    for lane in lanes.Lane:
        with lanes.lane(lane):
            db.session().close()
    hooks = (
        ("before_cursor_execute", statement),
        ("begin", began),
        ("commit", committed),
        ("rollback", rolled_back),
    )
    engines = db.engines()
    for engine in engines:
        for name, fn in hooks:
            event.listen(engine, name, fn)
    try:
        yield seen
    finally:
        for engine in engines:
            for name, fn in hooks:
                event.remove(engine, name, fn)


def apply(db: Database, text: str, *, prune: bool = False) -> tuple[dict[str, int], Seen]:
    with watching(db) as seen, db.transaction() as session:
        plan = inventory.apply(
            session,
            inventory.Source(text, ENV),
            secrets=BOX,
            actor="test",
            hosts_changed=lambda *_a, **_k: None,
            prune=prune,
        )
    return plan.summary, seen


def counts(db: Database) -> dict[str, int]:
    with db.read_session() as session:
        return {
            model.__name__: session.exec(select(func.count()).select_from(model)).one()
            for model in (Rack, Switch, SwitchPort, Pdu, Outlet, Machine, Nic, Bmc, Event)
        }


def rounds(db: Database, racks: int, per_rack: int) -> dict[str, Seen]:
    """A first apply, a re-apply, an update of every machine and a prune of everything."""
    text = generate(racks, per_rack, password_env="PW")
    machines = racks * per_rack
    out: dict[str, Seen] = {}
    summary, out["create"] = apply(db, text)
    assert summary["create"] == machines + 3 * racks
    assert counts(db)["Machine"] == machines and counts(db)["Nic"] == 2 * machines
    before = counts(db)
    summary, out["again"] = apply(db, text)
    assert summary["unchanged"] == machines + 3 * racks
    assert counts(db) == before
    summary, out["update"] = apply(db, generate(racks, per_rack, password_env="PW", u_offset=1))
    assert summary["update"] == machines
    summary, out["prune"] = apply(db, EMPTY, prune=True)
    assert summary["delete"] == machines + 3 * racks
    assert {k: v for k, v in counts(db).items() if k != "Event"} == dict.fromkeys(
        ("Rack", "Switch", "SwitchPort", "Pdu", "Outlet", "Machine", "Nic", "Bmc"), 0
    )
    return out


def test_statements_do_not_grow_with_machines_and_each_apply_is_one_transaction(
    db: Database,
) -> None:
    small = rounds(db, *SMALL)
    large = rounds(db, *LARGE)
    for step, seen in large.items():
        print(f"{step}: {len(seen.statements)} statements {seen.statements}")
        assert seen.statements == small[step].statements, step
        assert (seen.begins, seen.commits, seen.rollbacks) == (1, 1, 0), step
        assert len(seen.statements) <= 40, step
    # A re-apply of the same file writes nothing.
    assert not [s for s in large["again"].statements if s.startswith(WRITES)]
    # Every event of a first apply is in one multi-row INSERT.
    assert large["create"].statements.count("INSERT INTO event") == 1


def test_a_failure_late_in_the_apply_rolls_back_all_of_it(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The events are the last statement of an apply: failing there leaves nothing."""
    calls: list[str] = []

    def broken(*_args: Any, **_kwargs: Any) -> int:
        calls.append("record_many")
        raise RuntimeError("the disk filled up")

    text = generate(*SMALL, password_env="PW")
    monkeypatch.setattr(inventory_write.events, "record_many", broken)
    with pytest.raises(RuntimeError, match="disk filled up"):
        apply(db, text)
    assert calls == ["record_many"]
    assert set(counts(db).values()) == {0}

    monkeypatch.undo()
    apply(db, text)
    before, exported = counts(db), _export(db)
    monkeypatch.setattr(inventory_write.events, "record_many", broken)
    moved = generate(*SMALL, password_env="PW", u_offset=1)
    with pytest.raises(RuntimeError):
        apply(db, moved)
    assert counts(db) == before and _export(db) == exported


def _export(db: Database) -> str:
    with db.read_session() as session:
        return inventory.export(session)
