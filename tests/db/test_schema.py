"""Migrations match the models, and an un-migrated DB is refused with the command to run."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlmodel import SQLModel

from provisiond.db import SCHEMA_HEAD, Database
from provisiond.errors import DatabaseNotReady


def test_migrations_match_the_models(db: Database) -> None:
    with db.engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"compare_type": True})
        diff = compare_metadata(ctx, SQLModel.metadata)
    assert diff == [], f"models changed without a migration: {diff}"
    assert db.current_revision() == db.head_revision()
    db.check_schema()


def test_schema_head_constant_is_the_newest_migration(tmp_path: Path) -> None:
    """The start-up check compares with SCHEMA_HEAD instead of importing alembic; it
    must name the newest migration (a new migration without it fails here)."""
    db = Database(f"sqlite:///{tmp_path / 'h.db'}")
    assert db.head_revision() == SCHEMA_HEAD


def test_the_daemon_imports_neither_alembic_nor_paramiko_at_start() -> None:
    """Start-up RSS: alembic (10 MB) is for migrating, paramiko (8.6 MB) for the first SSH."""
    code = (
        "import sys, provisiond.daemon, provisiond.api.app, provisiond.api.routers;"
        "print(sorted(m for m in ('alembic', 'paramiko') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


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
