"""Several real ``provisiond serve`` processes on one throwaway PostgreSQL database.

Each daemon has its own data dir and port, and the same secret key (so every daemon
can read the BMC passwords any of them stored). The database is a copy of the
``pg_server`` fixture's migrated template (migrated once per test run); the CLI makes
the admin token. Everything is stopped by PID and the database dropped in ``finally``,
including daemons a test left stopped with SIGSTOP.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx
from sqlalchemy import create_engine, text

from provisiond.config import Settings, load_settings
from provisiond.db import Database
from provisiond.secrets import SecretBox
from tests.support.daemon import Daemon, cli

T = TypeVar("T")

#: Small cluster timings so takeovers happen within seconds.
FAST = {
    "PROVISIOND_DAEMON_HEARTBEAT_S": "1",
    "PROVISIOND_DAEMON_DEAD_AFTER_S": "6",
    "PROVISIOND_LEADER_TTL_S": "3",
    "PROVISIOND_DRAIN_TIMEOUT_S": "10",
    "PROVISIOND_POWER_SYNC_INTERVAL_S": "600",
    "PROVISIOND_REAPER_INTERVAL_S": "2",
}


def wait_for(what: str, fn: Callable[[], T | None], timeout: float, every: float = 0.1) -> T:
    """Poll ``fn`` until it returns something truthy; bounded by ``timeout``."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        last = fn()
        if last:
            return last
        time.sleep(every)
    raise AssertionError(f"{what}: not within {timeout:g} s (last: {last!r})")


def log_events(daemon: Daemon) -> list[dict[str, Any]]:
    import json

    out = []
    for line in daemon.log_text().splitlines():
        with contextlib.suppress(ValueError):
            row = json.loads(line)
            if isinstance(row, dict):
                out.append(row)
    return out


@dataclass
class Cluster:
    server: str  # the pg_server fixture's URL (its database part is replaced)
    root: Path
    env: dict[str, str] = field(default_factory=dict)
    name: str = field(default_factory=lambda: f"c_{uuid.uuid4().hex[:12]}")
    daemons: list[Daemon] = field(default_factory=list)
    admin_token: str = ""

    @property
    def url(self) -> str:
        return self.server.rsplit("/", 1)[0] + "/" + self.name

    @property
    def key_file(self) -> Path:
        return self.root / "secret.key"

    def _admin(self, sql: str) -> None:
        """One statement on the server's admin database (CREATE/DROP DATABASE)."""
        admin = create_engine(self.server, isolation_level="AUTOCOMMIT")
        try:
            with admin.connect() as conn:
                conn.execute(text(sql))
        finally:
            admin.dispose()

    def create(self) -> None:
        self._admin(f'CREATE DATABASE "{self.name}" TEMPLATE provisiond_template')
        SecretBox.from_key_file(self.key_file)
        first = self._daemon(0)
        result = cli("token", "create", "--name", "admin", "--role", "admin", env=first.env)
        assert result.returncode == 0, result.stderr
        self.admin_token = result.stdout.strip().splitlines()[-1]

    def drop(self) -> None:
        self._admin(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')

    def _daemon(self, index: int) -> Daemon:
        data = self.root / f"d{index}"
        data.mkdir(parents=True, exist_ok=True)
        if not (data / "secret.key").exists():
            shutil.copy(self.key_file, data / "secret.key")
            os.chmod(data / "secret.key", 0o600)
        env = {"PROVISIOND_DATABASE_URL": self.url, **FAST, **self.env}
        return Daemon(data_dir=data, extra_env=env, admin_token=self.admin_token)

    def add(self, count: int = 1) -> list[Daemon]:
        """Start ``count`` more daemons at once; returns when every one is healthy."""
        out = []
        for _ in range(count):
            daemon = self._daemon(len(self.daemons))
            self.daemons.append(daemon)  # before start: torn down even if it fails
            out.append(daemon)
        with ThreadPoolExecutor(count) as pool:
            for future in [pool.submit(d.start, 90) for d in out]:
                future.result()
        return out

    def stop_all(self) -> None:
        for daemon in self.daemons:
            if daemon.proc is not None and daemon.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(daemon.proc.pid, signal.SIGCONT)  # a test may have paused it
            daemon.stop(timeout=15)

    # --- looking -------------------------------------------------------------------------

    def db(self) -> Database:
        return Database(self.url)

    def settings(self) -> Settings:
        return load_settings(None, data_dir=self.root / "d0", database_url=self.url)

    def secrets(self) -> SecretBox:
        return SecretBox.from_key_file(self.key_file, create=False)

    def running(self) -> list[Daemon]:
        return [d for d in self.daemons if d.proc is not None and d.proc.poll() is None]

    def get(self, path: str, via: Daemon | None = None) -> Any:
        daemon = via or self.running()[0]
        response = httpx.get(
            daemon.url + path,
            headers={"Authorization": f"Bearer {self.admin_token}"},
            timeout=10,
        )
        assert response.status_code == 200, response.text
        return response.json()

    def rows(self, via: Daemon | None = None) -> dict[str, dict[str, Any]]:
        """``GET /api/v1/daemons`` by daemon id."""
        return {r["id"]: r for r in self.get("/api/v1/daemons", via)}

    def id_of(self, daemon: Daemon) -> str:
        assert daemon.proc is not None
        pid = daemon.proc.pid
        rows = wait_for(
            f"daemon pid {pid} in the daemon table",
            lambda: [r for r in self.rows().values() if r["pid"] == pid],
            timeout=10,
        )
        return str(rows[-1]["id"])

    def by_id(self, daemon_id: str) -> Daemon:
        return next(d for d in self.daemons if d.proc is not None and self.id_of(d) == daemon_id)

    def roles(self, via: Daemon | None = None) -> dict[str, str]:
        """Role -> the id of the live daemon holding it."""
        out: dict[str, str] = {}
        for row in self.rows(via).values():
            for role in row["roles"]:
                assert role not in out, f"role {role} held by {out[role]} and {row['id']}"
                out[role] = row["id"]
        return out

    def metric(self, daemon: Daemon, name: str) -> float | None:
        body = httpx.get(daemon.url + "/metrics", timeout=10).text
        match = re.search(rf"^{re.escape(name)} ([0-9.e+-]+)$", body, re.M)
        return float(match.group(1)) if match else None


@contextlib.contextmanager
def running_cluster(
    server: str, root: Path, count: int, env: dict[str, str] | None = None
) -> Iterator[Cluster]:
    """``count`` daemons on a fresh database; all stopped and the database dropped after."""
    cluster = Cluster(server, root, dict(env or {}))
    cluster.create()
    try:
        cluster.add(count)
        yield cluster
    finally:
        try:
            cluster.stop_all()
        finally:
            cluster.drop()
