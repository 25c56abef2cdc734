"""Deploy, inspect and release: the daemon side of "instance ready".

Callers (the allocation service, the machines API/CLI) only *start* work, inside
their own transaction, and then wake the deploy engine after commit:

    with services.db.transaction() as s:
        machine = ...  # already ALLOCATED (by lifecycle.claim/advance)
        deploy.start_deploy(s, machine, allocation=alloc, image_id=alloc.image_id,
                            actor="token:ci-1", settings=services.settings,
                            secrets=services.secrets)
    services.wake_deployer()

``start_deploy`` moves the machine ``allocated -> deploying`` and writes a
:class:`~provisiond.models.Deployment` row (per-deploy SSH key pair, phases). The
engine (:mod:`provisiond.deploy.engine`, a scheduler loop) then does the
blocking work from the DB state alone, so a restarted daemon resumes: power-cycle
into PXE, wait for the OS callback, SSH agent install, wait for the heartbeat.

``start_release`` moves ``active | deploy_failed | allocated | release_failed ->
releasing``; the engine wipes the disks over SSH (when an OS with our key is up),
powers off, and makes the machine ``available``.

``abort_deploy`` fails a running deploy (``deploying | installing_agent ->
deploy_failed``) with a reason, e.g. when its allocation's lease ends.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from datetime import datetime
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlmodel import Session, col, select

from provisiond import events
from provisiond.config import Settings
from provisiond.errors import Conflict
from provisiond.events import EventKind
from provisiond.lifecycle import Ev, State, advance
from provisiond.models import Allocation, Deployment, Image, Machine, utcnow
from provisiond.secrets import SecretBox

#: Deployment.kind values.
DEPLOY = "deploy"
INSPECT = "inspect"


def new_ssh_keypair(comment: str) -> tuple[str, str]:
    """A fresh Ed25519 key pair: (OpenSSH private key PEM, ``ssh-ed25519 AAAA... comment``)."""
    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    ).decode()
    public = (
        key.public_key()
        .public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        .decode()
    )
    return private, f"{public} {comment}"


def running_deployment(session: Session, machine_id: int) -> Deployment | None:
    """The machine's newest deployment that has not finished, if any."""
    return running_deployments(session, [machine_id]).get(machine_id)


def running_deployments(session: Session, machine_ids: list[int]) -> dict[int, Deployment]:
    """:func:`running_deployment` for many machines in one query: machine id -> record."""
    if not machine_ids:
        return {}
    rows = session.exec(
        select(Deployment)
        .where(col(Deployment.machine_id).in_(machine_ids), Deployment.outcome == "")
        .order_by(col(Deployment.id))
    ).all()
    return {row.machine_id: row for row in rows}  # ascending ids: the newest one wins


def disk_image_ids(session: Session, image_ids: list[int | None]) -> set[int]:
    """Which of ``image_ids`` are whole-disk images (written to the disk by a deploy)."""
    wanted = {i for i in image_ids if i is not None}
    if not wanted:
        return set()
    rows = session.exec(
        select(Image.id).where(col(Image.id).in_(wanted), Image.kind == "disk")
    ).all()
    return {i for i in rows if i is not None}


def latest_deployment(session: Session, machine_id: int) -> Deployment | None:
    return session.exec(
        select(Deployment)
        .where(Deployment.machine_id == machine_id)
        .order_by(col(Deployment.id).desc())
        .limit(1)
    ).first()


def finish(
    deployment: Deployment, outcome: str, reason: str = "", at: datetime | None = None
) -> None:
    deployment.outcome = outcome
    deployment.failure_reason = reason[:1024]
    deployment.finished_at = at or utcnow()


def mark_phase(deployment: Deployment, phase: str, at: datetime | None = None) -> bool:
    """Record the first time ``phase`` was reached; False if it was already recorded."""
    if phase in deployment.phases:
        return False
    deployment.phases = {**deployment.phases, phase: (at or utcnow()).isoformat()}
    return True


#: ``phases`` key: the last time the machine asked again for a boot phase it had
#: already reached, ``{"phase": "dhcp_discover", "at": "..."}``. Not a phase (its
#: value is no time stamp), so phase tables and deadline reasons skip it.
ASKED_AGAIN = "asked_again"


