"""Boot scripts and cloud-init seeds: what a machine gets when it network-boots.

``/boot/{mac}.ipxe`` picks a template from the machine's lifecycle state
(``ipxe/<kind>.<arch>.j2`` before ``ipxe/<kind>.j2``):

============================  ===========================================
state                         script (template kind)
============================  ===========================================
unknown MAC                   enrolled ("discovered via PXE") when the
                              network's limits allow, then as ``enrolled``;
                              else ``retry`` (or ``exit`` with auto_enroll
                              off), see :mod:`provisiond.deploy.enrollment`
enrolled                      auto_enroll on and an inspection image in
                              the catalog: advance to inspecting and boot
                              it (``inspect``); else ``exit`` plus an event
inspecting                    ``inspect``
deploying                     ``deploy``: the deploy image's kernel and
                              initrd, its kernel_args, ``initrd=<name>``
                              (needed under UEFI) and the NoCloud seed URL
deploying, disk image         ``deploy`` with the deploy ramdisk (the
                              inspection image) until the image is written
                              and the machine sent to its disk, then
                              ``local`` (:mod:`provisiond.deploy.disk_deploy`)
active, installing_agent      ``local``: boot the local disk
anything else                 ``poweroff``
============================  ===========================================

The script is read first (:func:`boot_script`); a write transaction opens only when
serving it writes something (an enrollment, an inspection starting, a boot phase, an
event): on SQLite a boot storm of resting machines must not queue for the write slot.

Which image a deploy uses: the newest Allocation holding the machine that names an
image (``Allocation.image_id``, the field the deploy flow fills in); a machine put
into ``deploying`` without one gets the newest catalog image of its arch that is not
the inspection image (:func:`deploy_image`).

Seed files and the OS's phone-home callback are in :mod:`provisiond.deploy.seeds`.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from provisiond import events
from provisiond.config import Settings
from provisiond.db import Database
from provisiond.deploy import enrollment
from provisiond.deploy import records as deploy
from provisiond.deploy import telemetry as boot_telemetry
from provisiond.deploy.enrollment import ACTOR
from provisiond.errors import BadRequest, Conflict
from provisiond.events import EventKind
from provisiond.lifecycle import Ev, State, advance
from provisiond.metrics import Metrics
from provisiond.models import Allocation, Image, Machine, Nic
from provisiond.secrets import SecretBox
from provisiond.templates import Templates, candidates
from provisiond.validators import normalize_mac

#: What iPXE (``${netX/mac}``, ``${netX/mac:hexhyp}``) and people write: six octets
#: joined by one of ``:`` or ``-`` throughout, twelve bare hex digits, or Cisco's
#: ``aabb.ccdd.eeff``. Stricter than :func:`normalize_mac`, which drops separators
#: and whitespace anywhere: ``/boot/..52:54:00:12:34:56%0a.ipxe`` is no boot request.
_BOOT_MAC = re.compile(
    r"^(?:[0-9A-Fa-f]{2}([:-])(?:[0-9A-Fa-f]{2}\1){4}[0-9A-Fa-f]{2}"
    r"|[0-9A-Fa-f]{12}|[0-9A-Fa-f]{4}\.[0-9A-Fa-f]{4}\.[0-9A-Fa-f]{4})$"
)


def parse_mac(value: str) -> str:
    hint = "iPXE sends ${netX/mac}, e.g. 52:54:00:12:34:56"
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


#: :func:`boot_image`'s answer for a disk deploy past its ramdisk stage: boot the disk.
DISK = Image(name="(local disk)", kernel="", initrd="")


def boot_image(session: Session, machine: Machine, settings: Settings) -> Image | None:
    """What a ``deploying`` machine network-boots: the deploy image's kernel, or for a
    whole-disk image the deploy ramdisk (the inspection image) until the engine sent
    it to its disk (:data:`DISK` after that); None when the catalog lacks it."""
    image = deploy_image(session, machine, settings.inspect_image)
    if image is None or image.kind != "disk":
        return image
    record = deploy.running_deployment(session, machine.id) if machine.id is not None else None
    if record is not None and "disk_boot" in record.phases:
        return DISK
    return _inspect_image(session, settings)


def _boot_event(
    session: Session, machine: Machine, event: str, message: str, **details: Any
) -> None:
    events.record(
        session, EventKind.BOOT, event, machine=machine, actor=ACTOR, message=message,
        details=details,
    )  # fmt: skip


def _enroll(session: Session, mac: str, settings: Settings, network: str) -> Machine:
    machine = Machine(name=f"pxe-{mac.replace(':', '')}")
    try:
        with session.begin_nested():
            advance(
                session,
                machine,
                Ev.ENROLL,
                actor=ACTOR,
                reason="discovered via PXE",
                details={"mac": mac, "network": network},
                timeouts=settings.timeouts,
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
    return session.exec(select(Machine).join(Nic).where(Nic.mac == mac)).first()


def _inspect_image(session: Session, settings: Settings) -> Image | None:
    return session.exec(select(Image).where(Image.name == settings.inspect_image)).first()


def _no_inspect_image(templates: Templates, settings: Settings, ctx: dict[str, Any]) -> str:
    reason = f"no inspection image named {settings.inspect_image!r} in the catalog"
    return render_script(templates, "exit", ctx["machine"]["arch"], reason=reason, **ctx)


def _booting(
    templates: Templates, kind: str, image: Image, base_url: str, ctx: dict[str, Any]
) -> str:
    """The ``inspect`` or ``deploy`` script: the image's kernel with the NoCloud seed."""
    machine = ctx["machine"]
    return render_script(
        templates,
        kind,
        machine["arch"],
        image=image_context(image, base_url),
        seed_url=f"{base_url}/meta/{machine['uuid']}/",
        **ctx,
    )


