"""An image download records its boot phase while the body is sent, before it ends.

The image route starts the phase record alongside the body (the database round trip
was most of a download's time to first byte); the response must still end only once
the phase is written, and a failing record must cost the phase, never the download.
"""

from __future__ import annotations

import pytest
from fastapi import FastAPI
from sqlalchemy import text
from sqlmodel import select

from provisiond.container import Services
from provisiond.models import Deployment
from provisiond.netboot.images import ImageStore
from tests.api.test_boot_routes import PAYLOAD, _deploying, app, client_at, store

__all__ = ["app", "store"]  # fixtures


def test_the_fetch_is_recorded_by_the_time_the_body_ends(
    app: FastAPI, services: Services, store: ImageStore
) -> None:
    _deploying(services, "10.0.0.9")
    with client_at(app, "10.0.0.9") as machine:
        r = machine.get("/images/debian12/vmlinuz")
        assert r.status_code == 200 and r.content == PAYLOAD
        with services.db.read_session() as s:
            assert "kernel" in s.exec(select(Deployment)).one().phases
        part = machine.get("/images/debian12/initrd.img", headers={"Range": "bytes=3-"})
        assert part.status_code == 206  # a resumed download is not a new fetch
        with services.db.read_session() as s:
            assert "initrd" not in s.exec(select(Deployment)).one().phases


def test_a_failing_record_costs_the_phase_not_the_download(
    app: FastAPI, services: Services, store: ImageStore, capsys: pytest.CaptureFixture[str]
) -> None:
    _deploying(services, "10.0.0.9")
    with services.db.transaction() as s:  # the lookup by address now fails in the database
        s.exec(text("ALTER TABLE nic RENAME TO nic_gone"))  # type: ignore[call-overload]
    with client_at(app, "10.0.0.9") as machine:
        r = machine.get("/images/debian12/vmlinuz")
    assert r.status_code == 200 and r.content == PAYLOAD
    assert "image_fetch_not_recorded" in capsys.readouterr().out
