"""Image downloads as boot phases: a kernel or initrd fetched by a booting machine.

The images route (``GET /images/{name}/{file}``) serves the file itself; this module
records the fetch as the ``kernel`` or ``initrd`` phase of the client's running
deployment. Image downloads are the hot path of a boot storm, so the lookup runs in
a read session and a write transaction is opened only when there is a phase to
record. The client is matched by its address against recorded NIC addresses only.
"""

from __future__ import annotations

import ipaddress

from sqlmodel import Session, select

from provisiond.db import Database
from provisiond.deploy import records as deploy
from provisiond.deploy import telemetry as boot_telemetry
from provisiond.metrics import Metrics
from provisiond.models import Image, Machine


def canonical_address(address: str) -> str:
    try:
        ip = ipaddress.ip_address(address.strip())
    except ValueError:
        return address.strip()
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ip)


def _image_phase(session: Session, client: str, name: str, file: str) -> tuple[int, str] | None:
    """(machine id, ``kernel`` or ``initrd``) when the fetch is a boot phase of the client."""
    machine = boot_telemetry.machine_by_address(session, canonical_address(client))
    if machine is None or machine.id is None:
        return None
    record = deploy.running_deployment(session, machine.id)
    if record is None:
        return None
    image = session.get(Image, record.image_id) if record.image_id else None
    if image is None:
        image = session.exec(select(Image).where(Image.name == name)).first()
    if image is None or image.name != name:
        return None
    phase = {image.kernel: "kernel", image.initrd: "initrd"}.get(f"{name}/{file}")
    if phase is None or phase in record.phases:
        return None
    return machine.id, phase


def record_image_fetch(db: Database, metrics: Metrics, client: str, name: str, file: str) -> None:
    """Record a kernel or initrd fetch as a boot phase of the client's machine.

    Image downloads are the hot path of a boot storm: the lookup runs in a read
    session, and a write transaction is opened only when there is a phase to record.
    """
    with db.read_session() as session:
        found = _image_phase(session, client, name, file)
    if found is None:
        return
    machine_id, phase = found
    with db.transaction() as session:
        machine = session.get(Machine, machine_id)
        boot_telemetry.record_phase(session, machine, phase, metrics=metrics, file=f"{name}/{file}")
