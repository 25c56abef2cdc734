"""Counting the SQL statements a piece of work runs, on every lane's engine of a database.

    with counting(services.db) as seen:
        client.get("/api/v1/machines")
    assert len(seen) <= BUDGET

Each statement is noted by its first word (``SELECT``, ``INSERT``...), a ``BEGIN`` with
its mode (``BEGIN IMMEDIATE``). Every lane's engine is made before listening, so the
work counts wherever it runs.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import event

from provisiond import lanes
from provisiond.db import Database


@contextmanager
def counting(db: Database) -> Iterator[list[str]]:
    seen: list[str] = []

    def note(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        words = statement.split()
        seen.append(" ".join(words[:2]) if words[:1] == ["BEGIN"] else (words or [""])[0].upper())

    db.session().close()
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
