"""deploy records and leases

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel.sql.sqltypes
from alembic import op

import provisiond.models.base

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "deployment",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("uuid", sqlmodel.sql.sqltypes.AutoString(length=36), nullable=False),
        sa.Column("machine_id", sa.Integer(), nullable=False),
        sa.Column("allocation_id", sa.Integer(), nullable=True),
        sa.Column("kind", sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
        sa.Column("image_id", sa.Integer(), nullable=True),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("ssh_public_key", sqlmodel.sql.sqltypes.AutoString(length=1024), nullable=False),
        sa.Column("ssh_private_key_encrypted", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("host_key", sqlmodel.sql.sqltypes.AutoString(length=2048), nullable=False),
        sa.Column("address", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("phases", sa.JSON(), nullable=False),
        sa.Column("outcome", sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
        sa.Column("failure_reason", sqlmodel.sql.sqltypes.AutoString(length=1024), nullable=False),
        sa.Column("started_at", provisiond.models.base.UTCDateTime(timezone=True), nullable=False),
        sa.Column("finished_at", provisiond.models.base.UTCDateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["allocation_id"], ["allocation.id"], ondelete="SET NULL"),
        sa.ForeignKeyConstraint(["image_id"], ["image.id"], ondelete="RESTRICT"),
        sa.ForeignKeyConstraint(["machine_id"], ["machine.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("deployment", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_deployment_allocation_id"), ["allocation_id"], unique=False
        )
        batch_op.create_index(batch_op.f("ix_deployment_machine_id"), ["machine_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_deployment_outcome"), ["outcome"], unique=False)
        batch_op.create_index(batch_op.f("ix_deployment_started_at"), ["started_at"], unique=False)
        batch_op.create_index(batch_op.f("ix_deployment_uuid"), ["uuid"], unique=True)

    with op.batch_alter_table("allocation", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column(
                "updated_at",
                provisiond.models.base.UTCDateTime(timezone=True),
                nullable=False,
                server_default=sa.text("CURRENT_TIMESTAMP"),
            )
        )
        batch_op.add_column(
            sa.Column("lease_s", sa.Integer(), nullable=False, server_default="3600")
        )
        batch_op.add_column(
            sa.Column(
                "ssh_user",
                sqlmodel.sql.sqltypes.AutoString(length=32),
                nullable=False,
                server_default="root",
            )
        )
        batch_op.add_column(sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"))
        batch_op.add_column(
            sa.Column("excluded_machine_ids", sa.JSON(), nullable=False, server_default="[]")
        )

    with op.batch_alter_table("machine", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column(
                "ssh_host_key",
                sqlmodel.sql.sqltypes.AutoString(length=2048),
                nullable=False,
                server_default="",
            )
        )
        batch_op.add_column(
            sa.Column(
                "last_heartbeat_at",
                provisiond.models.base.UTCDateTime(timezone=True),
                nullable=True,
            )
        )
        batch_op.add_column(
            sa.Column(
                "agent_version",
                sqlmodel.sql.sqltypes.AutoString(length=32),
                nullable=False,
                server_default="",
            )
        )


def downgrade() -> None:
    with op.batch_alter_table("machine", schema=None) as batch_op:
        batch_op.drop_column("agent_version")
        batch_op.drop_column("last_heartbeat_at")
        batch_op.drop_column("ssh_host_key")

    with op.batch_alter_table("allocation", schema=None) as batch_op:
        batch_op.drop_column("excluded_machine_ids")
        batch_op.drop_column("attempts")
        batch_op.drop_column("ssh_user")
        batch_op.drop_column("lease_s")
        batch_op.drop_column("updated_at")

    with op.batch_alter_table("deployment", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_deployment_uuid"))
        batch_op.drop_index(batch_op.f("ix_deployment_started_at"))
        batch_op.drop_index(batch_op.f("ix_deployment_outcome"))
        batch_op.drop_index(batch_op.f("ix_deployment_machine_id"))
        batch_op.drop_index(batch_op.f("ix_deployment_allocation_id"))

    op.drop_table("deployment")
