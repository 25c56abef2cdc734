"""Console sessions: the web console's signed-in browsers

Revision ID: 0012_console_sessions
Revises: 0011_physical_truth
Create Date: 2026-12-06

One row per signed-in browser (provisiond.console.auth): the SHA-256 of the cookie's
random id, the API token signed in with (deleting the token deletes its sessions),
the form token (CSRF), a one-time message, and the expiry.
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel.sql.sqltypes
from alembic import op

import provisiond.models.base

revision: str = "0012_console_sessions"
down_revision: str | None = "0011_physical_truth"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    when = provisiond.models.base.UTCDateTime(timezone=True)
    op.create_table(
        "consolesession",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("sid_hash", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("token_id", sa.Integer(), nullable=False),
        sa.Column("csrf", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column(
            "flash", sqlmodel.sql.sqltypes.AutoString(length=2048), nullable=False,
            server_default="",
        ),
        sa.Column(
            "flash_kind", sqlmodel.sql.sqltypes.AutoString(length=8), nullable=False,
            server_default="",
        ),
        sa.Column("created_at", when, nullable=False),
        sa.Column("expires_at", when, nullable=False),
        sa.ForeignKeyConstraint(["token_id"], ["apitoken.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )  # fmt: skip
    with op.batch_alter_table("consolesession", schema=None) as batch_op:
        batch_op.create_index("ix_consolesession_sid_hash", ["sid_hash"], unique=True)
        batch_op.create_index("ix_consolesession_token_id", ["token_id"], unique=False)
        batch_op.create_index("ix_consolesession_expires_at", ["expires_at"], unique=False)


def downgrade() -> None:
    op.drop_table("consolesession")
