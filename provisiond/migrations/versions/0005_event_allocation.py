"""events: allocation_id, so an allocation's events are one indexed query

Revision ID: 0005_event_allocation
Revises: 0004_bmc_tls
Create Date: 2026-12-06
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005_event_allocation"
down_revision: str | None = "0004_bmc_tls"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("event", schema=None) as batch_op:
        batch_op.add_column(sa.Column("allocation_id", sa.Integer(), nullable=True))
        batch_op.create_index(batch_op.f("ix_event_allocation_id"), ["allocation_id"], unique=False)
    # Existing allocation events name their allocation by uuid in details.
    if op.get_bind().dialect.name == "postgresql":
        uuid = "(event.details::json ->> 'allocation')"
    else:
        uuid = "json_extract(event.details, '$.allocation')"
    op.execute(
        "UPDATE event SET allocation_id = (SELECT allocation.id FROM allocation "  # noqa: S608
        f"WHERE allocation.uuid = {uuid}) WHERE kind = 'allocation'"
    )


def downgrade() -> None:
    with op.batch_alter_table("event", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_event_allocation_id"))
        batch_op.drop_column("allocation_id")
