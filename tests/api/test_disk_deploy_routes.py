"""A whole-disk image deploy through the boot routes and the engine's step choice.

The daemon's side of issue 12 on SQLite and PostgreSQL with the real app: the deploy
ramdisk is booted first, its phone-home pins its key without leaving ``deploying``,
the engine's next step is the image write, then the disk boot; after that the
machine's network boot gets the ``local`` script, the seed fetch is the disk OS's,
and the OS's phone-home moves the deploy on. The writer itself runs in the QEMU E2E
(tests/e2e/test_disk_deploy.py) and against real loop devices.
"""

from __future__ import annotations

from datetime import timedelta

from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlmodel import select

from provisiond.container import Services
from provisiond.deploy import records as deploy
from provisiond.deploy.steps import step_for
from provisiond.lifecycle import State
from provisiond.models import Allocation, Deployment, Image, Machine, utcnow
from provisiond.netboot.images import ImageStore
from tests.api import test_boot_routes as boot_routes
from tests.api.test_boot_routes import MAC, _deploying, client_at
from tests.conftest import Api
from tests.support.allocations import KEY

# The boot route tests' fixtures: the app with its boot routes, a client, two live images.
app, client, store = boot_routes.app, boot_routes.client, boot_routes.store
GIB = 2**30
RAMDISK_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIramdisk root@ramdisk"
OS_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIdebian root@debian"


def _disk_image(services: Services, name: str = "deb") -> int:
    with services.db.transaction() as s:
        image = Image(
            name=name, kind="disk", kernel="", initrd="", disk=f"{name}/disk.raw.gz",
            source_format="raw", virtual_size=2 * GIB, min_disk_size=2 * GIB,
            raw_sha256="a" * 64, sha256={"disk": "b" * 64}, firmware="both",
        )  # fmt: skip
        s.add(image)
        s.flush()
        assert image.id is not None
        return image.id


def _use_disk_image(services: Services, image_id: int) -> None:
    with services.db.transaction() as s:
        record = s.exec(select(Deployment)).one()
        record.image_id = image_id
        s.add(record)
        alloc = s.exec(select(Allocation)).one()
        alloc.image_id = image_id
        alloc.root_device = {"size": ">= 2"}
        s.add(alloc)


def _record(services: Services) -> Deployment:
    with services.db.read_session() as s:
        return s.exec(select(Deployment)).one()


def _step(services: Services) -> str | None:
    with services.db.read_session() as s:
        machine = s.exec(select(Machine)).one()
        record = s.exec(select(Deployment)).one()
        disk = deploy.disk_image_ids(s, [record.image_id])
        return step_for(machine, record, utcnow(), 120, disk=record.image_id in disk)


def _mark(services: Services, *phases: str) -> None:
    with services.db.transaction() as s:
        record = s.exec(select(Deployment)).one()
        for phase in phases:
            deploy.mark_phase(record, phase)
        s.add(record)


def test_disk_deploy_boots_the_ramdisk_then_the_disk(
    app: FastAPI, client: TestClient, services: Services, store: ImageStore
) -> None:
    uuid = _deploying(services, "10.0.0.5")
    _use_disk_image(services, _disk_image(services))
    assert _step(services) == "power"
    _mark(services, "power_cycle")
    # The ramdisk stage: the inspection image's kernel with this deploy's seed.
    script = client.get(f"/boot/{MAC}.ipxe").text
    assert "/images/inspect/vmlinuz" in script and f"s=http://testserver/meta/{uuid}/" in script
    user = client.get(f"/meta/{uuid}/user-data").text
    assert "disable_root: false" in user
    token = deploy.callback_token(services.secrets, _record(services).uuid)
    r = client.post(f"/boot/callback/{uuid}?token={token}", data={"pub_key_ed25519": RAMDISK_KEY})
    assert r.status_code == 200 and r.json()["state"] == "deploying", r.text
    record = _record(services)
    assert (
        record.host_key == " ".join(RAMDISK_KEY.split()[:2]) and "ramdisk_callback" in record.phases
    )
    assert "seed" in record.phases and "os_callback" not in record.phases
    with services.db.read_session() as s:
        machine = s.exec(select(Machine)).one()
        assert machine.ssh_host_key == ""  # the ramdisk's key is not the instance's
        assert machine.state == State.DEPLOYING
    assert _step(services) == "write_image"
    _mark(services, "disk_selected", "image_download", "image_written", "disk_configured")
    assert _step(services) == "disk_boot"
    with services.db.transaction() as s:  # what DiskSteps._booted_disk does
        record = s.exec(select(Deployment)).one()
        record.host_key, record.address = "", ""
        deploy.mark_phase(record, "disk_boot")
        s.add(record)
    assert _step(services) is None
    # A network boot now (the NIC first in the firmware's order) boots the disk.
    script = client.get(f"/boot/{MAC}.ipxe").text
    assert "sanboot" in script and "vmlinuz" not in script
    client.get(f"/meta/{uuid}/user-data")
    assert "os_seed" in _record(services).phases
    with client_at(app, "10.0.0.5") as machine_client:
        r = machine_client.post(
            f"/boot/callback/{uuid}?token={token}", data={"pub_key_ed25519": OS_KEY}
        )
    assert r.status_code == 200 and r.json()["state"] == "installing_agent", r.text
    with services.db.read_session() as s:
        machine = s.exec(select(Machine)).one()
        assert machine.ssh_host_key == " ".join(OS_KEY.split()[:2])
    assert _step(services) == "install"


