"""Alembic environment: runs with the engine that provisiond.db.Database passes in.

On SQLite a batch migration rebuilds a table (copy, DROP TABLE, rename). With foreign
keys on, that DROP TABLE deletes the rows first and so runs the children's ON DELETE
actions: every NIC, BMC and deployment of a rebuilt ``machine`` would go. Foreign keys
are therefore off while migrations run (SQLite ignores the pragma inside a
transaction, so it is set before the transaction begins), checked with
``PRAGMA foreign_key_check`` before the commit, and on again afterwards.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection
from sqlmodel import SQLModel

import provisiond.models  # noqa: F401  (registers the tables)
from provisiond.errors import DatabaseNotReady

config = context.config
engine = config.attributes["engine"]


def _sqlite_foreign_keys(connection: Connection, on: bool) -> None:
    # On the driver's connection: through SQLAlchemy the pragma would begin a transaction.
    cursor = connection.connection.cursor()
    cursor.execute(f"PRAGMA foreign_keys = {'ON' if on else 'OFF'}")
    cursor.close()


def _check_foreign_keys(connection: Connection) -> None:
    broken = connection.exec_driver_sql("PRAGMA foreign_key_check").all()
    if broken:
        shown = ", ".join(f"{row[0]} rowid {row[1]} -> {row[2]}" for row in broken[:10])
        raise DatabaseNotReady(
            f"the migration would leave rows that reference missing rows: {shown}",
            hint="nothing was changed; report this with the output of 'PRAGMA foreign_key_check'",
        )


with engine.connect() as connection:
    sqlite = connection.dialect.name == "sqlite"
    if sqlite:
        _sqlite_foreign_keys(connection, on=False)
    try:
        context.configure(
            connection=connection,
            target_metadata=SQLModel.metadata,
            render_as_batch=True,
            compare_type=True,
            # SQLite's DDL is transactional; told so, Alembic runs every revision in
            # the one transaction, so the foreign-key check below comes before the
            # commit (otherwise each revision commits as it goes).
            transactional_ddl=True if sqlite else None,
        )
        with context.begin_transaction():
            context.run_migrations()
            if sqlite:
                _check_foreign_keys(connection)
        connection.commit()
    finally:
        if sqlite:
            connection.rollback()  # a failed migration leaves nothing open
            _sqlite_foreign_keys(connection, on=True)
