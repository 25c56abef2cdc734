"""Whole-disk images: served file, source format, sizes, raw checksum, firmware

Revision ID: 0007_disk_images
Revises: 0006_checks
Create Date: 2026-12-20

Existing rows are live images: the new columns get empty values and ``both``
firmware through server defaults, so no row needs rewriting.
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel.sql.sqltypes
from alembic import op

revision: str = "0007_disk_images"
down_revision: str | None = "0006_checks"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

COLUMNS = ("disk", "source_format", "virtual_size", "min_disk_size", "raw_sha256", "firmware")


def upgrade() -> None:
    with op.batch_alter_table("image", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column(
                "disk",
                sqlmodel.sql.sqltypes.AutoString(length=255),
                nullable=False,
                server_default="",
            )
        )
        batch_op.add_column(
            sa.Column(
                "source_format",
                sqlmodel.sql.sqltypes.AutoString(length=8),
                nullable=False,
                server_default="",
            )
        )
        batch_op.add_column(
            sa.Column("virtual_size", sa.BigInteger(), nullable=False, server_default="0")
        )
        batch_op.add_column(
            sa.Column("min_disk_size", sa.BigInteger(), nullable=False, server_default="0")
        )
        batch_op.add_column(
            sa.Column(
                "raw_sha256",
                sqlmodel.sql.sqltypes.AutoString(length=64),
                nullable=False,
                server_default="",
            )
        )
        batch_op.add_column(
            sa.Column(
                "firmware",
                sqlmodel.sql.sqltypes.AutoString(length=8),
                nullable=False,
                server_default="both",
            )
        )


def downgrade() -> None:
    with op.batch_alter_table("image", schema=None) as batch_op:
        for column in reversed(COLUMNS):
            batch_op.drop_column(column)
