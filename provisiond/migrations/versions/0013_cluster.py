"""Cluster: daemons, leaderships (singleton jobs, DHCP holders), DHCP leases

Revision ID: 0013_cluster
Revises: 0012_console_sessions
Create Date: 2026-12-07

Several daemons on one PostgreSQL (provisiond.cluster): one row per running daemon
with its heartbeat at database time, one row per role that exactly one daemon holds
(with an epoch for fencing), and dnsmasq's leases so addresses survive a change of
DHCP holder.
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel.sql.sqltypes
from alembic import op

import provisiond.models.base

revision: str = "0013_cluster"
down_revision: str | None = "0012_console_sessions"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

S = sqlmodel.sql.sqltypes.AutoString


def upgrade() -> None:
    when = provisiond.models.base.UTCDateTime(timezone=True)
    op.create_table(
        "daemon",
        sa.Column("id", S(length=128), nullable=False),
        sa.Column("host", S(length=255), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("version", S(length=64), nullable=False),
        sa.Column("schema_revision", S(length=64), nullable=False),
        sa.Column("api_url", S(length=255), nullable=False, server_default=""),
        sa.Column("boot_urls", sa.JSON(), nullable=False),
        sa.Column("networks", sa.JSON(), nullable=False),
        sa.Column("state", S(length=16), nullable=False, server_default="live"),
        sa.Column("epoch", sa.Integer(), nullable=False, server_default="1"),
        sa.Column("started_at", when, nullable=False),
        sa.Column("heartbeat_at", when, nullable=False),
        sa.Column("reason", S(length=512), nullable=False, server_default=""),
        sa.Column("details", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )  # fmt: skip
    with op.batch_alter_table("daemon", schema=None) as batch_op:
        batch_op.create_index("ix_daemon_state", ["state"], unique=False)
        batch_op.create_index("ix_daemon_heartbeat_at", ["heartbeat_at"], unique=False)
    op.create_table(
        "leadership",
        sa.Column("name", S(length=128), nullable=False),
        sa.Column("holder", S(length=160), nullable=True),
        sa.Column("epoch", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("acquired_at", when, nullable=True),
        sa.Column("expires_at", when, nullable=True),
        sa.PrimaryKeyConstraint("name"),
    )  # fmt: skip
    op.create_table(
        "dhcplease",
        sa.Column("network", S(length=64), nullable=False),
        sa.Column("mac", S(length=17), nullable=False),
        sa.Column("ip", S(length=45), nullable=False),
        sa.Column("hostname", S(length=255), nullable=False, server_default=""),
        sa.Column("client_id", S(length=255), nullable=False, server_default=""),
        sa.Column("expires_at", when, nullable=True),
        sa.Column("updated_by", S(length=160), nullable=False, server_default=""),
        sa.PrimaryKeyConstraint("network", "mac"),
    )  # fmt: skip
    with op.batch_alter_table("dhcplease", schema=None) as batch_op:
        batch_op.create_index("ix_dhcplease_ip", ["ip"], unique=False)


def downgrade() -> None:
    op.drop_table("dhcplease")
    op.drop_table("leadership")
    op.drop_table("daemon")