def mark_asked_again(deployment: Deployment, phase: str, at: datetime | None = None) -> None:
    stamp = {"phase": phase, "at": (at or utcnow()).isoformat()}
    deployment.phases = {**deployment.phases, ASKED_AGAIN: stamp}


def _new_record(
    session: Session,
    machine: Machine,
    *,
    kind: str,
    allocation: Allocation | None,
    image_id: int | None,
    secrets: SecretBox,
    attempt: int | None = None,
) -> Deployment:
    assert machine.id is not None
    for old in session.exec(
        select(Deployment).where(Deployment.machine_id == machine.id, Deployment.outcome == "")
    ).all():
        finish(old, "superseded", f"superseded by a new {kind}")
        session.add(old)
    if attempt is None and allocation is not None and allocation.id is not None:
        attempt = 1 + len(
            session.exec(
                select(Deployment.id).where(
                    Deployment.allocation_id == allocation.id, Deployment.machine_id == machine.id
                )
            ).all()
        )
    record = Deployment(
        machine_id=machine.id,
        allocation_id=allocation.id if allocation else None,
        kind=kind,
        image_id=image_id,
        attempt=attempt or 1,
    )
    private, public = new_ssh_keypair(f"provisiond-{kind}-{record.uuid[:8]}")
    record.ssh_public_key = public
    record.ssh_private_key_encrypted = secrets.encrypt(private)
    mark_phase(record, f"{kind}_requested")
    session.add(record)
    session.flush()
    return record


def start_deploy(
    session: Session,
    machine: Machine,
    *,
    allocation: Allocation | None,
    image_id: int | None,
    actor: str,
    settings: Settings,
    secrets: SecretBox,
) -> Deployment:
    """``allocated -> deploying`` plus a new Deployment row; the engine does the rest.

    The allocation's SSH keys and user-data stay on the allocation, where the NoCloud
    seed reads them; the per-deploy key pair is made here and only its public half
    leaves the daemon.
    """
    record = _new_record(
        session, machine, kind=DEPLOY, allocation=allocation, image_id=image_id, secrets=secrets
    )
    advance(
        session,
        machine,
        Ev.DEPLOY,
        actor=actor,
        timeouts=settings.timeouts,
        reason="deploy requested",
        details={"deployment": record.uuid, "image_id": image_id, "attempt": record.attempt},
    )
    return record


def start_inspection(
    session: Session,
    machine: Machine,
    *,
    actor: str,
    settings: Settings,
    secrets: SecretBox,
    power_cycle: bool = True,
    reason: str = "inspection requested",
) -> Deployment:
    """``enrolled | inspect_failed | maintenance -> inspecting`` plus its record.

    ``power_cycle=False`` when the machine is already network-booting (PXE enroll):
    the engine then skips the BMC step.
    """
    record = _new_record(
        session, machine, kind=INSPECT, allocation=None, image_id=None, secrets=secrets
    )
    if not power_cycle:
        mark_phase(record, "power_cycle")
        record.phases = {**record.phases, "power_cycle_skipped": "already booting"}
    advance(
        session,
        machine,
        Ev.INSPECT,
        actor=actor,
        timeouts=settings.timeouts,
        reason=reason,
        details={"deployment": record.uuid},
    )
    return record


def ensure_inspection_record(
    session: Session, machine: Machine, *, secrets: SecretBox
) -> Deployment:
    """The running inspection record of an ``inspecting`` machine, made if missing."""
    assert machine.id is not None
    record = running_deployment(session, machine.id)
    if record is not None and record.kind == INSPECT:
        return record
    record = _new_record(
        session, machine, kind=INSPECT, allocation=None, image_id=None, secrets=secrets
    )
    mark_phase(record, "power_cycle")
    return record


def _close_running(
    session: Session, machine: Machine, outcome: str, reason: str
) -> Deployment | None:
    assert machine.id is not None
    running = running_deployment(session, machine.id)
    if running is not None:
        finish(running, outcome, reason)
        session.add(running)
    return running


def start_release(
    session: Session, machine: Machine, *, actor: str, reason: str, settings: Settings
) -> None:
    """``active | deploy_failed | allocated | release_failed -> releasing``."""
    _close_running(session, machine, "released", reason)
    advance(session, machine, Ev.RELEASE, actor=actor, timeouts=settings.timeouts, reason=reason)


