"""Disk images: who configures the deployed OS, and what registration found inside

Revision ID: 0009_image_configured_by
Revises: 0008_root_device
Create Date: 2026-12-06

``configured_by`` is ``cloud-init`` (the deploy writes a NoCloud seed config into the
image's root) or ``agent`` (the image phones home by itself); ``cloud_init`` is the
cloud-init program registration found in the root, ``os_family`` and ``os_version``
its os-release ``ID`` and ``VERSION_ID``. Existing rows get ``cloud-init`` and empty
findings (not checked) through server defaults, so no row needs rewriting.
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel.sql.sqltypes
from alembic import op

revision: str = "0009_image_configured_by"
down_revision: str | None = "0008_root_device"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

#: name, length, server default
COLUMNS = (
    ("configured_by", 16, "cloud-init"),
    ("cloud_init", 255, ""),
    ("os_family", 32, ""),
    ("os_version", 32, ""),
)


def upgrade() -> None:
    with op.batch_alter_table("image", schema=None) as batch_op:
        for name, length, default in COLUMNS:
            batch_op.add_column(
                sa.Column(
                    name,
                    sqlmodel.sql.sqltypes.AutoString(length=length),
                    nullable=False,
                    server_default=default,
                )
            )


def downgrade() -> None:
    with op.batch_alter_table("image", schema=None) as batch_op:
        for name, _, _ in reversed(COLUMNS):
            batch_op.drop_column(name)
