"""Root-device hints on machines and allocations; the firmware a machine booted

Revision ID: 0008_root_device
Revises: 0007_disk_images
Create Date: 2026-12-06

Existing rows get no hints (``{}``) and an unknown firmware (``""``) through server
defaults, so no row needs rewriting; the next inspection fills the firmware in.
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel.sql.sqltypes
from alembic import op

revision: str = "0008_root_device"
down_revision: str | None = "0007_disk_images"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("machine", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("root_device", sa.JSON(), nullable=False, server_default="{}")
        )
        batch_op.add_column(
            sa.Column(
                "firmware",
                sqlmodel.sql.sqltypes.AutoString(length=8),
                nullable=False,
                server_default="",
            )
        )
    with op.batch_alter_table("allocation", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("root_device", sa.JSON(), nullable=False, server_default="{}")
        )


def downgrade() -> None:
    with op.batch_alter_table("allocation", schema=None) as batch_op:
        batch_op.drop_column("root_device")
    with op.batch_alter_table("machine", schema=None) as batch_op:
        batch_op.drop_column("firmware")
        batch_op.drop_column("root_device")
