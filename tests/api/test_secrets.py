"""BMC and credential-set passwords never leave the database in clear.

They must not appear in any API answer (errors included), in the logs, or in the
raw database (SQLite file and WAL, or PostgreSQL rows); the stored Fernet token
decrypts back to them.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog
from sqlalchemy import text
from sqlmodel import SQLModel, select

from provisiond import logging as plog
from provisiond.container import Services
from provisiond.models import Bmc, CredentialSet
from tests.conftest import Api

PASSWORD = "S3cr3t-Pa55-xyzzy"
ROTATED = "S3cr3t-Pa55-rotated"
SECRETS = (PASSWORD, ROTATED)


@pytest.fixture
def json_logs() -> Iterator[None]:
    """provisiond's JSON logging at debug level, restored afterwards."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    plog.configure("debug")
    try:
        yield
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
        structlog.reset_defaults()


def db_bytes(services: Services) -> bytes:
    """Everything the database holds, as bytes: the files on SQLite, every row on PostgreSQL."""
    if services.db.is_sqlite:
        main = Path(services.db.url.removeprefix("sqlite:///"))
        files = [main, main.with_name(main.name + "-wal"), main.with_name(main.name + "-shm")]
        return b"".join(f.read_bytes() for f in files if f.exists())
    chunks = []
    with services.db.engine.connect() as conn:
        for table in SQLModel.metadata.sorted_tables:
            query = f'SELECT t::text FROM "{table.name}" t'  # noqa: S608  (our own table names)
            rows = conn.execute(text(query)).scalars()
            chunks += [row.encode() for row in rows]
    return b"\n".join(chunks)


def test_passwords_stay_secret(
    api: Api,
    services: Services,
    json_logs: None,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    caplog.set_level(logging.DEBUG)
    op = api.operator
    answers = []

    def call(method: str, path: str, status: int, **kw: object) -> None:
        r = op.request(method, path, **kw)
        assert r.status_code == status, r.text
        answers.append(r.text)

    bmc: dict[str, Any] = {
        "address": "127.0.0.1",
        "port": 6230,
        "username": "admin",
        "password": PASSWORD,
    }
    machine: dict[str, Any] = {"name": "m1", "nics": [{"mac": "aa:00:00:00:00:01"}], "bmc": bmc}
    cred = {"name": "dc1", "username": "ADMIN", "password": PASSWORD}
    call("POST", "/api/v1/credentials", 201, json=cred)
    call("POST", "/api/v1/machines", 201, json=machine)
    # Refused requests that carry the password must not echo it either.
    call("POST", "/api/v1/machines", 409, json=machine)
    call("POST", "/api/v1/machines", 422, json={**machine, "name": "m2", "cpus": "many"})
    call("POST", "/api/v1/machines", 422, json={**machine, "bmc": {**bmc, "port": 0}})
    call("POST", "/api/v1/credentials", 409, json=cred)
    call("POST", "/api/v1/credentials", 422, json={**cred, "name": "bad name"})
    call("PATCH", "/api/v1/machines/m1", 200, json={"bmc": {"username": "root"}})
    call("PATCH", "/api/v1/credentials/dc1", 200, json={"password": ROTATED})
    call("POST", "/api/v1/machines/m1/events", 200, json={"event": "manage"})
    for path in (
        "/api/v1/machines",
        "/api/v1/machines/m1",
        "/api/v1/credentials",
        "/api/v1/credentials/dc1",
        "/api/v1/events?limit=1000",
        "/api/v1/inventory/export",
    ):
        call("GET", path, 200)
    assert '"password_set":true' in answers[1]
    assert "m1" in answers[-1]  # the export did list the machine

    with services.db.read_session() as s:
        stored = s.exec(select(Bmc.secret_encrypted)).one()
        stored_cred = s.exec(select(CredentialSet.secret_encrypted)).one()
    assert stored is not None
    assert services.secrets.decrypt(stored) == PASSWORD
    assert services.secrets.decrypt(stored_cred) == ROTATED

    raw = db_bytes(services)
    assert stored.encode() in raw  # proves we read the place the rows live
    logs = capsys.readouterr()
    assert '"event"' in logs.err or caplog.records  # logging was live
    for secret in SECRETS:
        for answer in answers:
            assert secret not in answer
        assert secret not in caplog.text
        assert all(secret not in str(r.__dict__) for r in caplog.records)
        assert secret not in logs.out and secret not in logs.err
        assert secret.encode() not in raw
