"""CHECK constraints on the numbers that scheduling, placement and quotas trust

Revision ID: 0006_checks
Revises: 0005_event_allocation
Create Date: 2026-12-06

Table models do not validate (SQLModel skips pydantic validation for ``table=True``),
so a zero lease, a negative CPU count or a rack of height 0 reached the database from
any writer but the API. The API and the inventory file refuse them with a hint; these
constraints refuse them from everyone else.

A row that already breaks one stops the upgrade, with the rows named, before anything
is changed: a lease or a CPU count has no safe default to rewrite it to, so the
operator decides. NULL still means "unknown" and passes.

On SQLite each ``batch_alter_table`` rebuilds its table; env.py turns foreign keys off
around the migration so that the rebuild's DROP TABLE does not cascade to the rows
that reference the table.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from provisiond.errors import DatabaseNotReady

revision: str = "0006_checks"
down_revision: str | None = "0005_event_allocation"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

#: table -> [(constraint name, column, condition)]
CHECKS: dict[str, list[tuple[str, str, str]]] = {
    "allocation": [
        ("ck_allocation_lease_s_positive", "lease_s", "lease_s > 0"),
        ("ck_allocation_attempts_not_negative", "attempts", "attempts >= 0"),
    ],
    "apitoken": [
        ("ck_apitoken_quota_machines_not_negative", "quota_machines", "quota_machines >= 0"),
    ],
    "machine": [
        ("ck_machine_cpus_not_negative", "cpus", "cpus >= 0"),
        ("ck_machine_ram_mib_not_negative", "ram_mib", "ram_mib >= 0"),
        ("ck_machine_u_position_positive", "u_position", "u_position >= 1"),
        ("ck_machine_u_height_positive", "u_height", "u_height >= 1"),
        ("ck_machine_power_watts_not_negative", "power_watts", "power_watts >= 0"),
    ],
    "rack": [
        ("ck_rack_u_height_positive", "u_height", "u_height >= 1"),
        (
            "ck_rack_power_budget_watts_not_negative",
            "power_budget_watts",
            "power_budget_watts >= 0",
        ),
    ],
    "switch": [
        ("ck_switch_u_position_positive", "u_position", "u_position >= 1"),
        ("ck_switch_u_height_positive", "u_height", "u_height >= 1"),
    ],
    "pdu": [
        ("ck_pdu_u_position_positive", "u_position", "u_position >= 1"),
        ("ck_pdu_u_height_not_negative", "u_height", "u_height >= 0"),
        ("ck_pdu_capacity_watts_not_negative", "capacity_watts", "capacity_watts >= 0"),
    ],
}
#: Offending ids shown per constraint; the count says how many more.
SHOWN = 10


def upgrade() -> None:
    _refuse_rows_that_break_a_check()
    for table, checks in CHECKS.items():
        with op.batch_alter_table(table, schema=None) as batch_op:
            for name, _column, condition in checks:
                batch_op.create_check_constraint(name, condition)


def _refuse_rows_that_break_a_check() -> None:
    bind = op.get_bind()
    quote = bind.dialect.identifier_preparer.quote
    found: list[str] = []
    for table, checks in CHECKS.items():
        for name, column, condition in checks:
            rows = bind.execute(
                sa.text(
                    f"SELECT id, {quote(column)} FROM {quote(table)} "  # noqa: S608 (constants)
                    f"WHERE NOT ({condition}) ORDER BY id"
                )
            ).all()
            if rows:
                shown = ", ".join(f"{table} id {i} ({column}={v})" for i, v in rows[:SHOWN])
                more = f" and {len(rows) - SHOWN} more" if len(rows) > SHOWN else ""
                found.append(f"{shown}{more} break {name} ({condition})")
    if found:
        raise DatabaseNotReady(
            "cannot add the CHECK constraints of revision 0006_checks: " + "; ".join(found),
            hint="nothing was changed; correct or delete these rows (e.g. UPDATE machine SET "
            "cpus = NULL WHERE cpus < 0, where NULL means unknown), then run "
            "'provisiond db upgrade' again",
        )


def downgrade() -> None:
    for table, checks in CHECKS.items():
        with op.batch_alter_table(table, schema=None) as batch_op:
            for name, _column, _condition in checks:
                batch_op.drop_constraint(name, type_="check")
