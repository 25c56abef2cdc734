"""`provisiond serve` as a real process: start, JSON logs, clean stop, clear start-up errors."""

from __future__ import annotations

import json
import signal
import socket
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.daemon import Daemon, cli


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemon]:
    d = Daemon(tmp_path / "data")
    d.prepare()
    try:
        yield d
    finally:
        d.stop(signal.SIGKILL)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_serve_answers_and_stops_cleanly(daemon: Daemon, sig: int) -> None:
    daemon.start()
    health = httpx.get(daemon.url + "/healthz").json()
    assert health["status"] == "ok" and health["checks"]["db"] == "ok"
    headers = {"Authorization": f"Bearer {daemon.admin_token}"}
    assert httpx.get(daemon.url + "/api/v1/racks", headers=headers).status_code == 200
    assert httpx.get(daemon.url + "/api/v1/racks").status_code == 401
    assert httpx.get(daemon.url + "/metrics").status_code == 200
    assert httpx.get(daemon.url + "/docs").status_code == 200
    assert daemon.stop(sig) == 0
    lines = [json.loads(line) for line in daemon.log_text().splitlines() if line.strip()]
    events = [entry["event"] for entry in lines]
    assert "provisiond_started" in events and events[-1] == "provisiond_stopped"
    assert all("level" in entry and "timestamp" in entry for entry in lines)


def test_token_is_printed_once_and_stored_hashed(daemon: Daemon) -> None:
    token = daemon.admin_token
    assert token.startswith("pvd_") and len(token) > 40
    db = sqlite3.connect(daemon.data_dir / "provisiond.db")
    rows = db.execute("SELECT name, role, token_hash, prefix FROM apitoken").fetchall()
    db.close()
    assert [(r[0], r[1]) for r in rows] == [("admin", "admin")]
    raw = b"".join(p.read_bytes() for p in daemon.data_dir.glob("provisiond.db*"))
    assert token.encode() not in raw
    again = cli("token", "create", "--name", "admin", "--role", "admin", env=daemon.env)
    assert again.returncode == 1 and "exists" in again.stderr and "Traceback" not in again.stderr
    bad = cli("token", "create", "--name", "x", "--role", "root", env=daemon.env)
    assert bad.returncode == 1 and "admin, operator, ci" in bad.stderr


def test_unmigrated_database_is_refused_with_the_command(tmp_path: Path) -> None:
    d = Daemon(tmp_path / "fresh")
    result = cli("serve", env=d.env, timeout=30)
    assert result.returncode == 1
    assert "provisiond db upgrade" in result.stderr
    assert "Traceback" not in result.stderr


def test_bad_config_fails_at_start_up(tmp_path: Path) -> None:
    cfg = tmp_path / "p.toml"
    cfg.write_text("reaper_interval_s = -1\n")
    d = Daemon(tmp_path / "data")
    result = cli("serve", "--config", str(cfg), env=d.env)
    assert result.returncode == 1
    assert "reaper_interval_s = -1: Input should be greater than 0" in result.stderr
    assert "Traceback" not in result.stderr


def test_port_in_use_is_a_clear_error(daemon: Daemon) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", daemon.port))
        holder.listen()
        result = cli("serve", env=daemon.env, timeout=30)
    assert result.returncode == 1
    assert f"cannot listen on 127.0.0.1:{daemon.port}" in result.stderr
    assert "Traceback" not in result.stderr
