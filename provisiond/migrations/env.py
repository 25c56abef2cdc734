"""Alembic environment: runs with the engine that provisiond.db.Database passes in."""

from __future__ import annotations

from alembic import context
from sqlmodel import SQLModel

import provisiond.models  # noqa: F401  (registers the tables)

config = context.config
engine = config.attributes["engine"]

with engine.connect() as connection:
    context.configure(
        connection=connection,
        target_metadata=SQLModel.metadata,
        render_as_batch=True,
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()
    connection.commit()
