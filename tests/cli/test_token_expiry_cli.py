"""``provisiond token create --expires`` and ``token list`` against a real daemon (SQLite)."""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from sqlmodel import select

from provisiond.db import Database
from provisiond.models import Event, utcnow
from tests.support.daemon import Daemon, cli

pytestmark = pytest.mark.slow  # a daemon and a dozen CLI processes


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemon]:
    d = Daemon(tmp_path / "data")
    d.prepare()
    try:
        yield d
    finally:
        d.stop(signal.SIGKILL)


def test_bad_expiry_is_refused_with_a_hint(daemon: Daemon) -> None:
    for value, why in (
        ("90x", "is neither a duration nor an ISO 8601 date"),
        ("2001-01-01", "is not in the future"),
    ):
        r = cli("token", "create", "-n", "bad", "--expires", value, env=daemon.env)
        assert r.returncode == 1, r.stdout
        assert f"error: expires: {value!r} {why}" in r.stderr, r.stderr
        assert "hint: give a duration such as 90d" in r.stderr and "Traceback" not in r.stderr
    listed = json.loads(cli("token", "list", "--json", env=daemon.env).stdout)
    assert [t["name"] for t in listed] == ["admin"]


def test_expired_token_is_refused_listed_and_audited(daemon: Daemon) -> None:
    r = cli("token", "create", "-n", "long", "--expires", "90d", "--json", env=daemon.env)
    assert r.returncode == 0, r.stderr
    later = datetime.fromisoformat(json.loads(r.stdout)["expires_at"])
    assert abs(later - (utcnow() + timedelta(days=90))) < timedelta(minutes=1)
    r = cli("token", "create", "-n", "brief", "-r", "operator", "--expires", "1s", env=daemon.env)
    assert r.returncode == 0, r.stderr
    assert "token brief (operator, expires " in r.stdout
    brief = {**daemon.env, "PROVISIOND_TOKEN": r.stdout.strip().splitlines()[-1]}

    daemon.start()
    time.sleep(1.1)  # past the one second it was given
    for _ in range(3):
        r = cli("machines", "list", env=brief)
        assert r.returncode == 1, r.stdout
    assert "error: token 'brief' expired at " in r.stderr
    assert "[token_expired, HTTP 401]" in r.stderr
    assert "hint: ask an admin for a new token" in r.stderr
    assert cli("machines", "list", env=daemon.env).returncode == 0  # the admin's still works

    out = cli("token", "list", env={**daemon.env, "COLUMNS": "200"}).stdout
    rows = {line.split("│")[1].strip(): line for line in out.splitlines() if "│" in line}
    assert rows["admin"].rstrip(" │").endswith("never"), out
    assert "(expired)" in rows["brief"] and "(expired)" not in rows["long"], out
    assert f"{later:%Y-%m-%d %H:%M:%S} UTC" in rows["long"], out

    assert daemon.stop() == 0  # the daemon writes the noted uses as it stops
    db = Database(f"sqlite:///{daemon.data_dir / 'provisiond.db'}")
    try:
        with db.read_session() as session:
            events = session.exec(select(Event).where(Event.event == "token_expired_use")).all()
    finally:
        db.dispose()
    assert [(e.actor, e.details["count"]) for e in events] == [("token:brief", 3)]
