"""At most one running deployment per machine (a partial unique index)

Revision ID: 0010_one_running_deployment
Revises: 0009_image_configured_by
Create Date: 2026-12-06

The allocation request path inserts a claimed machine's deployment without first
superseding older ones (the machine was ``available``, so none runs); this index
makes a second running row an error instead of a silent duplicate. Rows that break
it already (older running rows of one machine, left by earlier versions) are closed
as ``superseded`` first, keeping each machine's newest running row.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010_one_running_deployment"
down_revision: str | None = "0009_image_configured_by"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

RUNNING = sa.text("outcome = ''")


def upgrade() -> None:
    op.execute(
        "UPDATE deployment SET outcome = 'superseded', "
        "failure_reason = 'superseded by a newer deployment (migration 0010)', "
        "finished_at = CURRENT_TIMESTAMP "
        "WHERE outcome = '' AND id NOT IN "
        "(SELECT max(id) FROM deployment WHERE outcome = '' GROUP BY machine_id)"
    )
    op.create_index(
        "uq_deployment_running",
        "deployment",
        ["machine_id"],
        unique=True,
        sqlite_where=RUNNING,
        postgresql_where=RUNNING,
    )


def downgrade() -> None:
    op.drop_index("uq_deployment_running", table_name="deployment")
