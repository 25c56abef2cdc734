"""What a booted OS asks the daemon for: its seed files, and the phone-home callback.

Seed files (``/meta/{uuid}/...``: NoCloud meta-data, user-data and vendor-data, or
a kickstart/preseed) carry deploy-only data (the per-deploy SSH key, the
allocation's keys and user-data, the callback URL with its per-deployment token),
so they are served only while the machine is ``deploying`` or ``inspecting``, and
only to a client address recorded as one of its NICs' ``ip_address``. The address
is never learnt from a boot request, because anyone can ask for any MAC's script.
The agent's token is never in a seed: the daemon hands it over SSH.

The callback (``POST /boot/callback/{uuid}?token=``) pins the OS's SSH host key and
the address it called from, and moves ``deploying -> installing_agent``.
"""

from __future__ import annotations

import hmac
import uuid as uuidlib
from typing import Any

from sqlmodel import Session, select

from provisiond.config import Settings
from provisiond.deploy import records as deploy
from provisiond.deploy import telemetry as boot_telemetry
from provisiond.deploy.boot_scripts import (
    deploy_image,
    image_context,
    machine_context,
)
from provisiond.deploy.disk_deploy import RAMDISK_CALLBACK, on_disk
from provisiond.deploy.enrollment import ACTOR
from provisiond.deploy.image_fetch import canonical_address
from provisiond.errors import BadRequest, Conflict, Forbidden, NotFound, Unauthorized
from provisiond.lifecycle import Ev, State, advance
from provisiond.metrics import Metrics
from provisiond.models import Allocation, Deployment, Image, Machine
from provisiond.secrets import SecretBox
from provisiond.templates import Templates

SEED_FILES = ("meta-data", "user-data", "vendor-data", "kickstart.cfg", "preseed.cfg")


def _os_family(image: Image | None) -> str:
    family = (image.os_template if image else "").split("/")[0]
    return family if family and family.replace("-", "").replace("_", "").isalnum() else "default"


def seed_file(
    session: Session,
    templates: Templates,
    settings: Settings,
    machine_uuid: str,
    file: str,
    client: str,
    base_url: str,
    *,
    secrets: SecretBox,
    metrics: Metrics,
) -> str:
    """One NoCloud seed file (or kickstart/preseed) for a deploying or inspecting machine."""
    if file not in SEED_FILES:
        raise NotFound(f"no seed file {file[:64]!r}", hint=f"seed files: {', '.join(SEED_FILES)}")
    try:
        key = str(uuidlib.UUID(machine_uuid))
    except ValueError:
        raise NotFound("no such machine", hint="the seed URL carries the machine uuid") from None
    machine = session.exec(select(Machine).where(Machine.uuid == key)).first()
    if machine is None:
        raise NotFound("no such machine", hint="the seed URL carries the machine uuid")
    if machine.state not in (State.DEPLOYING, State.INSPECTING):
        raise Conflict(
            f"machine {machine.name} is {machine.state}, not deploying or inspecting",
            hint="seed data is served only during a deploy or an inspection",
        )
    addresses = {canonical_address(n.ip_address) for n in machine.nics if n.ip_address}
    if not addresses:
        raise Forbidden(
            f"machine {machine.name} has no NIC address recorded",
            hint="record the provisioning NIC's ip_address (inventory or DHCP fixed address); "
            "seed data is served only to the machine's own address",
        )
    if canonical_address(client) not in addresses:
        raise Forbidden(
            f"seed data for {machine.name} is served only to its own address",
            hint="fetch it from the machine being deployed",
        )
    assert machine.id is not None
    record = deploy.running_deployment(session, machine.id)
    if record is None:
        raise Conflict(
            f"machine {machine.name} has no running deploy or inspection",
            hint="start one (machines deploy / inspect); seed data belongs to it",
        )
    inspecting = record.kind == deploy.INSPECT
    image = None if inspecting else deploy_image(session, machine, settings.inspect_image)
    alloc = (
        session.get(Allocation, record.allocation_id) if record.allocation_id is not None else None
    )
    ssh_keys = [k for k in (record.ssh_public_key, *(alloc.ssh_keys if alloc else [])) if k]
    if file == "user-data":
        record.phases = {**record.phases, "agent_url": base_url}
        session.add(record)
        phase = "os_seed" if on_disk(record) else "seed"
        boot_telemetry.record_phase(session, machine, phase, metrics=metrics, client=client)
    token = deploy.callback_token(secrets, record.uuid)
    family = _os_family(image)
    names = [f"os/{family}/{file}.j2", f"os/default/{file}.j2"]
    if not any((templates.root / n).is_file() for n in names):
        raise NotFound(f"no {file} template for {family}", hint=f"add pxe/os/{family}/{file}.j2")
    return templates.render_first(
        names,
        base_url=base_url,
        machine=machine_context(machine),
        image=image_context(image, base_url) if image else None,
        hostname=machine.name,
        ssh_keys=ssh_keys,
        user_data=alloc.user_data if alloc else "",
        phone_home_url=f"{base_url}/boot/callback/{machine.uuid}?token={token}",
        seed_url=f"{base_url}/meta/{machine.uuid}/",
    )