def _resting(templates: Templates, machine: Machine, ctx: dict[str, Any]) -> str:
    kind = "local" if machine.state in (State.ACTIVE, State.INSTALLING_AGENT) else "poweroff"
    return render_script(templates, kind, machine.arch, **ctx)


def _phase_due(session: Session, machine: Machine, kind: str | None) -> bool:
    """Whether serving the script writes: its ``ipxe_script`` phase is not recorded yet,
    or (``kind`` given) there is no running record of that kind, which is then made."""
    assert machine.id is not None
    record = deploy.running_deployment(session, machine.id)
    if record is None:
        return kind is not None
    if kind is not None and record.kind != kind:
        return True
    return "ipxe_script" not in record.phases


def _script_without_writes(
    session: Session,
    templates: Templates,
    settings: Settings,
    machine: Machine,
    mac: str,
    base_url: str,
) -> str | None:
    """The script when serving it writes nothing (in a read session); None otherwise."""
    ctx: dict[str, Any] = {"base_url": base_url, "machine": machine_context(machine, mac)}
    if machine.state == State.ENROLLED:
        return None  # an inspection starts, or the refusal is recorded
    if machine.state == State.INSPECTING:
        inspect = _inspect_image(session, settings)
        if inspect is None:
            return _no_inspect_image(templates, settings, ctx)
        if _phase_due(session, machine, deploy.INSPECT):
            return None
        return _booting(templates, "inspect", inspect, base_url, ctx)
    if machine.state == State.DEPLOYING:
        image = boot_image(session, machine, settings)
        if image is None or _phase_due(session, machine, None):
            return None  # the missing image is recorded as an event
        if image is DISK:
            return render_script(templates, "local", machine.arch, **ctx)
        return _booting(templates, "deploy", image, base_url, ctx)
    return _resting(templates, machine, ctx)


def _refused(templates: Templates, refused: enrollment.Refusal, mac: str, base_url: str) -> str:
    machine = {"name": f"pxe-{mac.replace(':', '')}", "uuid": "", "arch": "x86_64", "mac": mac}
    ctx: dict[str, Any] = {"base_url": base_url, "machine": {**machine, "state": "unknown"}}
    kind = "retry" if refused.retry else "exit"
    return render_script(
        templates, kind, "x86_64", reason=refused.message, retry_s=enrollment.RETRY_S, **ctx
    )