def abort_deploy(
    session: Session, machine: Machine, *, actor: str, reason: str, settings: Settings
) -> None:
    """``deploying | installing_agent -> deploy_failed`` with ``reason``."""
    if machine.state not in (State.DEPLOYING, State.INSTALLING_AGENT, State.ALLOCATED):
        raise Conflict(
            f"machine {machine.name} is {machine.state}, not deploying",
            hint="only a running deploy can be aborted",
        )
    fail(session, machine, reason=reason, actor=actor, settings=settings)


def fail(
    session: Session,
    machine: Machine,
    *,
    reason: str,
    actor: str,
    settings: Settings,
    details: dict[str, Any] | None = None,
) -> None:
    """Fail the machine's running deploy or inspection and close its record."""
    running = _close_running(session, machine, "failed", reason)
    advance(
        session,
        machine,
        Ev.FAIL,
        actor=actor,
        timeouts=settings.timeouts,
        reason=reason,
        details={**(details or {}), **({"deployment": running.uuid} if running else {})},
    )


def callback_token(secrets: SecretBox, deployment_uuid: str) -> str:
    """The token a booted OS presents in its phone-home call (served only in its seed)."""
    return hmac.new(secrets.mac_key, f"callback:{deployment_uuid}".encode(), "sha256").hexdigest()


def host_key_fingerprint(host_key: str) -> str:
    """``ssh-ed25519 AAAA...`` -> ``SHA256:...`` (as ``ssh-keygen -lf`` prints it)."""
    parts = host_key.split()
    if len(parts) < 2:
        return ""
    try:
        blob = base64.b64decode(parts[1], validate=True)
    except ValueError:
        return ""
    digest = base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")
    return f"SHA256:{digest}"


#: What a machine waits for in each transitional state, for deadline reasons.
WAITING_FOR = {
    State.DEPLOYING: "no OS callback",
    State.INSPECTING: "no inspection report",
    State.INSTALLING_AGENT: "no agent heartbeat",
    State.RELEASING: "release not finished",
    State.ALLOCATED: "deploy not started",
}


#: What a disk-image deploy was doing after a phase, for deadline reasons
#: (:mod:`provisiond.deploy.disk_deploy`).
AFTER_PHASE = {
    "ramdisk_callback": "writing the image",
    "disk_selected": "writing the image",
    "image_download": "writing the image",
    "image_written": "configuring the disk",
    "disk_configured": "booting from disk",
    "disk_boot": "booting from disk",
    "os_seed": "booting from disk",
}


def deadline_reason(
    session: Session, machine: Machine, limit_s: float
) -> tuple[str, dict[str, Any]]:
    """Why a machine's deadline passed, naming the last boot phase it reached."""
    waiting = WAITING_FOR.get(State(machine.state), f"still {machine.state}")
    record = running_deployment(session, machine.id) if machine.id is not None else None
    details: dict[str, Any] = {}
    last = ""
    if record is not None:
        reached = sorted(
            (v, k) for k, v in record.phases.items() if isinstance(v, str) and "T" in v
        )
        last = reached[-1][1] if reached else ""
        details = {"deployment": record.uuid, "last_phase": last}
    doing = f", {AFTER_PHASE[last]}" if last in AFTER_PHASE else ""
    reason = f"{machine.state}: {waiting} within {limit_s:.0f}s" + (
        f" (last phase: {last}{doing})" if last else ""
    )
    return reason, details


def retry_from_power_cycle(
    session: Session, machine: Machine, record: Deployment, *, secrets: SecretBox, reason: str
) -> Deployment:
    """Start the running deploy or inspection over from the power-cycle, as a new attempt.

    For a boot the daemon lost track of (it was down while the OS tried to call back):
    a fresh record (new per-deploy key and callback token) supersedes the old one and
    the engine power-cycles again. The lifecycle state does not change.
    """
    allocation = session.get(Allocation, record.allocation_id) if record.allocation_id else None
    new = _new_record(
        session,
        machine,
        kind=record.kind,
        allocation=allocation,
        image_id=record.image_id,
        secrets=secrets,
        attempt=record.attempt + 1,
    )
    events.record(
        session,
        EventKind.DEPLOY,
        "retry",
        machine=machine,
        actor="engine",
        message=f"{record.kind} attempt {new.attempt}: {reason}",
        details={"deployment": new.uuid, "previous": record.uuid},
    )
    return new
