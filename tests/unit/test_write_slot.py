"""SQLite's in-process write slot: a writer kept waiting says what holds the slot."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import text

from provisiond import db as db_module
from provisiond.db import Database, DatabaseOnEventLoop


def _hold_the_slot(database: Database, held: threading.Event, release: threading.Event) -> None:
    with database.transaction() as session:
        session.execute(text("CREATE TABLE IF NOT EXISTS t (x INTEGER)"))
        held.set()
        release.wait(10)


def test_a_waiting_writer_logs_the_holder_and_still_gets_the_slot(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(db_module, "SLOW_WRITE_SLOT_S", 0.3)
    database = Database(f"sqlite:///{tmp_path / 'slot.db'}", busy_timeout_s=5)
    held, release = threading.Event(), threading.Event()
    holder = threading.Thread(
        target=_hold_the_slot, args=(database, held, release), name="slot-holder"
    )
    holder.start()
    try:
        assert held.wait(5)
        threading.Timer(0.8, release.set).start()
        caplog.set_level(logging.WARNING, logger="provisiond.db")
        started = time.monotonic()
        with database.transaction() as session:  # waits for the holder, then writes
            session.execute(text("INSERT INTO t VALUES (1)"))
        waited = time.monotonic() - started
    finally:
        release.set()
        holder.join(5)
    assert 0.6 < waited < 4
    [record] = [r for r in caplog.records if "write slot busy" in r.getMessage()]
    message = record.getMessage()
    assert "slot-holder" in message and "_hold_the_slot" in message
    with database.read_session() as session:
        assert session.execute(text("SELECT count(*) FROM t")).scalar() == 1
    database.dispose()


def test_a_writer_gives_up_after_the_busy_timeout_with_a_clear_error(tmp_path: Path) -> None:
    database = Database(f"sqlite:///{tmp_path / 'slot.db'}", busy_timeout_s=0.5)
    held, release = threading.Event(), threading.Event()
    holder = threading.Thread(target=_hold_the_slot, args=(database, held, release))
    holder.start()
    try:
        assert held.wait(5)
        with (
            pytest.raises(Exception, match=r"no write slot in this process after 0\.5s"),
            database.transaction() as session,
        ):
            session.execute(text("INSERT INTO t VALUES (2)"))
    finally:
        release.set()
        holder.join(5)
    database.dispose()


def test_database_calls_on_the_event_loop_are_refused(tmp_path: Path) -> None:
    """On the loop's thread a write could wait for the write slot while the request
    holding it waits for the loop to commit: refused, in a worker thread it works."""
    database = Database(f"sqlite:///{tmp_path / 'loop.db'}")

    def write() -> int:
        with database.transaction() as session:
            session.execute(text("CREATE TABLE IF NOT EXISTS t (x INTEGER)"))
            session.execute(text("INSERT INTO t VALUES (1)"))
        with database.read_session() as session:
            return int(session.execute(text("SELECT count(*) FROM t")).scalar_one())

    async def main() -> int:
        with pytest.raises(DatabaseOnEventLoop, match=r"asyncio\.to_thread"):
            write()
        return await asyncio.to_thread(write)

    assert asyncio.run(main()) == 1  # the refused call wrote nothing
    assert write() == 2
    database.dispose()
