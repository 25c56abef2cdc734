"""CHECK constraints: the database refuses values that would corrupt scheduling.

Table models do not validate (SQLModel skips pydantic validation for ``table=True``),
so ``Field(ge=...)`` on them is documentation. The API schemas and the inventory spec
refuse bad values with a hint (tests/api/test_bad_values.py); these constraints are the
floor under every other writer: a CLI command, a script, a bug. Migration 0006 adds
them, and a row that already breaks one stops the upgrade with the row named.
"""

from __future__ import annotations

from typing import Any

import pytest
from alembic import command
from sqlalchemy import CheckConstraint, MetaData, Table, inspect, select, update
from sqlalchemy.exc import IntegrityError
from sqlmodel import SQLModel

from provisiond.api.app import _CHECK
from provisiond.db import Database
from provisiond.errors import DatabaseNotReady
from provisiond.models import (
    Allocation,
    ApiToken,
    Bmc,
    Deployment,
    Event,
    Image,
    Machine,
    Nic,
    Outlet,
    Pdu,
    Rack,
    Switch,
    SwitchPort,
)

BEFORE = "0005_event_allocation"

#: (constraint, table, column, refused, accepted)
CASES = [
    ("ck_allocation_lease_s_positive", "allocation", "lease_s", 0, 1),
    ("ck_allocation_attempts_not_negative", "allocation", "attempts", -1, 0),
    ("ck_machine_cpus_not_negative", "machine", "cpus", -1, 0),
    ("ck_machine_ram_mib_not_negative", "machine", "ram_mib", -1, 0),
    ("ck_machine_u_position_positive", "machine", "u_position", 0, 1),
    ("ck_machine_u_height_positive", "machine", "u_height", 0, 1),
    ("ck_machine_power_watts_not_negative", "machine", "power_watts", -1, 0),
    ("ck_rack_u_height_positive", "rack", "u_height", 0, 1),
    ("ck_rack_power_budget_watts_not_negative", "rack", "power_budget_watts", -1, 0),
    ("ck_switch_u_position_positive", "switch", "u_position", 0, 1),
    ("ck_switch_u_height_positive", "switch", "u_height", 0, 1),
    ("ck_pdu_u_position_positive", "pdu", "u_position", 0, 1),
    ("ck_pdu_u_height_not_negative", "pdu", "u_height", -1, 0),
    ("ck_pdu_capacity_watts_not_negative", "pdu", "capacity_watts", -1, 0),
    ("ck_apitoken_quota_machines_not_negative", "apitoken", "quota_machines", -1, 0),
]


def _table(name: str) -> Table:
    return SQLModel.metadata.tables[name]


def _rows(db: Database) -> dict[str, int]:
    """One row in every table the checks cover, plus the rows that hang off a machine
    (NIC, BMC, deployment, outlet, port), which a table rebuild must not lose."""
    with db.transaction() as session:
        rack = Rack(name="r1")
        token = ApiToken(name="t1", role="ci", token_hash="0" * 64, prefix="pfx")
        image = Image(name="img", kernel="vmlinuz", initrd="initrd.img")
        session.add_all([rack, token, image])
        session.flush()
        machine = Machine(name="m1", rack_id=rack.id, u_position=3, cpus=4, ram_mib=8192)
        switch = Switch(name="s1", rack_id=rack.id, u_position=40)
        pdu = Pdu(name="p1", rack_id=rack.id, capacity_watts=5000)
        session.add_all([machine, switch, pdu])
        session.flush()
        port = SwitchPort(switch_id=switch.id or 0, name="swp1")
        session.add(port)
        session.flush()
        allocation = Allocation(owner_token_id=token.id or 0, image_id=image.id,
                                machine_id=machine.id, state="deploying")  # fmt: skip
        session.add(allocation)
        session.flush()
        session.add_all(
            [
                Nic(machine_id=machine.id or 0, mac="52:54:00:00:00:01", switch_port_id=port.id),
                Bmc(machine_id=machine.id or 0, address="10.0.3.17"),
                Outlet(pdu_id=pdu.id or 0, number=1, machine_id=machine.id),
                Deployment(machine_id=machine.id or 0, allocation_id=allocation.id),
                Event(kind="allocation", machine_id=machine.id, allocation_id=allocation.id),
            ]
        )
        ids = {"rack": rack.id, "apitoken": token.id, "machine": machine.id, "switch": switch.id,
               "pdu": pdu.id, "allocation": allocation.id}  # fmt: skip
    return {table: row_id for table, row_id in ids.items() if row_id is not None}


def _set(db: Database, table: str, row_id: int, column: str, value: Any) -> None:
    t = _table(table)
    with db.transaction() as session:
        session.execute(update(t).where(t.c.id == row_id).values({column: value}))


def _everything(
    db: Database, only: dict[str, set[str]] | None = None
) -> dict[str, list[dict[str, Any]]]:
    """Every row of every table as the database has it now (reflected, so a downgrade's
    missing columns are not asked for), optionally only the columns in ``only``."""
    meta = MetaData()
    with db.engine.connect() as conn:
        meta.reflect(conn)
        out = {}
        for name, t in meta.tables.items():
            if name == "alembic_version":
                continue
            keep = only.get(name, set()) if only is not None else set(t.c.keys())
            rows = conn.execute(select(t).order_by(*t.primary_key.columns)).mappings()
            out[name] = [{k: v for k, v in row.items() if k in keep} for row in rows]
        return out