def ramdisk_stage(session: Session, record: Deployment) -> bool:
    """A disk-image deploy that has not yet sent the machine to its disk."""
    if record.kind != deploy.DEPLOY or on_disk(record) or record.image_id is None:
        return False
    image = session.get(Image, record.image_id)
    return image is not None and image.kind == "disk"


#: Host-key fields a phone-home may carry (cloud-init's phone_home names).
HOST_KEY_FIELDS = ("pub_key_ed25519", "pub_key_ecdsa", "pub_key_rsa")


def callback(
    session: Session,
    secrets: SecretBox,
    settings: Settings,
    machine_uuid: str,
    token: str,
    fields: dict[str, str],
    client: str,
    metrics: Metrics,
) -> dict[str, Any]:
    """The booted OS phones home with its SSH host key (cloud-init ``phone_home``).

    Checked by the per-deployment callback token (served only in the seed, only to
    the machine's own address). A deploy moves ``deploying -> installing_agent``; an
    inspection stays ``inspecting``. Either way the key is pinned for the agent
    install, and the address the call came from is where the daemon will SSH to.
    """
    try:
        key = str(uuidlib.UUID(machine_uuid))
    except ValueError:
        raise NotFound(
            "no such machine", hint="the callback URL carries the machine uuid"
        ) from None
    machine = session.exec(select(Machine).where(Machine.uuid == key)).first()
    record = deploy.running_deployment(session, machine.id) if machine and machine.id else None
    expected = deploy.callback_token(secrets, record.uuid) if record else ""
    if machine is None or record is None or not hmac.compare_digest(token, expected or "x"):
        raise Unauthorized(
            "callback refused: unknown machine or bad token",
            hint="the phone-home URL comes from this deploy's seed (user-data)",
        )
    host_key = next((fields[f].strip() for f in HOST_KEY_FIELDS if fields.get(f, "").strip()), "")
    if len(host_key) > 2048 or len(host_key.split()) < 2:
        raise BadRequest(
            "callback carries no usable SSH host key",
            hint="post pub_key_ed25519 (or pub_key_ecdsa / pub_key_rsa) as 'TYPE BASE64'",
        )
    if machine.state not in (State.DEPLOYING, State.INSPECTING):
        raise Conflict(
            f"machine {machine.name} is {machine.state}, not waiting for a callback",
            hint="a callback is accepted only while deploying or inspecting",
        )
    record.host_key = " ".join(host_key.split()[:2])
    record.address = canonical_address(client)
    session.add(record)
    if ramdisk_stage(session, record):  # the deploy ramdisk: the engine writes the image
        session.flush()
        boot_telemetry.record_phase(
            session, machine, RAMDISK_CALLBACK, metrics=metrics, actor=ACTOR, address=record.address
        )
        return {"machine": machine.name, "state": machine.state, "address": record.address}
    machine.ssh_host_key = record.host_key
    session.add(machine)
    session.flush()
    boot_telemetry.record_phase(
        session, machine, "os_callback", metrics=metrics, actor=ACTOR, address=record.address
    )
    if machine.state == State.DEPLOYING:
        advance(
            session,
            machine,
            Ev.BOOTED,
            actor=ACTOR,
            timeouts=settings.timeouts,
            reason="OS called back with its SSH host key",
            details={"address": record.address, "deployment": record.uuid},
        )
    return {"machine": machine.name, "state": machine.state, "address": record.address}
