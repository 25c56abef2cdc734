"""A write that cannot get SQLite's write slot in time is a 503 with a hint, not a 500,
and leaves nothing half-written."""

from __future__ import annotations

import shutil
import threading
from pathlib import Path

from fastapi.testclient import TestClient
from sqlalchemy import text

from provisiond.api import create_app
from provisiond.auth import create_token
from provisiond.config import load_settings
from provisiond.container import Services
from provisiond.db import Database
from provisiond.secrets import SecretBox


def _hold_write_slot(db: Database, held: threading.Event, release: threading.Event) -> None:
    with db.transaction() as session:
        session.execute(text("SELECT 1"))  # begins: takes the write slot
        held.set()
        release.wait(10)


def test_a_write_without_a_write_slot_is_a_503(sqlite_template: Path, tmp_path: Path) -> None:
    path = tmp_path / "busy.db"
    shutil.copy(sqlite_template, path)
    db = Database(f"sqlite:///{path}", busy_timeout_s=0.5)
    settings = load_settings(None, data_dir=tmp_path / "data", database_url=db.url)
    services = Services(
        settings=settings,
        db=db,
        secrets=SecretBox.from_key_file(settings.key_file),
        instance="test",
    )
    with db.transaction() as session:
        _, token = create_token(session, name="op", role="operator")
    headers = {"Authorization": f"Bearer {token}"}
    held, release = threading.Event(), threading.Event()
    holder = threading.Thread(target=_hold_write_slot, args=(db, held, release))
    holder.start()
    try:
        assert held.wait(5)
        with TestClient(create_app(services), raise_server_exceptions=False) as client:
            busy = client.post("/api/v1/machines", json={"name": "n1"}, headers=headers)
            release.set()
            holder.join(5)
            again = client.post("/api/v1/machines", json={"name": "n1"}, headers=headers)
            listed = client.get("/api/v1/machines", headers=headers).json()
    finally:
        release.set()
        holder.join(5)
        services.close()
    assert busy.status_code == 503, busy.text
    assert busy.json()["error"]["code"] == "database_busy"
    assert busy.json()["error"]["hint"] == "retry shortly"
    assert again.status_code == 201, again.text  # the retry works, and it is the only one
    assert [m["name"] for m in listed] == ["n1"]