def _columns(db: Database) -> dict[str, set[str]]:
    meta = MetaData()
    with db.engine.connect() as conn:
        meta.reflect(conn)
    return {name: set(t.c.keys()) for name, t in meta.tables.items()}


@pytest.mark.parametrize(("name", "table", "column", "bad", "good"), CASES)
def test_a_direct_write_of_a_bad_value_is_refused_by_the_database(
    db: Database, name: str, table: str, column: str, bad: int, good: int
) -> None:
    ids = _rows(db)
    _set(db, table, ids[table], column, good)  # the boundary itself is allowed
    with pytest.raises(IntegrityError) as exc:
        _set(db, table, ids[table], column, bad)
    assert name in str(exc.value.orig)
    # the API's IntegrityError handler reads the constraint's name: 422, not a 409
    found = _CHECK.search(str(exc.value.orig))
    assert found is not None and found.group(1) == name, str(exc.value.orig)
    with db.engine.connect() as conn:
        t = _table(table)
        assert conn.execute(select(t.c[column]).where(t.c.id == ids[table])).scalar() == good


def test_null_still_means_unknown(db: Database) -> None:
    ids = _rows(db)
    for column in ("cpus", "ram_mib", "u_position", "power_watts"):
        _set(db, "machine", ids["machine"], column, None)
    _set(db, "apitoken", ids["apitoken"], "quota_machines", None)


def test_the_database_has_the_checks_the_models_declare(db: Database) -> None:
    inspector = inspect(db.engine)
    for name, table in SQLModel.metadata.tables.items():
        declared = {c.name for c in table.constraints if isinstance(c, CheckConstraint)}
        found = {c["name"] for c in inspector.get_check_constraints(name) if c["name"]}
        assert found == declared, name
    assert {c[0] for c in CASES} <= {
        c.name for t in SQLModel.metadata.tables.values() for c in t.constraints if c.name
    }


def test_upgrade_names_the_rows_that_break_a_new_check_and_changes_nothing(db: Database) -> None:
    ids = _rows(db)
    command.downgrade(db._alembic_config(), BEFORE)
    _set(db, "machine", ids["machine"], "cpus", -4)
    _set(db, "allocation", ids["allocation"], "lease_s", 0)
    before = _everything(db)

    with pytest.raises(DatabaseNotReady) as exc:
        db.upgrade()
    message = exc.value.message
    assert f"machine id {ids['machine']} (cpus=-4)" in message
    assert "ck_machine_cpus_not_negative" in message
    assert f"allocation id {ids['allocation']} (lease_s=0)" in message
    assert "provisiond db upgrade" in exc.value.hint
    assert db.current_revision() == BEFORE
    assert _everything(db) == before

    _set(db, "machine", ids["machine"], "cpus", None)
    _set(db, "allocation", ids["allocation"], "lease_s", 3600)
    assert db.upgrade() == (BEFORE, db.head_revision())


def test_upgrade_and_downgrade_keep_every_row_and_foreign_keys_stay_on(db: Database) -> None:
    # On SQLite a batch migration rebuilds each table (copy, DROP, rename): with foreign
    # keys on, the DROP would run the children's ON DELETE CASCADE / SET NULL.
    _rows(db)
    head = _everything(db)
    command.downgrade(db._alembic_config(), BEFORE)
    older = _columns(db)  # a later revision may have added columns: compare the rest
    assert _everything(db, older) == {
        name: [{k: v for k, v in row.items() if k in older.get(name, set())} for row in rows]
        for name, rows in head.items()
        if name in older
    }
    db.upgrade()
    assert _everything(db) == head
    if db.dialect == "sqlite":
        # Every pooled connection, the migration's included, has its foreign keys back on.
        held = [db.engine.raw_connection() for _ in range(db.engine.pool.checkedin() + 1)]  # type: ignore[attr-defined]
        try:
            assert [c.cursor().execute("PRAGMA foreign_keys").fetchone() for c in held] == [
                (1,)
            ] * len(held)
        finally:
            for c in held:
                c.close()
    with pytest.raises(IntegrityError), db.transaction() as session:
        session.add(Nic(machine_id=987654, mac="52:54:00:00:00:99"))


def test_a_failed_foreign_key_check_leaves_sqlite_at_the_old_revision(sqlite_db: Database) -> None:
    """The foreign-key check runs before the migration commits: a dangling row stops the
    upgrade with nothing changed, the revision included (it used to be committed)."""
    command.downgrade(sqlite_db._alembic_config(), BEFORE)
    raw = sqlite_db.engine.raw_connection()
    try:
        cur = raw.cursor()
        cur.execute("PRAGMA foreign_keys = OFF")
        cur.execute(
            "INSERT INTO nic (machine_id, mac, pxe, name, ip_address) "
            "VALUES (424242, 'm', 0, 'x', '')"
        )
        raw.commit()
        cur.execute("PRAGMA foreign_keys = ON")
    finally:
        raw.close()
    with pytest.raises(DatabaseNotReady) as exc:
        sqlite_db.upgrade()
    assert "reference missing rows" in exc.value.message
    assert sqlite_db.current_revision() == BEFORE
