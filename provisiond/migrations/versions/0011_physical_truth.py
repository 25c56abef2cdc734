"""Physical truth: LLDP per NIC, the cabling verdict, PDU drivers, measured power, holds

Revision ID: 0011_physical_truth
Revises: 0010_one_running_deployment
Create Date: 2026-12-06

Adds what the cabling check, the SNMP PDU driver and the power budget keep: the last
LLDP neighbour and cabling verdict per NIC, a machine's hold reason and last measured
draw, a switch's chassis MAC, a PDU's driver and SNMP settings (its secret encrypted
like a BMC password), each outlet's state and draw, and a rack's measured draw and
budget verdict. Every column has a server default or is nullable, so no row is rewritten.
"""

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
import sqlmodel.sql.sqltypes
from alembic import op

import provisiond.models.base

revision: str = "0011_physical_truth"
down_revision: str | None = "0010_one_running_deployment"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _text(name: str, length: int, default: str = "") -> sa.Column[Any]:
    return sa.Column(
        name, sqlmodel.sql.sqltypes.AutoString(length=length), nullable=False,
        server_default=default,
    )  # fmt: skip


def _when(name: str) -> sa.Column[Any]:
    return sa.Column(name, provisiond.models.base.UTCDateTime(timezone=True), nullable=True)


def _watts(name: str) -> sa.Column[Any]:
    return sa.Column(name, sa.Integer(), nullable=True)


#: table -> the columns it gains, in order
COLUMNS: dict[str, list[sa.Column[Any]]] = {
    "nic": [
        sa.Column("lldp", sa.JSON(), nullable=False, server_default="{}"),
        _when("lldp_seen_at"),
        _text("cabling", 8),
        sa.Column("cabling_detail", sa.JSON(), nullable=False, server_default="{}"),
    ],
    "machine": [
        _watts("measured_watts"),
        _text("measured_source", 8),
        _when("measured_at"),
        _text("hold_reason", 512),
    ],
    "switch": [_text("chassis_mac", 17)],
    "pdu": [
        _text("driver", 32),
        sa.Column("snmp_port", sa.Integer(), nullable=False, server_default="161"),
        _text("snmp_version", 4, "2c"),
        _text("snmp_username", 64),
        _text("snmp_auth_protocol", 16),
        _text("snmp_priv_protocol", 16),
        sa.Column("secret_encrypted", sqlmodel.sql.sqltypes.AutoString(), nullable=True),
        _watts("power_watts"),
        _when("power_read_at"),
        _text("unreachable_reason", 512),
    ],
    "outlet": [_text("state", 16, "unknown"), _watts("power_watts")],
    "rack": [_watts("measured_watts"), _when("measured_at"), _text("budget_status", 16)],
}


def upgrade() -> None:
    for table, columns in COLUMNS.items():
        with op.batch_alter_table(table, schema=None) as batch_op:
            for column in columns:
                batch_op.add_column(column)


def downgrade() -> None:
    for table, columns in reversed(COLUMNS.items()):
        with op.batch_alter_table(table, schema=None) as batch_op:
            for column in reversed(columns):
                batch_op.drop_column(column.name)
