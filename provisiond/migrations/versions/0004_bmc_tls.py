"""bmc tls: bmc.tls_verify ('fingerprint' pins bmc.cert_fingerprint; 'system' uses the CA store)

Revision ID: 0004_bmc_tls
Revises: 0003_token_expiry
Create Date: 2026-12-04
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel.sql.sqltypes
from alembic import op

revision: str = "0004_bmc_tls"
down_revision: str | None = "0003_token_expiry"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("bmc", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column(
                "tls_verify",
                sqlmodel.sql.sqltypes.AutoString(length=16),
                nullable=False,
                server_default="fingerprint",  # what every existing BMC already meant
            )
        )


def downgrade() -> None:
    with op.batch_alter_table("bmc", schema=None) as batch_op:
        batch_op.drop_column("tls_verify")
