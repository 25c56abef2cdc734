"""Boot scripts and cloud-init seeds: what a machine gets when it network-boots.

``/boot/{mac}.ipxe`` picks a template from the machine's lifecycle state
(``ipxe/<kind>.<arch>.j2`` before ``ipxe/<kind>.j2``):

============================  ===========================================
state                         script (template kind)
============================  ===========================================
unknown MAC                   enrolled ("discovered via PXE"); then as
                              ``enrolled``
enrolled                      auto_enroll on and an inspection image in
                              the catalog: advance to inspecting and boot
                              it (``inspect``); else ``exit`` plus an event
inspecting                    ``inspect``
deploying                     ``deploy``: the deploy image's kernel and
                              initrd, its kernel_args, ``initrd=<name>``
                              (needed under UEFI) and the NoCloud seed URL
active, installing_agent      ``local``: boot the local disk
anything else                 ``poweroff``
============================  ===========================================

Which image a deploy uses: the newest Allocation holding the machine that names an
image (``Allocation.image_id``, the field the deploy flow fills in); a machine put
into ``deploying`` without one gets the newest catalog image of its arch that is not
the inspection image (:func:`deploy_image`).

Seed files and the OS's phone-home callback are in :mod:`provisiond.deploy.seeds`.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from provisiond.config import Settings
from provisiond.db import Database
from provisiond.deploy import records as deploy
from provisiond.deploy import telemetry as boot_telemetry
from provisiond.errors import BadRequest, Conflict
from provisiond.lifecycle import Ev, State, advance
from provisiond.metrics import Metrics
from provisiond.models import Allocation, Event, Image, Machine, Nic
from provisiond.secrets import SecretBox
from provisiond.templates import Templates, candidates
from provisiond.validators import normalize_mac

ACTOR = "boot:pxe"


@dataclass(frozen=True)
class BootConfig:
    """Boot settings, read from Settings with defaults until the fields exist there."""

    images_dir: Path
    #: ``http://host:port`` machines use to reach us; empty -> the request's base URL.
    public_url: str = ""
    #: Boot newly enrolled machines into inspection (else they get an exit script).
    auto_enroll: bool = True
    inspect_image: str = "inspect"

    @classmethod
    def from_settings(cls, settings: Settings) -> BootConfig:
        images_dir = settings.images_dir or settings.data_dir / "images"
        return cls(
            images_dir=Path(images_dir),
            public_url=settings.public_url.rstrip("/"),
            auto_enroll=settings.auto_enroll,
            inspect_image=settings.inspect_image,
        )

    def base_url(self, request_base: str) -> str:
        return self.public_url or request_base.rstrip("/")


#: What iPXE (``${net0/mac}``, ``${net0/mac:hexhyp}``) and people write: six octets
#: joined by one of ``:`` or ``-`` throughout, twelve bare hex digits, or Cisco's
#: ``aabb.ccdd.eeff``. Stricter than :func:`normalize_mac`, which drops separators
#: and whitespace anywhere: ``/boot/..52:54:00:12:34:56%0a.ipxe`` is no boot request.
_BOOT_MAC = re.compile(
    r"^(?:[0-9A-Fa-f]{2}([:-])(?:[0-9A-Fa-f]{2}\1){4}[0-9A-Fa-f]{2}"
    r"|[0-9A-Fa-f]{12}|[0-9A-Fa-f]{4}\.[0-9A-Fa-f]{4}\.[0-9A-Fa-f]{4})$"
)


def parse_mac(value: str) -> str:
    hint = "iPXE sends ${net0/mac}, e.g. 52:54:00:12:34:56"
    if len(value) > 64:
        raise BadRequest("MAC address too long", hint=hint)
    if not _BOOT_MAC.fullmatch(value):
        raise BadRequest(f"{value[:64]!r} is not a MAC address", hint=hint)
    try:
        return normalize_mac(value)
    except ValueError as exc:
        raise BadRequest(str(exc), hint=hint) from None


def render_script(templates: Templates, kind: str, arch: str, **context: Any) -> str:
    return templates.render_first(candidates("ipxe", kind, arch), **context)


def _one_line(text: str) -> str:
    return " ".join(text.split())


def image_context(image: Image, base_url: str) -> dict[str, Any]:
    return {
        "name": image.name,
        "kernel_url": f"{base_url}/images/{image.kernel}",
        "initrd_url": f"{base_url}/images/{image.initrd}",
        "initrd_name": Path(image.initrd).name,
        "rootfs_url": f"{base_url}/images/{image.rootfs}" if image.rootfs else "",
        "kernel_args": _one_line(image.kernel_args),
        "os_template": image.os_template,
    }


def machine_context(machine: Machine, mac: str = "") -> dict[str, Any]:
    return {
        "name": machine.name,
        "uuid": machine.uuid,
        "arch": machine.arch,
        "state": machine.state,
        "mac": mac,
    }


def deploy_image(session: Session, machine: Machine, inspect_image: str) -> Image | None:
    if machine.id is not None:
        record = deploy.running_deployment(session, machine.id)
        if record is not None and record.image_id is not None:
            return session.get(Image, record.image_id)
    alloc = session.exec(
        select(Allocation)
        .where(Allocation.machine_id == machine.id, col(Allocation.image_id).is_not(None))
        .order_by(col(Allocation.created_at).desc(), col(Allocation.id).desc())
    ).first()
    if alloc is not None and alloc.image_id is not None:
        return session.get(Image, alloc.image_id)
    return session.exec(
        select(Image)
        .where(Image.arch == machine.arch, Image.name != inspect_image)
        .order_by(col(Image.created_at).desc(), col(Image.id).desc())
    ).first()


def _boot_event(
    session: Session, machine: Machine, event: str, message: str, **details: Any
) -> None:
    session.add(
        Event(
            machine_id=machine.id,
            machine_name=machine.name,
            kind="boot",
            event=event,
            actor=ACTOR,
            message=message,
            details=details,
        )
    )
    session.flush()


def _enroll(session: Session, mac: str, settings: Settings | None) -> Machine:
    machine = Machine(name=f"pxe-{mac.replace(':', '')}")
    try:
        with session.begin_nested():
            advance(
                session,
                machine,
                Ev.ENROLL,
                actor=ACTOR,
                reason="discovered via PXE",
                details={"mac": mac},
                timeouts=settings.timeouts if settings else None,
            )
            assert machine.id is not None
            session.add(Nic(machine_id=machine.id, mac=mac, pxe=True))
            session.flush()
    except IntegrityError:  # another request enrolled it first
        found = _by_mac(session, mac)
        if found is None:
            raise Conflict(f"could not enroll {mac}", hint="retry the boot") from None
        return found
    return machine


def _by_mac(session: Session, mac: str) -> Machine | None:
    nic = session.exec(select(Nic).where(Nic.mac == mac)).first()
    return nic.machine if nic else None


def machine_script(
    session: Session,
    templates: Templates,
    config: BootConfig,
    mac_text: str,
    base_url: str,
    settings: Settings | None = None,
    secrets: SecretBox | None = None,
    metrics: Metrics | None = None,
) -> str:
    """The per-MAC iPXE script; enrolls and starts inspection as the table above says."""
    mac = parse_mac(mac_text)
    machine = _by_mac(session, mac) or _enroll(session, mac, settings)
    ctx: dict[str, Any] = {"base_url": base_url, "machine": machine_context(machine, mac)}
    arch = machine.arch
    timeouts = settings.timeouts if settings else None

    if machine.state == State.ENROLLED:
        inspect = session.exec(select(Image).where(Image.name == config.inspect_image)).first()
        if not config.auto_enroll:
            reason = "auto_enroll is off; an operator must inspect or manage this machine"
            _boot_event(session, machine, "boot_refused", reason, mac=mac)
            return render_script(templates, "exit", arch, reason=reason, **ctx)
        if inspect is None:
            reason = f"no inspection image named {config.inspect_image!r} in the catalog"
            _boot_event(session, machine, "boot_refused", reason, mac=mac)
            return render_script(templates, "exit", arch, reason=reason, **ctx)
        if settings is not None and secrets is not None:
            deploy.start_inspection(
                session,
                machine,
                actor=ACTOR,
                settings=settings,
                secrets=secrets,
                power_cycle=False,
                reason="PXE boot",
            )
        else:
            advance(session, machine, Ev.INSPECT, actor=ACTOR, reason="PXE boot", timeouts=timeouts)
        ctx["machine"] = machine_context(machine, mac)

    state = machine.state
    if state == State.INSPECTING:
        inspect = session.exec(select(Image).where(Image.name == config.inspect_image)).first()
        if inspect is None:
            reason = f"no inspection image named {config.inspect_image!r} in the catalog"
            return render_script(templates, "exit", arch, reason=reason, **ctx)
        if settings is not None and secrets is not None:
            deploy.ensure_inspection_record(session, machine, secrets=secrets)
        boot_telemetry.record_phase(session, machine, "ipxe_script", metrics=metrics, mac=mac)
        return render_script(
            templates,
            "inspect",
            arch,
            image=image_context(inspect, base_url),
            seed_url=f"{base_url}/meta/{machine.uuid}/",
            **ctx,
        )
    if state == State.DEPLOYING:
        image = deploy_image(session, machine, config.inspect_image)
        if image is None:
            reason = f"no image for {arch} in the catalog"
            _boot_event(session, machine, "boot_refused", reason, mac=mac)
            return render_script(templates, "exit", arch, reason=reason, **ctx)
        boot_telemetry.record_phase(session, machine, "ipxe_script", metrics=metrics, mac=mac)
        return render_script(
            templates,
            "deploy",
            arch,
            image=image_context(image, base_url),
            seed_url=f"{base_url}/meta/{machine.uuid}/",
            **ctx,
        )
    if state in (State.ACTIVE, State.INSTALLING_AGENT):
        return render_script(templates, "local", arch, **ctx)
    return render_script(templates, "poweroff", arch, **ctx)


def entry_script(templates: Templates, base_url: str) -> str:
    return templates.render_first(["ipxe/entry.j2"], base_url=base_url)


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
