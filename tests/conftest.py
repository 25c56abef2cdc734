"""Shared fixtures. ``db`` runs each test on SQLite and on a throwaway PostgreSQL 15.

Set PROVISIOND_TEST_PG_URL to use an existing server instead; set
PROVISIOND_TEST_BACKENDS=sqlite to skip PostgreSQL locally (CI always runs both).
"""

from __future__ import annotations

import os
import shutil
import signal
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, text

from provisiond.api import create_app
from provisiond.auth import create_token
from provisiond.config import Settings, load_settings
from provisiond.container import Services
from provisiond.db import Database
from provisiond.secrets import SecretBox
from tests.support import pg
from tests.support.ipmisim import IpmiSim, running_sims

BACKENDS = os.environ.get("PROVISIOND_TEST_BACKENDS", "sqlite,postgres").split(",")


def _interrupt(_sig: int, _frame: object) -> None:
    raise KeyboardInterrupt


# A CI time-out sends SIGTERM: turn it into an interrupt so fixtures still tear down
# (the PostgreSQL cluster, simulators, daemons) instead of being left running.
signal.signal(signal.SIGTERM, _interrupt)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[str]:
    """A PostgreSQL server URL (database part to be replaced) with a migrated template DB."""
    url = os.environ.get("PROVISIOND_TEST_PG_URL")
    cluster = None
    if not url:
        if not pg.available():
            if os.environ.get("CI"):
                pytest.fail("PostgreSQL 15 binaries are missing; .ci/run must install them")
            pytest.skip("PostgreSQL 15 is not installed (apt-get install postgresql-15)")
        cluster = pg.start_cluster()
        url = cluster.url()
    admin = create_engine(url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text("DROP DATABASE IF EXISTS provisiond_template"))
        conn.execute(text("CREATE DATABASE provisiond_template"))
    template = Database(url.rsplit("/", 1)[0] + "/provisiond_template")
    template.upgrade()
    template.dispose()
    try:
        yield url
    finally:
        admin.dispose()
        if cluster is not None:
            cluster.stop()


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("template") / "template.db"
    db = Database(f"sqlite:///{path}")
    db.upgrade()
    db.dispose()
    return path


def _database(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    if backend == "sqlite":
        path = tmp_path / "provisiond.db"
        shutil.copy(request.getfixturevalue("sqlite_template"), path)
        db = Database(f"sqlite:///{path}", busy_timeout_s=30)
        yield db
        db.dispose()
        return
    server: str = request.getfixturevalue("pg_server")
    name = f"t_{uuid.uuid4().hex[:12]}"
    admin = create_engine(server, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}" TEMPLATE provisiond_template'))
    db = Database(server.rsplit("/", 1)[0] + "/" + name)
    try:
        yield db
    finally:
        db.dispose()
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(params=[b for b in ("sqlite", "postgres") if b in BACKENDS])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    """A migrated, empty database: once on SQLite and once on PostgreSQL."""
    yield from _database(request.param, request, tmp_path)


@pytest.fixture
def sqlite_db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    yield from _database("sqlite", request, tmp_path)


@pytest.fixture
def settings(tmp_path: Path, db: Database) -> Settings:
    return load_settings(None, data_dir=tmp_path / "data", database_url=db.url)


@pytest.fixture
def services(settings: Settings, db: Database) -> Iterator[Services]:
    services = Services(
        settings=settings,
        db=db,
        secrets=SecretBox.from_key_file(settings.key_file),
        instance="test",
    )
    yield services
    services.close()  # retire BMC sessions so a later test's BMC on a reused port starts clean


class Api:
    """A TestClient that speaks as a given role: ``api.as_("operator").post(...)``."""

    def __init__(self, client: TestClient, tokens: dict[str, str]) -> None:
        self.client = client
        self.tokens = tokens

    def as_(self, role: str | None) -> _RoleClient:
        return _RoleClient(self.client, self.tokens.get(role or "", ""))

    @property
    def admin(self) -> _RoleClient:
        return self.as_("admin")

    @property
    def operator(self) -> _RoleClient:
        return self.as_("operator")

    @property
    def ci(self) -> _RoleClient:
        return self.as_("ci")

    @property
    def anonymous(self) -> _RoleClient:
        return self.as_(None)


class _RoleClient:
    def __init__(self, client: TestClient, token: str) -> None:
        self._client = client
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        headers = {**self._headers, **kwargs.pop("headers", {})}
        return self._client.request(method, path, headers=headers, **kwargs)

    def get(self, path: str, **kw: Any) -> Any:
        return self.request("GET", path, **kw)

    def post(self, path: str, **kw: Any) -> Any:
        return self.request("POST", path, **kw)

    def patch(self, path: str, **kw: Any) -> Any:
        return self.request("PATCH", path, **kw)

    def put(self, path: str, **kw: Any) -> Any:
        return self.request("PUT", path, **kw)

    def delete(self, path: str, **kw: Any) -> Any:
        return self.request("DELETE", path, **kw)


@pytest.fixture
def api(services: Services) -> Iterator[Api]:
    tokens: dict[str, str] = {}
    with services.db.transaction() as session:
        for role in ("admin", "operator", "ci"):
            _, tokens[role] = create_token(session, name=f"test-{role}", role=role)
    with TestClient(create_app(services), raise_server_exceptions=False) as client:
        yield Api(client, tokens)


@pytest.fixture
def ipmi_sim(tmp_path: Path) -> Iterator[IpmiSim]:
    """One OpenIPMI ipmi_sim BMC (user admin, password password) on a loopback port."""
    with running_sims(tmp_path / "ipmi_sim", 1) as sims:
        yield sims[0]


@pytest.fixture
def ipmi_sims(tmp_path: Path) -> Iterator[list[IpmiSim]]:
    """Two ipmi_sim BMCs on loopback ports."""
    with running_sims(tmp_path / "ipmi_sim", 2) as sims:
        yield sims
