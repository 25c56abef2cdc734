"""The iPXE script route reads first and writes only when something is due (issue 11, 7).

On SQLite every write transaction queues for the one write slot, so a boot storm of
machines that only need ``local`` or ``poweroff`` must not take it. Write
transactions are counted with a ``begin`` listener on every engine, skipping the
connections :mod:`provisiond.db` marks read-only, on SQLite and PostgreSQL.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, event
from sqlalchemy.engine import Connection
from sqlmodel import select

from provisiond.api import create_app
from provisiond.container import Services
from provisiond.deploy import records as deploy
from provisiond.lifecycle import Ev, advance
from provisiond.models import Deployment, Image, Machine
from tests.api.test_agent_api import make_machine

MAC = "52:54:00:7a:00:01"
#: The option provisiond.db sets on its read-only engines.
READ_ONLY = "provisiond_read_only"


@contextmanager
def write_transactions() -> Iterator[list[str]]:
    """Every read-write transaction begun on any engine while the block runs."""
    begun: list[str] = []

    def note(conn: Connection) -> None:
        if not conn.get_execution_options().get(READ_ONLY, False):
            begun.append(conn.engine.url.render_as_string())

    event.listen(Engine, "begin", note)
    try:
        yield begun
    finally:
        event.remove(Engine, "begin", note)


@pytest.fixture
def client(services: Services) -> Iterator[TestClient]:
    with services.db.transaction() as s:
        for name in ("inspect", "debian12"):
            s.add(Image(name=name, kernel=f"{name}/vmlinuz", initrd=f"{name}/initrd.img"))
    with TestClient(
        create_app(services), raise_server_exceptions=False, client=("10.0.0.5", 40000)
    ) as c:
        yield c


def script(client: TestClient) -> str:
    r = client.get(f"/boot/{MAC}.ipxe")
    assert r.status_code == 200, r.text
    return str(r.text)


@pytest.mark.parametrize(
    ("state", "kind"),
    [("available", "poweroff"), ("active", "sanboot"), ("installing_agent", "sanboot")],
)
def test_a_resting_machine_takes_no_write_slot(
    client: TestClient, services: Services, state: str, kind: str
) -> None:
    make_machine(services, "rest-1", state, macs=(MAC,))
    with write_transactions() as begun:
        text = script(client)
        script(client)
    assert kind in text
    assert begun == []


def test_writes_happen_once_when_a_phase_is_due(client: TestClient, services: Services) -> None:
    # an unknown MAC: enrolled and put into inspection (one write), then only read
    with write_transactions() as begun:
        first = script(client)
    assert "/images/inspect/vmlinuz" in first and len(begun) == 1
    with write_transactions() as begun:
        again = [script(client) for _ in range(3)]
    assert again == [first] * 3 and begun == []
    with services.db.read_session() as s:
        record = s.exec(select(Deployment)).one()
        assert "ipxe_script" in record.phases


def test_a_deploying_machine_records_its_script_phase_once(
    client: TestClient, services: Services
) -> None:
    make_machine(services, "dep-1", "available", macs=(MAC,))
    with services.db.transaction() as s:
        m = s.exec(select(Machine)).one()
        advance(s, m, Ev.ALLOCATE, actor="test")
        image_id = s.exec(select(Image.id).where(Image.name == "debian12")).one()
        deploy.start_deploy(
            s,
            m,
            allocation=None,
            image_id=image_id,
            actor="test",
            settings=services.settings,
            secrets=services.secrets,
        )
    with write_transactions() as begun:
        first = script(client)
    assert "/images/debian12/vmlinuz" in first and len(begun) == 1
    with write_transactions() as begun:
        assert script(client) == first
    assert begun == []
    with services.db.read_session() as s:
        assert "ipxe_script" in s.exec(select(Deployment)).one().phases
