"""Unknown-MAC enrollment is capped per network (issue 11, defect 6).

``GET /boot/{mac}.ipxe`` for an unknown MAC enrolls a machine without a token, so a
script or a misbehaving switch could fill the database. Per provisioning network
(found from the listener's address, else the client's subnet) at most
``enroll_max_per_minute`` machines are enrolled via PXE per minute and at most
``enroll_max_pending`` PXE-enrolled machines wait for their first inspection; past
either the machine gets an iPXE script that says why and tries again later, a
counter goes up, and one event per network and minute says so. The counts come from
the database, so they hold across daemons. ``auto_enroll = false`` enrolls nothing.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlmodel import col, func, select

from provisiond.api import create_app
from provisiond.config import Settings, load_settings
from provisiond.container import Services
from provisiond.db import Database
from provisiond.lifecycle import Ev, advance
from provisiond.models import Event, Image, Machine
from provisiond.secrets import SecretBox
from tests.api.test_boot_reads import write_transactions
from tests.unit.test_ipxe_golden import check_golden

NETWORKS = [
    {"name": "prov-a", "interface": "br-a", "subnet": "10.1.0.0/24", "boot_address": "10.1.0.1"},
    {"name": "prov-b", "interface": "br-b", "subnet": "10.2.0.0/24", "boot_address": "10.2.0.1"},
]
ON_A, ON_B = "10.1.0.50", "10.2.0.50"


@pytest.fixture
def limits(request: pytest.FixtureRequest) -> dict[str, Any]:
    return getattr(request, "param", {})


@pytest.fixture
def settings(tmp_path: Path, db: Database, limits: dict[str, Any]) -> Settings:
    nets = [{**n, "dhcp_mode": "off"} for n in NETWORKS]
    return load_settings(
        None, data_dir=tmp_path / "data", database_url=db.url, networks=nets, **limits
    )


@pytest.fixture
def app_services(services: Services) -> Services:
    with services.db.transaction() as s:
        s.add(Image(name="inspect", kernel="inspect/vmlinuz", initrd="inspect/initrd.img"))
    return services


def client_at(services: Services, address: str) -> TestClient:
    return TestClient(create_app(services), raise_server_exceptions=False, client=(address, 4000))


def mac(i: int) -> str:
    return f"52:54:00:ee:00:{i:02x}"


def boot(client: TestClient, i: int) -> str:
    r = client.get(f"/boot/{mac(i)}.ipxe")
    assert r.status_code == 200, r.text
    assert r.text.startswith("#!ipxe\n")
    return str(r.text)


def machines(services: Services) -> int:
    with services.db.read_session() as s:
        return int(s.exec(select(func.count()).select_from(Machine)).one())


def refused_events(services: Services) -> list[dict[str, Any]]:
    with services.db.read_session() as s:
        rows = s.exec(select(Event).where(Event.event == "enroll_refused").order_by(col(Event.id)))
        return [e.details for e in rows]


def refused(services: Services, network: str, reason: str) -> float:
    labels = {"network": network, "reason": reason}
    return services.registry.get_sample_value("provisiond_enroll_refused_total", labels) or 0.0


def a_minute_passes(services: Services) -> None:
    with services.db.transaction() as s:
        for e in s.exec(select(Event)):
            e.at -= timedelta(seconds=61)
            s.add(e)


@pytest.mark.parametrize("limits", [{"enroll_max_per_minute": 2}], indirect=True)
def test_the_rate_is_capped_per_network(app_services: Services) -> None:
    services = app_services
    with client_at(services, ON_A) as a, client_at(services, ON_B) as b:
        texts = [boot(a, i) for i in range(5)]
        assert all("/images/inspect/vmlinuz" in t for t in texts[:2])
        for i, text in enumerate(texts[2:], start=2):
            assert "enroll_max_per_minute" in text and "/images/" not in text
            assert f"chain http://testserver/boot/{mac(i)}.ipxe" in text
        golden = texts[2].replace(mac(2), "52:54:00:12:34:56").replace("ee0002", "123456")
        check_golden("unknown-enroll-paused", golden)
        assert machines(services) == 2
        # the other network has its own budget
        assert "/images/inspect/vmlinuz" in boot(b, 10)
        assert machines(services) == 3
        # one event per network and minute, a count for every refused request
        assert refused_events(services) == [
            {"network": "prov-a", "reason": "rate", "mac": mac(2), "limit": 2}
        ]
        assert refused(services, "prov-a", "rate") == 3
        assert refused(services, "prov-b", "rate") == 0
        # a minute later there is room again
        a_minute_passes(services)
        assert "/images/inspect/vmlinuz" in boot(a, 2)
        assert machines(services) == 4


@pytest.mark.parametrize("limits", [{"enroll_max_pending": 2}], indirect=True)
def test_machines_waiting_for_inspection_are_capped(app_services: Services) -> None:
    services = app_services
    with client_at(services, ON_A) as a:
        assert ["/images/" in boot(a, i) for i in range(3)] == [True, True, False]
        text = boot(a, 2)
        assert "enroll_max_pending" in text and "2 machines" in text
        assert machines(services) == 2
        with services.db.transaction() as s:
            first = s.exec(select(Machine).order_by(col(Machine.id))).first()
            assert first is not None and first.state == "inspecting"
            advance(s, first, Ev.DONE, actor="test")  # inspected: no longer pending
        assert "/images/inspect/vmlinuz" in boot(a, 2)
        assert machines(services) == 3
    assert refused_events(services)[0]["reason"] == "pending"
    assert refused(services, "prov-a", "pending") == 2


@pytest.mark.parametrize("limits", [{"enroll_max_per_minute": 2}], indirect=True)
def test_the_cap_holds_across_daemons(app_services: Services, db: Database) -> None:
    other_db = Database(db.url)
    settings = app_services.settings
    other = Services(
        settings=settings,
        db=other_db,
        secrets=SecretBox.from_key_file(settings.key_file),
        instance="other",
    )
    try:
        with client_at(app_services, ON_A) as one, client_at(other, ON_A) as two:
            assert "/images/" in boot(one, 1)
            assert "/images/" in boot(two, 2)
            assert "enroll_max_per_minute" in boot(one, 3)
            assert "enroll_max_per_minute" in boot(two, 4)
    finally:
        other.close()
    assert machines(app_services) == 2


@pytest.mark.parametrize("limits", [{"auto_enroll": False}], indirect=True)
def test_auto_enroll_off_enrolls_nothing(app_services: Services) -> None:
    services = app_services
    with client_at(services, ON_B) as b:
        for _ in range(3):
            text = boot(b, 7)
            assert "auto_enroll is off" in text and "/images/" not in text
        assert "chain" not in text  # nothing will change by itself: exit, no retry loop
    assert machines(services) == 0
    assert [e["reason"] for e in refused_events(services)] == ["auto_enroll"]
    assert refused(services, "prov-b", "auto_enroll") == 3


@pytest.mark.parametrize("limits", [{"enroll_max_per_minute": 0}], indirect=True)
def test_a_refused_flood_takes_no_write_slot(app_services: Services) -> None:
    services = app_services
    with client_at(services, ON_A) as a:
        boot(a, 1)  # the minute's event is written once
        with write_transactions() as begun:
            for i in range(2, 12):
                boot(a, i)
    assert begun == [] and machines(services) == 0
    assert len(refused_events(services)) == 1


def test_limits_are_settings() -> None:
    defaults = Settings()
    assert defaults.enroll_max_per_minute > 0 and defaults.enroll_max_pending > 0
