"""The periodic resync puts dnsmasq's host files right when a change missed them (a
failed after-commit hook, a change another daemon made): no dnsmasq is needed, only
the host folder it reads."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlmodel import select

from provisiond.config import Settings
from provisiond.container import Services
from provisiond.db import Database
from provisiond.deploy.netboot_runtime import Netboot
from provisiond.lifecycle import Ev, advance
from provisiond.models import Machine, Nic
from provisiond.netboot.dnsmasq_conf import host_filename
from provisiond.networks import ProvisioningNetwork
from provisiond.secrets import SecretBox

NET = ProvisioningNetwork(
    name="prov0",
    interface="br-test",
    subnet="10.77.1.0/24",
    boot_address="10.77.1.1",
    dhcp_mode="off",
)


@pytest.fixture
def netboot(settings: Settings, db: Database) -> Iterator[Netboot]:
    settings = settings.model_copy(update={"networks": [NET]})
    services = Services(
        settings=settings, db=db, secrets=SecretBox.from_key_file(settings.key_file)
    )
    yield Netboot(services)
    services.close()


def _host_file(netboot: Netboot, name: str) -> Path:
    return netboot.dnsmasq["prov0"].paths.hosts / host_filename(name)


def test_resync_writes_a_missed_host_file_and_removes_a_stale_one(
    netboot: Netboot, db: Database
) -> None:
    with db.transaction() as s:  # as if the after-commit hook had failed
        m = Machine(name="n1")
        advance(s, m, Ev.ENROLL, actor="test")
        assert m.id is not None
        s.add(Nic(machine_id=m.id, mac="52:54:00:77:00:01", pxe=True, ip_address="10.77.1.20"))
    assert not _host_file(netboot, "n1").exists()

    changes = netboot.resync()
    text = _host_file(netboot, "n1").read_text()
    assert "52:54:00:77:00:01" in text and "10.77.1.20" in text, text
    assert sum(changes["prov0"].values()) >= 1

    again = netboot.resync()["prov0"]  # idempotent: nothing to write the second time
    assert {k: n for k, n in again.items() if n and k != "unchanged"} == {}, again
    assert _host_file(netboot, "n1").read_text() == text

    with db.transaction() as s:  # deleted behind its back
        s.delete(s.exec(select(Machine).where(Machine.name == "n1")).one())
    netboot.resync()
    assert not _host_file(netboot, "n1").exists()