def test_the_deadline_after_the_disk_boot_names_it(services: Services, store: ImageStore) -> None:
    _deploying(services, "10.0.0.5")
    _use_disk_image(services, _disk_image(services))
    _mark(services, "power_cycle", "ramdisk_callback", "image_written", "disk_configured")
    with services.db.transaction() as s:
        record = s.exec(select(Deployment)).one()
        later = utcnow() + timedelta(seconds=5)
        deploy.mark_phase(record, "disk_boot", at=later)
        s.add(record)
    with services.db.read_session() as s:
        machine = s.exec(select(Machine)).one()
        reason, details = deploy.deadline_reason(s, machine, 600)
    assert reason.endswith("(last phase: disk_boot, booting from disk)"), reason
    assert details["last_phase"] == "disk_boot"


def test_a_disk_deploy_without_the_ramdisk_image_is_refused_at_boot(
    client: TestClient, services: Services, store: ImageStore
) -> None:
    _deploying(services, "10.0.0.5")
    _use_disk_image(services, _disk_image(services))
    with services.db.transaction() as s:
        s.delete(s.exec(select(Image).where(Image.name == "inspect")).one())
    script = client.get(f"/boot/{MAC}.ipxe").text
    assert "exit" in script and "no inspection image" in script, script


def test_allocations_take_a_disk_image_with_root_device_hints(api: Api, services: Services) -> None:
    _disk_image(services)
    assert api.admin.post("/api/v1/machines", json={"name": "m1"}).status_code == 201
    body = {
        "image": "deb",
        "ssh_keys": [KEY],
        "root_device": {"size": ">= 100", "rotational": False},
    }
    r = api.ci.post("/api/v1/allocations", json=body)
    assert r.status_code in (200, 201), r.text
    with services.db.read_session() as s:
        alloc = s.exec(select(Allocation)).one()
        assert alloc.root_device == {"size": ">= 100", "rotational": False}
    for hints, field in (
        ({"size": "about 100"}, "size"),
        ({"colour": "blue"}, "colour"),
        ({"rotational": "spinning"}, "rotational"),
        ({"name": "../../etc"}, "name"),
    ):
        bad = api.ci.post("/api/v1/allocations", json={**body, "root_device": hints})
        assert bad.status_code == 422, bad.text
        assert field in bad.text


def test_a_bios_only_disk_image_goes_only_to_machines_that_boot_bios(
    api: Api, services: Services
) -> None:
    image_id = _disk_image(services)
    with services.db.transaction() as s:
        image = s.get(Image, image_id)
        assert image is not None
        image.firmware = "bios"
        s.add(image)
    assert api.admin.post("/api/v1/machines", json={"name": "m1"}).status_code == 201
    with services.db.transaction() as s:
        machine = s.exec(select(Machine)).one()
        machine.firmware = "uefi"
        s.add(machine)
    r = api.ci.post("/api/v1/allocations", json={"image": "deb", "ssh_keys": [KEY]})
    assert r.status_code == 422, r.text
    assert "bios firmware" in r.json()["error"]["problems"][0]["message"]
    with services.db.transaction() as s:
        machine = s.exec(select(Machine)).one()
        machine.firmware = ""  # not inspected since firmware was recorded: may fit
        s.add(machine)
    r = api.ci.post("/api/v1/allocations", json={"image": "deb", "ssh_keys": [KEY]})
    assert r.status_code in (200, 201), r.text
    assert r.json()["constraints"]["firmware"] == "bios"
