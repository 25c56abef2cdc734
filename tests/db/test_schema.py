"""Migrations match the models, and an un-migrated DB is refused with the command to run."""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlmodel import SQLModel

from provisiond.db import Database
from provisiond.errors import DatabaseNotReady


def test_migrations_match_the_models(db: Database) -> None:
    with db.engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"compare_type": True})
        diff = compare_metadata(ctx, SQLModel.metadata)
    assert diff == [], f"models changed without a migration: {diff}"
    assert db.current_revision() == db.head_revision()
    db.check_schema()


def test_unmigrated_database_is_refused(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'empty.db'}")
    with pytest.raises(DatabaseNotReady) as exc:
        db.check_schema()
    assert "is empty" in exc.value.message
    assert "provisiond db upgrade" in exc.value.hint
    before, after = db.upgrade()
    assert before is None and after == db.head_revision()
    db.check_schema()
    assert db.upgrade() == (after, after)  # idempotent


def test_sqlite_runs_in_wal_mode_with_a_busy_timeout(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'x.db'}", busy_timeout_s=7)
    with db.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 7000
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
