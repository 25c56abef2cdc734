"""Golden iPXE scripts: each state's rendered script against tests/golden/ipxe/*.ipxe.

The scripts come from the shipped pxe/ templates through the real service code
(enrolment included) on SQLite. Machine uuids are replaced by MACHINE-UUID before
comparing. Regenerate after an intended change with ``UPDATE_GOLDEN=1 pytest ...``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from sqlmodel import Session, select

from provisiond.config import Settings, load_settings
from provisiond.db import Database
from provisiond.deploy import boot_scripts as boot
from provisiond.lifecycle import Ev, advance
from provisiond.metrics import Metrics
from provisiond.models import Event, Image, Machine, Nic
from provisiond.secrets import SecretBox
from provisiond.templates import DEFAULT_DIR, Templates

GOLDEN = Path(__file__).resolve().parent.parent / "golden" / "ipxe"
BASE = "http://10.0.0.1:8080"
MAC = "52:54:00:12:34:56"
TEMPLATES = Templates(DEFAULT_DIR)


def check_golden(name: str, text: str, machine_uuid: str = "") -> None:
    if machine_uuid:
        text = text.replace(machine_uuid, "MACHINE-UUID")
    path = GOLDEN / f"{name}.ipxe"
    if os.environ.get("UPDATE_GOLDEN"):
        path.write_text(text)
    assert path.is_file(), f"missing golden file {path}; run with UPDATE_GOLDEN=1"
    expected = path.read_text()
    assert text == expected, f"{name}: rendered script differs from {path}:\n{text}"


@pytest.fixture
def session(sqlite_db: Database) -> Iterator[Session]:
    with sqlite_db.transaction() as s:
        s.add(
            Image(
                name="inspect",
                kernel="inspect/vmlinuz",
                initrd="inspect/initrd.img",
                kernel_args="console=ttyS0 quiet",
            )
        )
        s.add(
            Image(
                name="debian12",
                kernel="debian12/vmlinuz",
                initrd="debian12/initrd.gz",
                kernel_args="console=ttyS0\nip=dhcp",
                os_template="debian",
            )
        )
        s.add(
            Image(
                name="debian12-arm",
                arch="aarch64",
                kernel="debian12-arm/Image",
                initrd="debian12-arm/initrd.gz",
                kernel_args="ip=dhcp",
            )
        )
        s.flush()
        yield s


@pytest.fixture
def real(tmp_path: Path) -> dict[str, Any]:
    """The settings, secret box and metrics the daemon passes (the real objects)."""
    settings = load_settings(None, data_dir=tmp_path / "data")
    return {
        "settings": settings,
        "secrets": SecretBox.from_key_file(settings.key_file),
        "metrics": Metrics(CollectorRegistry()),
    }


def machine_in(s: Session, name: str, mac: str, events: list[Ev], arch: str = "x86_64") -> Machine:
    m = Machine(name=name, arch=arch)
    advance(s, m, Ev.ENROLL, actor="test")
    assert m.id is not None
    s.add(Nic(machine_id=m.id, mac=mac, pxe=True))
    for ev in events:
        advance(s, m, ev, actor="test")
    s.flush()
    return m


TO_DEPLOYING = [Ev.INSPECT, Ev.DONE, Ev.ALLOCATE, Ev.DEPLOY]


def test_entry_script() -> None:
    check_golden("entry", boot.entry_script(TEMPLATES, BASE))


def test_unknown_mac_enrolls_and_inspects(
    session: Session, tmp_path: Path, real: dict[str, Any]
) -> None:
    text = boot.machine_script(session, TEMPLATES, MAC.upper(), BASE, **real)
    m = session.exec(select(Machine)).one()
    assert m.state == "inspecting" and m.name == "pxe-525400123456"
    check_golden("unknown", text, m.uuid)
    events = [e.message for e in session.exec(select(Event).order_by(Event.id))]
    assert events[0] == "discovered via PXE"


def test_an_enrolled_machine_without_auto_enroll_exits(
    session: Session, tmp_path: Path, real: dict[str, Any]
) -> None:
    m = machine_in(session, "pxe-525400123456", MAC, [])
    real["settings"] = real["settings"].model_copy(update={"auto_enroll": False})
    text = boot.machine_script(session, TEMPLATES, MAC, BASE, **real)
    assert m.state == "enrolled"
    check_golden("unknown-no-auto-enroll", text, m.uuid)
    kinds = [(e.kind, e.event) for e in session.exec(select(Event).order_by(Event.id))]
    assert kinds == [("transition", "enroll"), ("boot", "boot_refused")]


def test_an_unknown_mac_without_auto_enroll_is_not_enrolled(
    sqlite_db: Database, tmp_path: Path, real: dict[str, Any]
) -> None:
    real["settings"] = real["settings"].model_copy(update={"auto_enroll": False})
    text = boot.boot_script(sqlite_db, TEMPLATES, MAC, BASE, network="prov0", **real)
    assert "auto_enroll is off" in text
    with sqlite_db.read_session() as s:
        assert s.exec(select(Machine)).all() == []


def test_inspecting(session: Session, tmp_path: Path, real: dict[str, Any]) -> None:
    m = machine_in(session, "n1", MAC, [Ev.INSPECT])
    text = boot.machine_script(session, TEMPLATES, MAC, BASE, **real)
    check_golden("inspecting", text, m.uuid)


def test_deploying_x86_64_bios(session: Session, tmp_path: Path, real: dict[str, Any]) -> None:
    m = machine_in(session, "n1", MAC, TO_DEPLOYING)
    text = boot.machine_script(session, TEMPLATES, MAC, BASE, **real)
    check_golden("deploying-x86_64", text, m.uuid)
    assert "initrd=initrd.gz" in text and f"ds=nocloud-net;s={BASE}/meta/{m.uuid}/" in text


def test_deploying_aarch64_uses_the_per_arch_template(
    session: Session, tmp_path: Path, real: dict[str, Any]
) -> None:
    m = machine_in(session, "n2", MAC, TO_DEPLOYING, arch="aarch64")
    text = boot.machine_script(session, TEMPLATES, MAC, BASE, **real)
    check_golden("deploying-aarch64", text, m.uuid)
    assert "console=ttyAMA0" in text and "debian12-arm" in text


def test_active_boots_local_disk(session: Session, tmp_path: Path, real: dict[str, Any]) -> None:
    m = machine_in(session, "n1", MAC, [*TO_DEPLOYING, Ev.BOOTED, Ev.READY])
    text = boot.machine_script(session, TEMPLATES, MAC, BASE, **real)
    check_golden("active", text, m.uuid)


def test_other_states_power_off(session: Session, tmp_path: Path, real: dict[str, Any]) -> None:
    m = machine_in(session, "n1", MAC, [Ev.INSPECT, Ev.DONE])
    text = boot.machine_script(session, TEMPLATES, MAC, BASE, **real)
    check_golden("other", text, m.uuid)


def test_settings_defaults(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    assert settings.images_path == tmp_path / "images" and settings.auto_enroll
    assert settings.boot_base_url("http://10.0.0.1:8080/") == "http://10.0.0.1:8080"
    public = Settings(data_dir=tmp_path, public_url="http://boot.example:80/", images_dir="/srv")
    assert public.boot_base_url("http://10.0.0.1:8080/") == "http://boot.example:80"
    assert public.images_path == Path("/srv")
