"""The engine's image-write step: what it asks the writer to do, from the DB (both databases).

The writer itself runs against loop devices (tests/integration/test_image_writer.py)
and in the QEMU E2E; here the command the engine builds: the served file and its
checksum, the image's sizes, the root-device hints (the allocation's over the
machine's), and the seed URL only for images cloud-init configures.
"""

from __future__ import annotations

import json
import shlex

from sqlmodel import select

from provisiond.auth import create_token
from provisiond.container import Services
from provisiond.deploy import records as deploy
from provisiond.deploy.engine import DeployEngine
from provisiond.lifecycle import Ev, State, advance
from provisiond.models import Allocation, Deployment, Image, Machine

GIB = 2**30


def _ramdisk_called_back(services: Services, *, configured_by: str = "cloud-init") -> int:
    with services.db.transaction() as s:
        image = Image(
            name="deb", kind="disk", kernel="", initrd="", disk="deb/disk.raw.gz",
            virtual_size=2 * GIB, min_disk_size=3 * GIB, raw_sha256="a" * 64,
            sha256={"disk": "b" * 64}, configured_by=configured_by,
        )  # fmt: skip
        m = Machine(name="m1", root_device={"rotational": False, "size": ">= 1"})
        s.add(image)
        advance(s, m, Ev.ENROLL, actor="test")
        for ev in (Ev.INSPECT, Ev.DONE, Ev.ALLOCATE):
            advance(s, m, ev, actor="test")
        s.flush()
        token, _ = create_token(s, name="owner", role="ci")
        alloc = Allocation(
            owner_token_id=token.id, image_id=image.id, machine_id=m.id, ssh_keys=[],
            state="deploying", root_device={"size": ">= 2", "serial": "S1"},
        )  # fmt: skip
        s.add(alloc)
        s.flush()
        record = deploy.start_deploy(
            s, m, allocation=alloc, image_id=image.id, actor="test",
            settings=services.settings, secrets=services.secrets,
        )  # fmt: skip
        for phase in ("power_cycle", "seed", "ramdisk_callback"):
            deploy.mark_phase(record, phase)
        record.phases = {**record.phases, "agent_url": "http://10.0.0.1:8080"}
        record.host_key, record.address = "ssh-ed25519 AAAAC3Nza", "10.0.0.5"
        s.add(record)
        assert m.id is not None
        return m.id


def test_the_write_command_names_the_image_and_merged_hints(services: Services) -> None:
    machine_id = _ramdisk_called_back(services)
    engine = DeployEngine(services)
    assert [w.step for w in engine.scan()] == ["write_image"]
    assert engine.guard.take(machine_id)  # as _drive does before any step
    plan = engine.disk.plan(machine_id)
    assert plan is not None and plan.address == "10.0.0.5"
    argv = shlex.split(plan.command)
    args = dict(zip(argv[2::2], argv[3::2], strict=True))
    assert args["--url"] == "http://10.0.0.1:8080/images/deb/disk.raw.gz"
    assert args["--sha256"] == "b" * 64
    assert (args["--raw-size"], args["--min-disk"]) == (str(2 * GIB), str(3 * GIB))
    # The allocation's size and serial win; the machine's rotational stays.
    assert json.loads(args["--hints"]) == {"rotational": False, "size": ">= 2", "serial": "S1"}
    with services.db.read_session() as s:
        uuid = s.exec(select(Machine.uuid)).one()
    assert args["--seed-url"] == f"http://10.0.0.1:8080/meta/{uuid}/"
    assert plan.timeout >= 60


def test_an_image_configured_by_the_agent_gets_no_seed_file(services: Services) -> None:
    machine_id = _ramdisk_called_back(services, configured_by="agent")
    engine = DeployEngine(services)
    assert engine.guard.take(machine_id)
    plan = engine.disk.plan(machine_id)
    assert plan is not None and "--seed-url" not in plan.command


def test_a_ramdisk_that_never_fetched_its_seed_fails_the_deploy(services: Services) -> None:
    machine_id = _ramdisk_called_back(services)
    with services.db.transaction() as s:
        record = s.exec(select(Deployment)).one()
        record.phases = {k: v for k, v in record.phases.items() if k != "agent_url"}
        s.add(record)
    engine = DeployEngine(services)
    assert engine.guard.take(machine_id)
    assert engine.disk.plan(machine_id) is None
    with services.db.read_session() as s:
        machine = s.get(Machine, machine_id)
        assert machine is not None and machine.state == State.DEPLOY_FAILED
        record = s.exec(select(Deployment)).one()
        assert "without fetching its seed" in record.failure_reason