def boot_script(
    db: Database,
    templates: Templates,
    mac_text: str,
    base_url: str,
    *,
    network: str,
    settings: Settings,
    secrets: SecretBox,
    metrics: Metrics,
) -> str:
    """``GET /boot/{mac}.ipxe``: read first; a write transaction only when one is due.

    ``network`` is the provisioning network the request came from
    (:func:`provisiond.deploy.enrollment.network_for`), whose limits an unknown MAC's
    enrollment counts against.
    """
    mac = parse_mac(mac_text)
    limits = enrollment.limits(settings)
    with db.read_session() as session:
        machine = _by_mac(session, mac)
        if machine is not None:
            script = _script_without_writes(session, templates, settings, machine, mac, base_url)
            if script is not None:
                return script
        else:
            refused = enrollment.refusal(session, network, limits)
            if refused is not None and not enrollment.event_due(session, network):
                metrics.enroll_refused.labels(network, refused.reason).inc()
                return _refused(templates, refused, mac, base_url)
    with db.transaction() as session:
        if _by_mac(session, mac) is None:  # checked again: the count may have moved
            refused = enrollment.refusal(session, network, limits)
            if refused is not None:
                metrics.enroll_refused.labels(network, refused.reason).inc()
                if enrollment.event_due(session, network):
                    enrollment.record(session, refused, network, mac)
                return _refused(templates, refused, mac, base_url)
        return machine_script(
            session,
            templates,
            mac,
            base_url,
            settings=settings,
            secrets=secrets,
            metrics=metrics,
            network=network,
        )


def machine_script(
    session: Session,
    templates: Templates,
    mac_text: str,
    base_url: str,
    *,
    settings: Settings,
    secrets: SecretBox,
    metrics: Metrics,
    network: str = enrollment.UNMATCHED,
) -> str:
    """The per-MAC iPXE script in a write transaction; enrolls and starts inspection as
    the table above says (the enrollment limits are :func:`boot_script`'s)."""
    mac = parse_mac(mac_text)
    machine = _by_mac(session, mac) or _enroll(session, mac, settings, network)
    ctx: dict[str, Any] = {"base_url": base_url, "machine": machine_context(machine, mac)}
    arch = machine.arch

    if machine.state == State.ENROLLED:
        inspect = _inspect_image(session, settings)
        if not settings.auto_enroll:
            reason = "auto_enroll is off; an operator must inspect or manage this machine"
            _boot_event(session, machine, "boot_refused", reason, mac=mac)
            return render_script(templates, "exit", arch, reason=reason, **ctx)
        if inspect is None:
            reason = f"no inspection image named {settings.inspect_image!r} in the catalog"
            _boot_event(session, machine, "boot_refused", reason, mac=mac)
            return render_script(templates, "exit", arch, reason=reason, **ctx)
        deploy.start_inspection(
            session,
            machine,
            actor=ACTOR,
            settings=settings,
            secrets=secrets,
            power_cycle=False,
            reason="PXE boot",
        )
        ctx["machine"] = machine_context(machine, mac)

    state = machine.state
    if state == State.INSPECTING:
        inspect = _inspect_image(session, settings)
        if inspect is None:
            return _no_inspect_image(templates, settings, ctx)
        deploy.ensure_inspection_record(session, machine, secrets=secrets)
        boot_telemetry.record_phase(session, machine, "ipxe_script", metrics=metrics, mac=mac)
        return _booting(templates, "inspect", inspect, base_url, ctx)
    if state == State.DEPLOYING:
        image = boot_image(session, machine, settings)
        if image is None:
            wanted = deploy_image(session, machine, settings.inspect_image)
            reason = (
                f"no image for {arch} in the catalog"
                if wanted is None
                else f"{wanted.name} is a disk image, written by the deploy ramdisk, but there "
                f"is no inspection image named {settings.inspect_image!r} to boot it"
            )
            _boot_event(session, machine, "boot_refused", reason, mac=mac)
            return render_script(templates, "exit", arch, reason=reason, **ctx)
        boot_telemetry.record_phase(session, machine, "ipxe_script", metrics=metrics, mac=mac)
        if image is DISK:
            return render_script(templates, "local", arch, **ctx)
        return _booting(templates, "deploy", image, base_url, ctx)
    return _resting(templates, machine, ctx)


def entry_script(templates: Templates, base_url: str) -> str:
    return templates.render_first(["ipxe/entry.j2"], base_url=base_url)
